import { afterEach, describe, expect, it } from "vitest";
import type { Build } from "../../src/builds/backend.js";
import { commitStatusOf } from "../../src/builds/statuses.js";
import { createNomadClient, type NomadClient } from "../../src/nomad/client.js";
import { createNomadTracker, type NomadTracker } from "../../src/nomad/tracker.js";
import type { NomadFake, NomadFakeOptions } from "../fakes/nomad.js";
import { captureLogs } from "../helpers/log-capture.js";
import { eventually } from "../helpers/wait.js";
import { createLifecycleDriver, type LifecycleDriver } from "./driver.js";
import { builderJob, realNomad, startTarget } from "./target.js";

// Build states (and so commit statuses) from the event stream, re-synced after gaps and restarts. The
// lifecycles go through the driver, so the cases a real agent can produce also run against one
// (`NOMAD_ADDR` set); the rest need the fake's controls and say so where they skip.

const META = { REPO_URL: "https://git.example.test/acme/widgets", COMMIT: "4c1d7e0", BRANCH: "main", FLAVOR: "default" };

interface Rig {
  /** Only against the fake. */
  fake: NomadFake | undefined;
  drive: LifecycleDriver;
  builder: string;
  nomad: NomadClient;
  seen: Build[];
  /** States reported for `id`, in order. */
  states(id: string): string[];
  tracker(extra?: Partial<Parameters<typeof createNomadTracker>[0]>): NomadTracker;
  dispatch(builder?: string): Promise<string>;
  /** Resolves once every change made before the call has reached the tracker: a marker build's success. */
  settled(): Promise<void>;
  close(): Promise<void>;
}

const rigs: Rig[] = [];
afterEach(async () => {
  while (rigs.length) await rigs.pop()?.close();
});

async function rig(opts: NomadFakeOptions = {}): Promise<Rig> {
  const t = await startTarget({ eventHeartbeatMs: 100, ...opts });
  const fake = t.fake;
  const drive = createLifecycleDriver(t);
  const builder = t.jobId("builder");
  await drive.registerBuilder(builder);
  const nomad = createNomadClient({
    addr: t.addr,
    dispatcher: t.dispatcher,
    retryBudgetMs: 500,
    ...(t.token ? { token: t.token } : {}),
  });
  const seen: Build[] = [];
  const trackers: NomadTracker[] = [];
  const r: Rig = {
    fake,
    drive,
    builder,
    nomad,
    seen,
    states: (id) => seen.filter((b) => b.id === id).map((b) => b.state),
    tracker(extra = {}) {
      const t = createNomadTracker({
        nomad,
        builders: () => new Set([builder]),
        log: captureLogs().log,
        onBuild: (b) => seen.push(b),
        retryMinMs: 20,
        retryMaxMs: 100,
        ...extra,
      });
      trackers.push(t);
      return t;
    },
    dispatch: (parent = builder) => drive.dispatch(parent, META),
    async settled() {
      // Events arrive in the order Nomad commits them: once a build dispatched now is reported done (several
      // events and reads later), the tracker has gone past every change made before it.
      const marker = await r.dispatch();
      await drive.run(marker, { exitCode: 0 });
      await eventually(() => r.states(marker).includes("success"), 30_000, "the marker build's success");
    },
    async close() {
      await Promise.all(trackers.map((x) => x.stop()));
      await t.close();
    },
  };
  rigs.push(r);
  return r;
}

describe("statuses from the event stream", () => {
  it("reports running on the node, then success, each once", async () => {
    const r = await rig();
    await r.tracker().start();
    const id = await r.dispatch();
    await r.drive.place(id, { node: "client-3" });
    await r.drive.start(id);
    await eventually(() => r.states(id).includes("running"), 30_000);
    await r.drive.finish(id, 0);
    await eventually(() => r.states(id).includes("success"), 30_000);
    await r.settled();
    expect(r.states(id).filter((s) => s !== "queued")).toEqual(["running", "success"]);
    const running = r.seen.find((b) => b.id === id && b.state === "running");
    const node = r.fake ? "client-3" : running?.node;
    expect(running && commitStatusOf(running)).toEqual({ state: "pending", description: `running on ${node}` });
  });

  type Drive = (r: Rig, id: string) => Promise<unknown>;
  const cases: { name: string; drive: Drive; state: string; description: string; fakeOnly?: boolean }[] = [
    {
      name: "failure with the exit code",
      drive: (r, id) => r.drive.run(id, { exitCode: 2 }),
      state: "failure",
      description: "build failed with exit code 2",
    },
    {
      name: "cancelled",
      drive: async (r, id) => (await r.drive.place(id), await r.nomad.stopJob(id)),
      state: "cancelled",
      description: "build cancelled",
    },
    // A real agent places a builder it can run; failing one on demand would need a second, unplaceable builder.
    {
      name: "a blocked evaluation as queued with Nomad's reason",
      drive: async (r, id) => r.fake?.failPlacement(id, { reason: "missing drivers" }),
      state: "queued",
      description: "waiting for a client that can run it: missing drivers",
      fakeOnly: true,
    },
    {
      name: "a placement Nomad gave up on",
      drive: async (r, id) => r.fake?.failPlacement(id, { reason: "missing drivers", giveUp: true }),
      state: "error",
      description: "could not be placed: missing drivers",
      fakeOnly: true,
    },
    // A real agent cannot lose its node on demand.
    {
      name: "a lost allocation",
      drive: async (r, id) => (r.fake?.placeAlloc(id), r.fake?.startTask(id), r.fake?.loseAlloc(id)),
      state: "error",
      description: "lost: alloc is lost since its node is down",
      fakeOnly: true,
    },
  ];

  it.each(cases.filter((c) => !(realNomad && c.fakeOnly)))("reports $name", async ({ drive, state, description }) => {
    const r = await rig();
    await r.tracker().start();
    const id = await r.dispatch();
    await drive(r, id);
    await eventually(() => r.seen.some((b) => b.id === id && b.state === state && commitStatusOf(b) !== undefined), 30_000);
    const last = r.seen.filter((b) => b.id === id).at(-1) as Build;
    expect(commitStatusOf(last)).toMatchObject({ description });
  });

  it("ignores jobs that are not children of a configured builder", async () => {
    const r = await rig();
    const someoneElse = `${r.builder}-someone-else`;
    await r.drive.registerBuilder(someoneElse);
    await r.tracker().start();
    const foreign = await r.dispatch(someoneElse);
    await r.drive.run(foreign, { exitCode: 0 });
    const mine = await r.dispatch();
    await r.drive.run(mine, { exitCode: 0 });
    await eventually(() => r.states(mine).includes("success"), 30_000);
    expect(r.seen.some((b) => b.id === foreign)).toBe(false);
    if (r.fake) {
      const fake = r.fake;
      expect(fake.requests.some((q) => decodeURIComponent(q.path).startsWith(`/v1/job/${foreign}`))).toBe(false);
    }
  });

  // Cuts the event stream: only the fake can.
  it.skipIf(realNomad)("keeps reporting after the stream is cut, and counts the reconnect", async () => {
    const r = await rig();
    const fake = r.fake!;
    let reconnects = 0;
    await r.tracker({ metrics: { reconnects: { inc: () => void reconnects++ } } }).start();
    const id = await r.dispatch();
    fake.placeAlloc(id);
    fake.startTask(id);
    await eventually(() => r.states(id).includes("running"));
    fake.cutEventStreams();
    fake.finishTask(id, 0);
    await eventually(() => r.states(id).includes("success"));
    expect(reconnects).toBeGreaterThanOrEqual(1);
  });

  // Takes Nomad down and shrinks its event buffer: only the fake can.
  it.skipIf(realNomad)("re-syncs with GET queries when the stream skipped more than the server's buffer", async () => {
    const r = await rig({ eventBufferSize: 2 });
    const fake = r.fake!;
    const tracker = r.tracker();
    await tracker.start();
    const id = await r.dispatch();
    fake.placeAlloc(id);
    fake.startTask(id);
    await eventually(() => r.states(id).includes("running"));
    fake.setDown(true);
    fake.finishTask(id, 4);
    for (let i = 0; i < 5; i++) fake.registerJob(builderJob(`noise-${i}`));
    // No wait here: the batches are gone from the buffer whenever the tracker comes back.
    fake.setDown(false);
    await eventually(() => r.states(id).includes("failure"));
    expect(r.seen.filter((b) => b.id === id).at(-1)).toMatchObject({ state: "failure", exitCode: 4 });
  });

  it("reports the lag between an allocation change and its event", async () => {
    const r = await rig();
    const lags: number[] = [];
    await r.tracker({ metrics: { lagSeconds: { set: (v) => void lags.push(v) } } }).start();
    const id = await r.dispatch();
    await r.drive.place(id);
    await eventually(() => lags.length > 0, 30_000);
    expect(lags.every((l) => l >= 0 && l < 5)).toBe(true);
  });

  // Counts the fake's open event streams.
  it.skipIf(realNomad)("stops following on stop()", async () => {
    const r = await rig();
    const fake = r.fake!;
    const tracker = r.tracker();
    await tracker.start();
    await eventually(() => fake.openEventStreams() === 1);
    await tracker.stop();
    await eventually(() => fake.openEventStreams() === 0);
  });
});

describe("reconciliation at start", () => {
  it("reports the final state of builds that ended while petrel was down", async () => {
    const r = await rig();
    const first = r.tracker();
    await first.start();
    const ended = await r.dispatch();
    const failed = await r.dispatch();
    const cancelled = await r.dispatch();
    for (const id of [ended, failed, cancelled]) await r.drive.place(id);
    for (const id of [ended, failed, cancelled]) await r.drive.start(id);
    await eventually(() => [ended, failed, cancelled].every((id) => r.states(id).includes("running")), 30_000);
    await first.stop();
    r.seen.length = 0;

    // petrel is down while the builds end.
    await r.drive.finish(ended, 0);
    await r.drive.finish(failed, 1);
    await r.nomad.stopJob(cancelled);

    await r.tracker().start();
    expect(r.states(ended)).toEqual(["success"]);
    expect(r.states(failed)).toEqual(["failure"]);
    expect(r.states(cancelled)).toEqual(["cancelled"]);
  });

  it("checks only the newest builds per builder and within the window", async () => {
    const r = await rig();
    const ids: string[] = [];
    for (let i = 0; i < 4; i++) {
      ids.push(await r.dispatch());
      // Newest by submit time, and the fake's clock has millisecond steps: wait for it to move.
      const submitted = Date.now();
      while (Date.now() === submitted) await new Promise((res) => setImmediate(res));
    }
    for (const id of ids) await r.drive.run(id, { exitCode: 0 });
    await r.tracker({ reconcileLimit: 2 }).start();
    expect(new Set(r.seen.map((b) => b.id))).toEqual(new Set(ids.slice(2)));
    r.seen.length = 0;
    await r.tracker({ reconcileWindowMs: 1, now: () => Date.now() + 60_000 }).start();
    expect(r.seen).toEqual([]);
  });

  // Reads the request the fake recorded.
  it.skipIf(realNomad)("follows events from where the reconciliation's listing left off", async () => {
    const r = await rig();
    const fake = r.fake!;
    await r.dispatch();
    const listedAt = fake.index();
    await r.tracker().start();
    await eventually(() => fake.requests.some((q) => q.path === "/v1/event/stream"));
    const stream = fake.requests.find((q) => q.path === "/v1/event/stream");
    expect(Number(stream?.query.index)).toBe(listedAt + 1);
    expect(stream?.query.topic).toMatch(/^(Job|Allocation|Evaluation):\*$/);
  });

  // Takes Nomad down: only the fake can.
  it.skipIf(realNomad)("keeps retrying when Nomad is down at start, and resolves start() anyway", async () => {
    const r = await rig();
    const fake = r.fake!;
    const id = await r.dispatch();
    fake.placeAlloc(id);
    fake.finishTask(id, 0);
    fake.setDown(true);
    const tracker = r.tracker();
    await tracker.start();
    expect(r.seen).toEqual([]);
    fake.setDown(false);
    await eventually(() => r.states(id).includes("success"));
  });
});
