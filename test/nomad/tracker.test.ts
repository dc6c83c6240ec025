import { randomUUID } from "node:crypto";
import { Agent } from "undici";
import { afterEach, describe, expect, it } from "vitest";
import type { Build } from "../../src/builds/backend.js";
import { commitStatusOf } from "../../src/builds/statuses.js";
import { createNomadClient, type NomadClient } from "../../src/nomad/client.js";
import { createNomadTracker, type NomadTracker } from "../../src/nomad/tracker.js";
import { type NomadFake, type NomadFakeOptions, startNomadFake } from "../fakes/nomad.js";
import { captureLogs } from "../helpers/log-capture.js";
import { builderJob } from "./target.js";

// Build states (and so commit statuses) from the event stream, re-synced after gaps and restarts. The
// tracker depends on the fake's lifecycle controls, so these tests run against the fake only.

const META = { REPO_URL: "https://git.example.test/acme/widgets", COMMIT: "4c1d7e0", BRANCH: "main", FLAVOR: "default" };

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function eventually(check: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await sleep(10);
  }
}

interface Rig {
  fake: NomadFake;
  nomad: NomadClient;
  seen: Build[];
  /** States reported for `id`, in order. */
  states(id: string): string[];
  tracker(extra?: Partial<Parameters<typeof createNomadTracker>[0]>): NomadTracker;
  dispatch(): Promise<string>;
  close(): Promise<void>;
}

const rigs: Rig[] = [];
afterEach(async () => {
  while (rigs.length) await rigs.pop()?.close();
});

async function rig(opts: NomadFakeOptions = {}): Promise<Rig> {
  const fake = await startNomadFake({ eventHeartbeatMs: 100, ...opts });
  fake.registerJob(builderJob("builder"));
  const agent = new Agent();
  const nomad = createNomadClient({ addr: fake.url, dispatcher: agent, retryBudgetMs: 500 });
  const seen: Build[] = [];
  const trackers: NomadTracker[] = [];
  const r: Rig = {
    fake,
    nomad,
    seen,
    states: (id) => seen.filter((b) => b.id === id).map((b) => b.state),
    tracker(extra = {}) {
      const t = createNomadTracker({
        nomad,
        builders: () => new Set(["builder"]),
        log: captureLogs().log,
        onBuild: (b) => seen.push(b),
        retryMinMs: 20,
        retryMaxMs: 100,
        ...extra,
      });
      trackers.push(t);
      return t;
    },
    dispatch: async () => (await nomad.dispatch("builder", { meta: META, idempotencyToken: randomUUID() })).id,
    async close() {
      await Promise.all(trackers.map((t) => t.stop()));
      await fake.close();
      await agent.close();
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
    r.fake.placeAlloc(id, { node: "client-3" });
    r.fake.startTask(id);
    await eventually(() => r.states(id).includes("running"));
    r.fake.finishTask(id, 0);
    await eventually(() => r.states(id).includes("success"));
    await sleep(100);
    expect(r.states(id).filter((s) => s !== "queued")).toEqual(["running", "success"]);
    const running = r.seen.find((b) => b.id === id && b.state === "running");
    expect(running && commitStatusOf(running)).toEqual({ state: "pending", description: "running on client-3" });
  });

  type Drive = (f: NomadFake, id: string) => void;
  const cases: { name: string; drive: Drive; state: string; description: string }[] = [
    {
      name: "failure with the exit code",
      drive: (f, id) => (f.placeAlloc(id), f.finishTask(id, 2)),
      state: "failure",
      description: "build failed with exit code 2",
    },
    { name: "cancelled", drive: (f, id) => void f.placeAlloc(id), state: "cancelled", description: "build cancelled" },
    {
      name: "a placement failure",
      drive: (f, id) => f.failPlacement(id, { reason: "missing drivers" }),
      state: "error",
      description: "could not be placed: missing drivers",
    },
    {
      name: "a lost allocation",
      drive: (f, id) => (f.placeAlloc(id), f.startTask(id), f.loseAlloc(id)),
      state: "error",
      description: "lost: alloc is lost since its node is down",
    },
  ];

  it.each(cases)("reports $name", async ({ drive, state, description }) => {
    const r = await rig();
    await r.tracker().start();
    const id = await r.dispatch();
    drive(r.fake, id);
    if (state === "cancelled") await r.nomad.stopJob(id);
    await eventually(() => r.states(id).includes(state));
    const last = r.seen.filter((b) => b.id === id).at(-1) as Build;
    expect(commitStatusOf(last)).toMatchObject({ description });
  });

  it("ignores jobs that are not children of a configured builder", async () => {
    const r = await rig();
    r.fake.registerJob(builderJob("someone-else"));
    await r.tracker().start();
    const foreign = (await r.nomad.dispatch("someone-else", { meta: META, idempotencyToken: randomUUID() })).id;
    r.fake.placeAlloc(foreign);
    r.fake.finishTask(foreign, 0);
    const mine = await r.dispatch();
    r.fake.placeAlloc(mine);
    r.fake.finishTask(mine, 0);
    await eventually(() => r.states(mine).includes("success"));
    expect(r.seen.some((b) => b.id === foreign)).toBe(false);
    expect(r.fake.requests.some((q) => decodeURIComponent(q.path).startsWith(`/v1/job/${foreign}`))).toBe(false);
  });

  it("keeps reporting after the stream is cut, and counts the reconnect", async () => {
    const r = await rig();
    let reconnects = 0;
    await r.tracker({ metrics: { reconnects: { inc: () => void reconnects++ } } }).start();
    const id = await r.dispatch();
    r.fake.placeAlloc(id);
    r.fake.startTask(id);
    await eventually(() => r.states(id).includes("running"));
    r.fake.cutEventStreams();
    r.fake.finishTask(id, 0);
    await eventually(() => r.states(id).includes("success"));
    expect(reconnects).toBeGreaterThanOrEqual(1);
  });

  it("re-syncs with GET queries when the stream skipped more than the server's buffer", async () => {
    const r = await rig({ eventBufferSize: 2 });
    const tracker = r.tracker();
    await tracker.start();
    const id = await r.dispatch();
    r.fake.placeAlloc(id);
    r.fake.startTask(id);
    await eventually(() => r.states(id).includes("running"));
    r.fake.setDown(true);
    r.fake.finishTask(id, 4);
    for (let i = 0; i < 5; i++) r.fake.registerJob(builderJob(`noise-${i}`));
    await sleep(50);
    r.fake.setDown(false);
    await eventually(() => r.states(id).includes("failure"));
    expect(r.seen.filter((b) => b.id === id).at(-1)).toMatchObject({ state: "failure", exitCode: 4 });
  });

  it("reports the lag between an allocation change and its event", async () => {
    const r = await rig();
    const lags: number[] = [];
    await r.tracker({ metrics: { lagSeconds: { set: (v) => void lags.push(v) } } }).start();
    const id = await r.dispatch();
    r.fake.placeAlloc(id);
    await eventually(() => lags.length > 0);
    expect(lags.every((l) => l >= 0 && l < 5)).toBe(true);
  });

  it("stops following on stop()", async () => {
    const r = await rig();
    const tracker = r.tracker();
    await tracker.start();
    await eventually(() => r.fake.openEventStreams() === 1);
    await tracker.stop();
    await eventually(() => r.fake.openEventStreams() === 0);
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
    r.fake.placeAlloc(ended);
    r.fake.placeAlloc(failed);
    r.fake.placeAlloc(cancelled);
    r.fake.startTask(ended);
    r.fake.startTask(failed);
    r.fake.startTask(cancelled);
    await eventually(() => [ended, failed, cancelled].every((id) => r.states(id).includes("running")));
    await first.stop();
    r.seen.length = 0;

    // petrel is down while the builds end.
    r.fake.finishTask(ended, 0);
    r.fake.finishTask(failed, 1);
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
      await sleep(5);
    }
    for (const id of ids) {
      r.fake.placeAlloc(id);
      r.fake.finishTask(id, 0);
    }
    await r.tracker({ reconcileLimit: 2 }).start();
    expect(new Set(r.seen.map((b) => b.id))).toEqual(new Set(ids.slice(2)));
    r.seen.length = 0;
    await r.tracker({ reconcileWindowMs: 1, now: () => Date.now() + 60_000 }).start();
    expect(r.seen).toEqual([]);
  });

  it("follows events from where the reconciliation's listing left off", async () => {
    const r = await rig();
    await r.dispatch();
    const listedAt = r.fake.index();
    await r.tracker().start();
    await eventually(() => r.fake.requests.some((q) => q.path === "/v1/event/stream"));
    const stream = r.fake.requests.find((q) => q.path === "/v1/event/stream");
    expect(Number(stream?.query.index)).toBe(listedAt + 1);
    expect(stream?.query.topic).toMatch(/^(Job|Allocation|Evaluation):\*$/);
  });

  it("keeps retrying when Nomad is down at start, and resolves start() anyway", async () => {
    const r = await rig();
    const id = await r.dispatch();
    r.fake.placeAlloc(id);
    r.fake.finishTask(id, 0);
    r.fake.setDown(true);
    const tracker = r.tracker();
    await tracker.start();
    expect(r.seen).toEqual([]);
    r.fake.setDown(false);
    await eventually(() => r.states(id).includes("success"));
  });
});
