import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Build, BuildCursor } from "../../src/builds/backend.js";
import { createNomadBuildReader, type NomadBuildReader } from "../../src/nomad/builds.js";
import { createNomadClient, type NomadClient } from "../../src/nomad/client.js";
import { buildOf, msFromNs } from "../../src/nomad/outcome.js";
import { AllocationStub, Evaluation, Job } from "../../src/nomad/schema.js";
import { captureLogs } from "../helpers/log-capture.js";
import { rejection } from "../helpers/rejection.js";
import { createLifecycleDriver, type LifecycleDriver } from "./driver.js";
import { builderJob, type NomadTarget, realNomad, startTarget } from "./target.js";

// The Nomad build reader: state derivation (https://developer.hashicorp.com/nomad/api-docs/allocations#read-allocation), listing, cancel, and the refusal of
// anything that is not a dispatched child of a configured builder.

const META = {
  REPO_URL: "https://git.example.test/acme/widgets.git",
  COMMIT: "4c1d7e0",
  BRANCH: "main",
  FLAVOR: "default",
  REPO: "acme/widgets",
  EVENT: "push",
  TRUSTED: "true",
};

let t: NomadTarget;
let drive: LifecycleDriver;
let nomad: NomadClient;
let reader: NomadBuildReader;
let builder: string;

beforeAll(async () => {
  t = await startTarget();
  drive = createLifecycleDriver(t);
  builder = t.jobId("builder");
  await drive.registerBuilder(builder);
  nomad = createNomadClient({ addr: t.addr, dispatcher: t.dispatcher, ...(t.token ? { token: t.token } : {}) });
  reader = createNomadBuildReader({ nomad, builders: () => new Set([builder]), log: captureLogs().log });
});
afterAll(() => t.close());

async function dispatch(meta: Record<string, string> = META, parent = builder): Promise<string> {
  return drive.dispatch(parent, meta);
}

async function build(id: string): Promise<Build> {
  const b = await reader.getBuild(id);
  if (b === undefined) throw new Error(`no build ${id}`);
  return b;
}

describe("a build from Nomad (fake or real Nomad)", () => {
  it("reads the build's meta and reaches success", async () => {
    const id = await dispatch();
    await drive.place(id, { node: "client-7" });
    await drive.start(id);
    await drive.finish(id, 0);
    const b = await build(id);
    expect(b).toMatchObject({
      id,
      builder,
      repo: "acme/widgets",
      repoUrl: META.REPO_URL,
      commit: "4c1d7e0",
      ref: "main",
      flavor: "default",
      event: "push",
      trusted: true,
      state: "success",
      exitCode: 0,
    });
    // META carries no PRIVATE: the build's privacy is unknown, not "public".
    expect(b.private).toBeUndefined();
    expect(b.allocId).toMatch(/^[0-9a-f-]{36}$/);
    expect(Date.parse(b.createdAt)).toBeGreaterThan(Date.now() - 600_000);
    expect(Date.parse(b.startedAt ?? "")).toBeGreaterThanOrEqual(Date.parse(b.createdAt) - 1000);
    expect(Date.parse(b.finishedAt ?? "")).toBeGreaterThanOrEqual(Date.parse(b.startedAt ?? ""));
    if (t.fake) expect(b.node).toBe("client-7");
    else expect(b.node).toBeTruthy();
  });

  it("cancels with a stop, not a purge: the job stays readable and the build reads cancelled", async () => {
    const id = await dispatch();
    await reader.cancel(id);
    expect(await build(id)).toMatchObject({ state: "cancelled" });
    expect((await nomad.readJob(id))?.job.Stop).toBe(true);
  });
});

describe("build states (driven lifecycles, fake or real Nomad)", () => {
  // A real agent places a dispatched job at once: "queued before placement" is the fake's to show.
  it.skipIf(realNomad)("is queued before placement and while the task has not started", async () => {
    const fake = t.fake!;
    const id = await dispatch();
    expect(await build(id)).toMatchObject({ state: "queued" });
    expect((await build(id)).allocId).toBeUndefined();
    fake.placeAlloc(id, { node: "client-1" });
    expect(await build(id)).toMatchObject({ state: "queued", node: "client-1" });
  });

  it("is running once the task has started, with a start time and no end", async () => {
    const id = await dispatch();
    await drive.place(id, { node: "client-1" });
    await drive.start(id);
    const running = await build(id);
    expect(running).toMatchObject({ state: "running" });
    if (!drive.real) expect(running.node).toBe("client-1");
    expect(running.startedAt).toBeDefined();
    expect(running.finishedAt).toBeUndefined();
    await drive.finish(id, 0);
  });

  it("reports a non-zero exit as failure with the exit code", async () => {
    const id = await dispatch();
    await drive.run(id, { exitCode: 3 });
    expect(await build(id)).toMatchObject({ state: "failure", exitCode: 3, reason: "exit code 3" });
  });

  it("reports a stopped running build as cancelled, not success, although its allocation is complete", async () => {
    const id = await dispatch();
    await drive.place(id);
    await drive.start(id);
    await reader.cancel(id);
    if (t.fake) expect(t.fake.allocations(id)[0]).toMatchObject({ ClientStatus: "complete", DesiredStatus: "stop" });
    expect(await build(id)).toMatchObject({ state: "cancelled" });
    expect(await nomad.readJob(id)).toBeDefined();
  });

  it("keeps a build that succeeded before it was stopped a success", async () => {
    const id = await dispatch();
    await drive.run(id, { exitCode: 0 });
    await reader.cancel(id);
    expect(await build(id)).toMatchObject({ state: "success", exitCode: 0 });
  });
});

// What a real agent cannot do on demand: fail a placement of a builder it can place, lose a node, fail a
// driver's set-up with a chosen message, or store a non-dispatched job under a child's ID.
describe.skipIf(realNomad)("build states only the fake can produce", () => {
  it("reports a blocked evaluation as queued with the scheduler's reason, and a placement Nomad gave up on as error", async () => {
    const fake = t.fake!;
    const blocked = await dispatch();
    fake.failPlacement(blocked, { reason: "missing compatible host volumes" });
    expect(await build(blocked)).toMatchObject({
      state: "queued",
      reason: "waiting for a client that can run it: missing compatible host volumes",
    });
    fake.placeAlloc(blocked);
    fake.startTask(blocked);
    expect(await build(blocked)).toMatchObject({ state: "running" });
    const failed = await dispatch();
    fake.failPlacement(failed, { reason: "missing compatible host volumes", giveUp: true });
    expect(await build(failed)).toMatchObject({ state: "error", reason: "could not be placed: missing compatible host volumes" });
  });

  it("reports a lost allocation as error", async () => {
    const fake = t.fake!;
    const id = await dispatch();
    fake.placeAlloc(id);
    fake.startTask(id);
    fake.loseAlloc(id);
    const b = await build(id);
    expect(b.state).toBe("error");
    expect(b.reason).toMatch(/^lost: /);
  });

  it("reports a task that could not start as error with the driver's message", async () => {
    const fake = t.fake!;
    const id = await dispatch();
    fake.placeAlloc(id);
    fake.failTaskSetup(id, "Failed to pull `petrel/builder:nope`: not found");
    expect(await build(id)).toMatchObject({ state: "error", reason: "Driver Failure: Failed to pull `petrel/builder:nope`: not found" });
  });

  it("does not take a job registered under a child-like ID for a build", async () => {
    const fake = t.fake!;
    const id = `${builder}/dispatch-1700000000-0badc0de`;
    fake.registerJob({ ...builderJob(id), ParameterizedJob: null, Meta: META });
    expect(await reader.getBuild(id)).toBeUndefined();
    expect((await reader.listBuilds({ limit: 500 })).builds.map((b) => b.id)).not.toContain(id);
  });
});

describe("listing builds (fake or real Nomad)", () => {
  let other: string;
  const ids: Record<string, string> = {};

  beforeAll(async () => {
    other = t.jobId("builder-nix");
    await drive.registerBuilder(other);
    const at = (n: number) => ({ ...META, COMMIT: `${n}`.padStart(7, "a"), BRANCH: n % 2 ? "main" : "dev" });
    for (const [name, n] of [
      ["ok", 1],
      ["failed", 2],
      ["running", 3],
      ["queued", 4],
    ] as const) {
      ids[name] = await dispatch(at(n));
      // SubmitTime orders the listing and the fake's clock has millisecond steps: the next dispatch waits for
      // the clock to move past this one (forward: a VM's wall clock can also step back), not for a guessed while.
      const submitted = Date.now();
      while (Date.now() <= submitted) await new Promise((r) => setImmediate(r));
    }
    ids.nix = await dispatch({ ...META, REPO: "acme/gadgets", REPO_URL: "https://git.example.test/acme/gadgets.git" }, other);
    await drive.run(ids.ok as string, { exitCode: 0 });
    await drive.run(ids.failed as string, { exitCode: 1 });
    await drive.place(ids.running as string);
    await drive.start(ids.running as string);
    // A real agent places and starts "queued" at once; the assertions below hold either way.
  });

  const reader2 = () => createNomadBuildReader({ nomad, builders: () => new Set([builder, other]), log: captureLogs().log });

  it("lists only children of the configured builders, newest first", async () => {
    const list = (await reader.listBuilds({ limit: 500 })).builds;
    expect(list.map((b) => b.builder).every((b) => b === builder)).toBe(true);
    const mine = list.map((b) => b.id).filter((id) => Object.values(ids).includes(id));
    expect(mine).toEqual([ids.queued, ids.running, ids.failed, ids.ok]);
    const both = (await reader2().listBuilds({ limit: 500 })).builds;
    expect(both.map((b) => b.id)).toContain(ids.nix);
    const times = both.map((b) => Date.parse(b.createdAt));
    expect([...times].sort((a, b) => b - a)).toEqual(times);
  });

  it("filters by state, ref and repo, and stops at the limit", async () => {
    const r = reader2();
    expect((await r.listBuilds({ limit: 500, state: "failure" })).builds.map((b) => b.id)).toContain(ids.failed);
    expect((await r.listBuilds({ limit: 500, state: "failure" })).builds.every((b) => b.state === "failure")).toBe(true);
    expect((await r.listBuilds({ limit: 500, state: "running" })).builds.map((b) => b.id)).toEqual(expect.arrayContaining([ids.running]));
    const dev = (await r.listBuilds({ limit: 500, ref: "dev" })).builds;
    expect(dev.map((b) => b.id)).toEqual(expect.arrayContaining([ids.failed, ids.queued]));
    expect(dev.every((b) => b.ref === "dev")).toBe(true);
    expect((await r.listBuilds({ limit: 500, repo: "ACME/gadgets" })).builds.map((b) => b.id)).toEqual([ids.nix]);
    expect((await r.listBuilds({ limit: 2 })).builds).toHaveLength(2);
  });

  it("shares a list already in flight with a concurrent listing, but not with a fresh one, which sees a newer build", async () => {
    // The first list call answers as Nomad had it, then is held: a build dispatched meanwhile is not in it.
    let release = () => {};
    const held = new Promise<void>((r) => {
      release = r;
    });
    let answered = () => {};
    const stale = new Promise<void>((r) => {
      answered = r;
    });
    let lists = 0;
    const holding: NomadClient = {
      ...nomad,
      async listJobs(query) {
        lists += 1;
        const stubs = await nomad.listJobs(query);
        if (lists === 1) {
          answered();
          await held;
        }
        return stubs;
      },
    };
    const r = createNomadBuildReader({ nomad: holding, builders: () => new Set([builder]), log: captureLogs().log });
    const first = r.listBuilds({ limit: 500 });
    await stale;
    const newer = await dispatch({ ...META, COMMIT: "f".repeat(7), BRANCH: "fresh" });
    const shared = r.listBuilds({ limit: 500, ref: "fresh" });
    const fresh = await r.listBuilds({ limit: 500, ref: "fresh", fresh: true });
    expect(fresh.builds.map((b) => b.id)).toEqual([newer]);
    release();
    expect((await first).builds.map((b) => b.id)).not.toContain(newer);
    expect((await shared).builds).toEqual([]);
    expect(lists).toBe(2);
    // Later listings share the fresh one's answer or ask anew: either way they see the build.
    expect((await r.listBuilds({ limit: 500, ref: "fresh" })).builds.map((b) => b.id)).toEqual([newer]);
  });

  it("keeps a list that fails after its only caller left from becoming an unhandled rejection", async () => {
    let fail = () => {};
    const failing: NomadClient = {
      ...nomad,
      listJobs: () =>
        new Promise((_, reject) => {
          fail = () => reject(new Error("Nomad unavailable (503)"));
        }),
    };
    const rejections: unknown[] = [];
    const onRejection = (err: unknown) => rejections.push(err);
    process.on("unhandledRejection", onRejection);
    try {
      const r = createNomadBuildReader({ nomad: failing, builders: () => new Set([builder]), log: captureLogs().log });
      const gone = new AbortController();
      gone.abort(new Error("client gone"));
      await expect(r.listBuilds({ limit: 5 }, gone.signal)).rejects.toThrow("client gone");
      fail();
      // Two turns of the loop: an unhandled rejection is reported after the microtasks of the one it happened in.
      await new Promise((resolve) => setImmediate(resolve));
      await new Promise((resolve) => setImmediate(resolve));
      expect(rejections).toEqual([]);
      // A caller that stays gets the failure.
      const waiting = r.listBuilds({ limit: 5 });
      fail();
      await expect(waiting).rejects.toThrow("Nomad unavailable (503)");
    } finally {
      process.off("unhandledRejection", onRejection);
    }
  });

  // Counts the requests the fake recorded, by what they name.
  it.skipIf(realNomad)("reads finished builds once: a second listing costs one call per builder plus the builds in progress", async () => {
    const fake = t.fake!;
    const r = createNomadBuildReader({ nomad, builders: () => new Set([builder]), log: captureLogs().log });
    await r.listBuilds({ limit: 500 });
    const before = fake.requests.length;
    const list = (await r.listBuilds({ limit: 500 })).builds;
    const calls = fake.requests.slice(before);
    const inProgress = list.filter((b) => b.state === "queued" || b.state === "running");
    const withoutAlloc = inProgress.filter((b) => b.allocId === undefined).length;
    expect(calls.filter((c) => c.path === "/v1/jobs")).toHaveLength(1);
    expect(calls.length).toBe(1 + 2 * inProgress.length + withoutAlloc);
  });

  // Counts the requests the fake recorded, by what they name.
  it.skipIf(realNomad)("bounds the Nomad calls of a page by its size and goes on from the cursor", async () => {
    const fake = t.fake!;
    const r = createNomadBuildReader({ nomad, builders: () => new Set([builder]), log: captureLogs().log });
    const all = (
      await createNomadBuildReader({ nomad, builders: () => new Set([builder]), log: captureLogs().log }).listBuilds({ limit: 500 })
    ).builds;
    const seen: string[] = [];
    let after: BuildCursor | undefined;
    for (let pages = 0; pages < all.length + 1; pages += 1) {
      const before = fake.requests.length;
      const page = await r.listBuilds({ limit: 1, ...(after === undefined ? {} : { after }) });
      // One list call, then at most job + allocations + evaluations for the one build of the page.
      expect(fake.requests.length - before).toBeLessThanOrEqual(1 + 3);
      seen.push(...page.builds.map((b) => b.id));
      if (page.next === undefined) break;
      after = page.next;
    }
    expect(seen).toEqual(all.map((b) => b.id));
  });

  // Counts the requests the fake recorded, by what they name.
  it.skipIf(realNomad)("never reads builds the caller may not see, and counts them", async () => {
    const fake = t.fake!;
    const r = createNomadBuildReader({ nomad, builders: () => new Set([builder, other]), log: captureLogs().log });
    const before = fake.requests.length;
    const page = await r.listBuilds({ limit: 500, visible: (b) => b.repo === "acme/gadgets" });
    expect(page.builds.map((b) => b.id)).toEqual([ids.nix]);
    expect(page.hidden).toBeGreaterThanOrEqual(4);
    const reads = fake.requests.slice(before).filter((q) => q.path.startsWith("/v1/job/"));
    expect(reads.every((q) => decodeURIComponent(q.path).includes(ids.nix as string))).toBe(true);
  });
});

// Asserts on the requests the fake recorded (none).
describe.skipIf(realNomad)("foreign IDs", () => {
  it("refuses anything that is not a dispatched child of a configured builder before any Nomad call", async () => {
    const fake = t.fake!;
    const before = fake.requests.length;
    for (const id of [builder, "other/dispatch-1700000000-1a2b3c4d", `${builder}-x/dispatch-1700000000-1a2b3c4d`, "../v1/jobs"]) {
      expect(await rejection(reader.getBuild(id))).toMatchObject({ code: "not_found", status: 404 });
      expect(await rejection(reader.cancel(id))).toMatchObject({ code: "not_found", status: 404 });
      expect(() => reader.logs(id, { type: "stdout", follow: true, offset: 0, signal: new AbortController().signal })).toThrow(
        /not a petrel build/,
      );
    }
    expect(fake.requests.length).toBe(before);
  });
});

describe("the outcome rule (table)", () => {
  const job = (over: Record<string, unknown> = {}) =>
    Job.parse({
      ID: "b/dispatch-1700000000-1a2b3c4d",
      ParentID: "b",
      Dispatched: true,
      Meta: META,
      Status: "running",
      SubmitTime: 1.7e18,
      ...over,
    });

  it("reads SubmitTime (int64 nanoseconds) as whole milliseconds, right for every millisecond despite the float error", () => {
    const wrong: number[] = [];
    for (let ms = Date.parse("2026-12-07T00:00:00Z"), end = ms + 20_000; ms < end; ms++) {
      for (const ns of [ms * 1e6, ms * 1e6 + 999_000, ms * 1e6 + 1000]) if (msFromNs(ns) !== ms) wrong.push(ns);
    }
    expect(wrong).toEqual([]);
    // floor(ns / 1e6) alone put one millisecond in eight in the one before it.
    expect(Math.floor(1796656823778e6 / 1e6)).toBe(1796656823777);
    expect(buildOf(job({ SubmitTime: 1796656823778e6 }), []).createdAt).toBe(new Date(1796656823778).toISOString());
  });
  const task = (state: string, events: [string, Record<string, string>?][], failed = false) => ({
    State: state,
    Failed: failed,
    StartedAt: state === "pending" ? "0001-01-01T00:00:00Z" : "2026-01-01T00:00:00Z",
    FinishedAt: state === "dead" ? "2026-01-01T00:01:00Z" : "0001-01-01T00:00:00Z",
    Events: events.map(([Type, Details = {}]) => ({ Type, Time: 1, Details })),
  });
  const alloc = (over: Record<string, unknown>, executor: unknown) =>
    AllocationStub.parse({
      ID: "a",
      TaskGroup: "runner",
      NodeName: "n1",
      DesiredStatus: "run",
      CreateIndex: 5,
      ...over,
      TaskStates: { executor },
    });
  const evals = (...list: Record<string, unknown>[]) => list.map((e, i) => Evaluation.parse({ ID: `e${i}`, ...e }));

  const dead = (code: string, failed = false) => task("dead", [["Started"], ["Terminated", { exit_code: code }]], failed);
  const killed = task("dead", [["Killing"], ["Terminated", { exit_code: "130" }], ["Killed"]]);
  const placementFailed = evals({ Status: "complete", FailedTGAllocs: { runner: { NodesEvaluated: 0 } } }, { Status: "blocked" });

  it.each([
    { name: "exit 0", j: job(), allocs: [alloc({ ClientStatus: "complete" }, dead("0"))], state: "success", exitCode: 0 },
    { name: "exit 2", j: job(), allocs: [alloc({ ClientStatus: "failed" }, dead("2", true))], state: "failure", exitCode: 2 },
    {
      name: "killed by a stop",
      j: job({ Stop: true }),
      allocs: [alloc({ ClientStatus: "complete", DesiredStatus: "stop" }, killed)],
      state: "cancelled",
    },
    {
      name: "stop requested, task still shutting down",
      j: job({ Stop: true }),
      allocs: [alloc({ ClientStatus: "running", DesiredStatus: "stop" }, task("running", [["Killing"]]))],
      state: "cancelled",
    },
    { name: "lost", j: job(), allocs: [alloc({ ClientStatus: "lost" }, task("running", []))], state: "error" },
    { name: "no alloc, pending eval", j: job({ Status: "pending" }), allocs: [], evs: evals({ Status: "pending" }), state: "queued" },
    { name: "no alloc, evaluation blocked", j: job({ Status: "pending" }), allocs: [], evs: placementFailed, state: "queued" },
    {
      name: "no alloc, Nomad gave up placing",
      j: job({ Status: "pending" }),
      allocs: [],
      evs: evals({ Status: "failed", FailedTGAllocs: { runner: { NodesEvaluated: 0 } } }),
      state: "error",
    },
    {
      name: "stopped before placement",
      j: job({ Stop: true, Status: "dead" }),
      allocs: [],
      evs: evals({ Status: "canceled" }),
      state: "cancelled",
    },
    {
      name: "prestart failed, executor never started",
      j: job(),
      allocs: [alloc({ ClientStatus: "failed" }, task("pending", []))],
      state: "error",
    },
  ] as { name: string; j: Job; allocs: AllocationStub[]; evs?: Evaluation[]; state: string; exitCode?: number }[])(
    "$name → $state",
    ({ j, allocs, evs, state, exitCode }) => {
      const b = buildOf(j, allocs, evs);
      expect(b.state).toBe(state);
      expect(b.exitCode).toBe(exitCode);
    },
  );

  it("follows the newest allocation of the runner group", () => {
    const old = alloc({ ID: "old", CreateIndex: 5, ClientStatus: "failed" }, task("dead", [["Terminated", { exit_code: "1" }]], true));
    const fresh = alloc({ ID: "new", CreateIndex: 9, ClientStatus: "running" }, task("running", []));
    expect(buildOf(job(), [fresh, old])).toMatchObject({ state: "running", allocId: "new" });
  });
});
