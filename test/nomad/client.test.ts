import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AppError, UpstreamError } from "../../src/errors.js";
import { createNomadClient, type NomadClient } from "../../src/nomad/client.js";
import { startNomadFake } from "../fakes/nomad.js";
import { rejection } from "../helpers/rejection.js";
import { type NomadTarget, realNomad, startTarget } from "./target.js";

// Every client method against the fake, or against a real Nomad when NOMAD_ADDR is set; assertions that need
// the fake's request log or its lifecycle hooks are skipped then.

const META = { REPO_URL: "https://git.example.test/acme/widgets", COMMIT: "4c1d7e0", BRANCH: "main", FLAVOR: "default" };

let t: NomadTarget;
let nomad: NomadClient;
let builder: string;

beforeAll(async () => {
  t = await startTarget();
  builder = t.jobId("builder");
  await t.registerBuilder(builder);
  nomad = client();
});
afterAll(() => t.close());

function client(extra: Partial<Parameters<typeof createNomadClient>[0]> = {}): NomadClient {
  return createNomadClient({
    addr: t.addr,
    dispatcher: t.dispatcher,
    ...(t.token ? { token: t.token } : {}),
    ...extra,
  });
}

let tokens = 0;
function token(): string {
  tokens += 1;
  return `client-test-${process.pid}-${Date.now()}-${tokens}`;
}

describe("dispatch", () => {
  it("dispatches a child and reports it as new", async () => {
    const res = await nomad.dispatch(builder, {
      meta: META,
      payload: Buffer.from('{"secrets":{"A":"b"}}'),
      idempotencyToken: token(),
    });
    expect(res.id).toMatch(new RegExp(`^${builder}/dispatch-\\d+-[0-9a-f]{8}$`));
    expect(res.evalId).not.toBe("");
    expect(res.duplicate).toBe(false);
    const read = await nomad.readJob(res.id);
    expect(read?.job).toMatchObject({ ParentID: builder, Dispatched: true, Meta: expect.objectContaining(META) });
    expect(Buffer.from(read?.job.Payload ?? "", "base64").toString()).toBe('{"secrets":{"A":"b"}}');
  });

  it("returns the same child as a duplicate when the token repeats", async () => {
    const tok = token();
    const first = await nomad.dispatch(builder, { meta: META, idempotencyToken: tok });
    const again = await nomad.dispatch(builder, { meta: META, idempotencyToken: tok });
    expect(again).toEqual({ id: first.id, evalId: "", duplicate: true });
  });

  it("keeps Nomad's plain-text message when validation fails", async () => {
    const { BRANCH: _omitted, ...meta } = META;
    const err = await rejection(nomad.dispatch(builder, { meta, idempotencyToken: token() }));
    expect(err).toBeInstanceOf(UpstreamError);
    expect(err).toMatchObject({
      service: "nomad",
      upstreamStatus: 500,
      upstreamBody: "Dispatch did not provide required meta keys: [BRANCH]",
    });
    expect((err as Error).message).toContain("nomad dispatch answered 500");
  });

  it("sends the token as a query parameter and the payload as base64", async () => {
    if (!t.fake) return;
    const tok = token();
    await nomad.dispatch(builder, { meta: META, payload: Buffer.from("hi"), idempotencyToken: tok });
    const sent = t.fake.requests.at(-1);
    expect(sent).toMatchObject({ method: "POST", path: `/v1/job/${builder}/dispatch`, query: { idempotency_token: tok } });
    expect(JSON.parse(sent?.body ?? "")).toEqual({ JobID: builder, Meta: META, Payload: "aGk=" });
  });
});

describe("parameterized", () => {
  it("reads the builder's payload rule and meta keys", async () => {
    const spec = await nomad.parameterized(builder);
    expect(spec.payload).toBe("optional");
    expect(spec.metaRequired).toEqual(["REPO_URL", "COMMIT", "BRANCH", "FLAVOR"]);
    expect(spec.metaOptional).toContain("TRUSTED");
  });

  it("answers not_found naming the job when it does not exist", async () => {
    const missing = t.jobId("no-such-builder");
    const err = await rejection(client().parameterized(missing));
    expect(err).toBeInstanceOf(AppError);
    expect(err).toMatchObject({ code: "not_found", status: 404 });
    expect((err as Error).message).toContain(`"${missing}"`);
  });

  it("refuses a job that is not parameterized, such as a dispatched child", async () => {
    const child = await nomad.dispatch(builder, { meta: META, idempotencyToken: token() });
    const err = await rejection(client().parameterized(child.id));
    expect(err).toBeInstanceOf(AppError);
    expect((err as Error).message).toContain("is not a parameterized job");
  });

  it("reads the job once per TTL", async () => {
    if (!t.fake) return;
    let clock = 1_000;
    const cached = client({ parameterizedTtlMs: 60_000, now: () => clock });
    const reads = () => t.fake?.requests.filter((r) => r.method === "GET" && r.path === `/v1/job/${builder}`).length;
    const before = reads() ?? 0;
    await Promise.all([cached.parameterized(builder), cached.parameterized(builder)]);
    clock += 59_000;
    await cached.parameterized(builder);
    expect(reads()).toBe(before + 1);
    clock += 2_000;
    await cached.parameterized(builder);
    expect(reads()).toBe(before + 2);
  });

  it("does not cache a failure", async () => {
    if (!t.fake) return;
    const fresh = client();
    t.fake.failNext(1, 403, "Permission denied", { path: /^\/v1\/job\// });
    await expect(fresh.parameterized(builder)).rejects.toMatchObject({ upstreamStatus: 403 });
    await expect(fresh.parameterized(builder)).resolves.toMatchObject({ payload: "optional" });
  });
});

describe("jobs and allocations", () => {
  it("answers undefined for an unknown job and an unknown allocation", async () => {
    expect(await nomad.readJob(t.jobId("ghost"))).toBeUndefined();
    expect(await nomad.allocation("00000000-0000-4000-8000-000000000000")).toBeUndefined();
  });

  it("lists no allocations for an unknown job", async () => {
    expect((await nomad.jobAllocations(t.jobId("ghost"))).allocations).toEqual([]);
  });

  it("escapes dispatched IDs as %2F in paths", async () => {
    const child = await nomad.dispatch(builder, { meta: META, idempotencyToken: token() });
    const read = await nomad.readJob(child.id);
    expect(read?.job.ID).toBe(child.id);
    expect(read?.index).toBeGreaterThan(0);
    if (!t.fake) return;
    expect(t.fake.requests.at(-1)?.path).toBe(`/v1/job/${builder}%2F${child.id.slice(builder.length + 1)}`);
  });

  it("lists the builder and its children with ParentID, Status, SubmitTime and JobSummary", async () => {
    const child = await nomad.dispatch(builder, { meta: META, idempotencyToken: token() });
    const stubs = await nomad.listJobs({ prefix: builder });
    const parent = stubs.find((s) => s.ID === builder);
    const mine = stubs.find((s) => s.ID === child.id);
    expect(parent).toMatchObject({ ParentID: "", Status: "running", ParameterizedJob: true });
    expect(mine).toMatchObject({ ParentID: builder, ParameterizedJob: false });
    expect(mine?.SubmitTime).toBeGreaterThan(0);
    expect(mine?.JobSummary?.Namespace).toBe("default");
  });

  it("ends a successful build with a complete allocation and exit code 0", async () => {
    const child = await nomad.dispatch(builder, { meta: META, idempotencyToken: token() });
    if (t.fake) {
      t.fake.placeAlloc(child.id, { node: "ci-1" });
      t.fake.startTask(child.id);
      t.fake.finishTask(child.id, 0);
    }
    // A real agent runs the builder by itself: blocking queries answer as its allocation changes.
    const deadline = Date.now() + 15_000;
    let stub;
    let index = 0;
    do {
      const answer = await nomad.jobAllocations(child.id, index === 0 ? {} : { index, wait: 5000 });
      [stub] = answer.allocations;
      index = answer.index;
      if (stub?.ClientStatus === "complete" || stub?.ClientStatus === "failed") break;
    } while (Date.now() < deadline);
    expect(stub?.ClientStatus).toBe("complete");
    const executor = stub?.TaskStates.executor;
    expect(executor).toMatchObject({ State: "dead", Failed: false });
    const types = executor?.Events.map((e) => e.Type) ?? [];
    expect(types).toEqual(expect.arrayContaining(["Received", "Task Setup", "Started", "Terminated"]));
    expect(executor?.Events.find((e) => e.Type === "Terminated")?.Details.exit_code).toBe("0");

    const full = await nomad.allocation(stub?.ID ?? "");
    expect(full?.allocation).toMatchObject({ ID: stub?.ID, JobID: child.id, DesiredStatus: "run" });
    expect(full?.allocation.Job?.TaskGroups[0]?.Tasks.map((task) => task.Name)).toContain("executor");
    expect((await nomad.readJob(child.id))?.job.Status).toBe("dead");
  });

  it("stops a child, leaving it readable with Stop: true", async () => {
    const child = await nomad.dispatch(builder, { meta: META, idempotencyToken: token() });
    const stopped = await nomad.stopJob(child.id);
    expect(stopped.evalId).not.toBe("");
    expect(stopped.index).toBeGreaterThan(0);
    expect((await nomad.readJob(child.id))?.job.Stop).toBe(true);
  });

  it("answers an unknown job's stop with an empty evaluation", async () => {
    expect((await nomad.stopJob(t.jobId("ghost"))).evalId).toBe("");
  });

  it("purges a child, after which its token dispatches afresh", async () => {
    const tok = token();
    const child = await nomad.dispatch(builder, { meta: META, idempotencyToken: tok });
    await nomad.stopJob(child.id, { purge: true });
    expect(await nomad.readJob(child.id)).toBeUndefined();
    const again = await nomad.dispatch(builder, { meta: META, idempotencyToken: tok });
    expect(again.duplicate).toBe(false);
    expect(again.id).not.toBe(child.id);
  });
});

describe("blocking queries", () => {
  it("returns at once without an index, and with the same index after the wait when nothing changed", async () => {
    const first = await nomad.readJob(builder);
    const started = performance.now();
    const held = await nomad.readJob(builder, { index: first?.index ?? 1, wait: 500 });
    expect(performance.now() - started).toBeGreaterThan(450);
    expect(held?.index).toBe(first?.index);
  });

  it("wakes a blocked job read when the job changes", async () => {
    if (!t.fake) return;
    const fake = t.fake;
    const child = await nomad.dispatch(builder, { meta: META, idempotencyToken: token() });
    const before = await nomad.readJob(child.id);
    expect(before?.job.Status).toBe("pending");
    const held = nomad.readJob(child.id, { index: before?.index ?? 0, wait: 10_000 });
    setTimeout(() => fake.placeAlloc(child.id), 100);
    const started = performance.now();
    const after = await held;
    expect(performance.now() - started).toBeLessThan(5_000);
    expect(after?.job.Status).toBe("running");
    expect(after?.index).toBeGreaterThan(before?.index ?? 0);
  });

  it("wakes a blocked allocation read when a task starts", async () => {
    if (!t.fake) return;
    const fake = t.fake;
    const child = await nomad.dispatch(builder, { meta: META, idempotencyToken: token() });
    const allocId = fake.placeAlloc(child.id);
    const before = await nomad.allocation(allocId);
    const held = nomad.allocation(allocId, { index: before?.index ?? 0, wait: 10_000 });
    setTimeout(() => fake.startTask(child.id), 100);
    const after = await held;
    expect(after?.allocation.ClientStatus).toBe("running");
    expect(after?.allocation.TaskStates.executor?.StartedAt).not.toBeNull();
  });

  it("sends index and wait (in ms) as query parameters", async () => {
    if (!t.fake) return;
    const list = await nomad.jobAllocations(builder, { all: true });
    await nomad.jobAllocations(builder, { index: list.index + 1000, wait: 50 });
    expect(t.fake.requests.at(-1)?.query).toMatchObject({ index: String(list.index + 1000), wait: "50ms", all: "false" });
  });
});

describe("parse, register and leader", () => {
  const hcl = (id: string) => `
job "${id}" {
  type = "batch"
  parameterized {
    payload       = "forbidden"
    meta_required = ["REPO_URL", "COMMIT", "BRANCH", "FLAVOR"]
  }
  group "runner" {
    restart {
      attempts = 0
      mode     = "fail"
    }
    task "executor" {
      driver = "raw_exec"
      config {
        command = "/bin/true"
      }
    }
  }
}`;

  it("parses HCL into a job and registers it with its source", async () => {
    const id = t.jobId("from-hcl");
    const job = await nomad.parseJob(hcl(id), { canonicalize: true });
    expect(job).toMatchObject({ ID: id, Type: "batch", ParameterizedJob: { Payload: "forbidden" } });
    const res = await nomad.registerJob(job, { source: hcl(id) });
    expect(res).toMatchObject({ evalId: "" });
    expect(res.jobModifyIndex).toBeGreaterThan(0);
    expect((await nomad.parameterized(id)).payload).toBe("forbidden");
    if (!t.fake) return;
    expect(t.fake.submission(id)).toEqual({ Source: hcl(id), Format: "hcl2" });
  });

  it("reports HCL errors as Nomad's 400 without retrying", async () => {
    const err = await rejection(nomad.parseJob('job "x" {'));
    expect(err).toMatchObject({ upstreamStatus: 400, unavailable: false });
    expect((err as UpstreamError).upstreamBody).toMatch(/^Failed to parse job: /);
  });

  it("reports the leader", async () => {
    expect(await nomad.leader()).toMatch(/:\d+$/);
  });
});

describe.skipIf(realNomad)("headers and scoping", () => {
  it("sends the token header and namespace/region on every call", async () => {
    const fake = await startNomadFake({ aclToken: "s3cret" });
    try {
      fake.registerJob({ ID: "builder", Type: "batch", ParameterizedJob: {}, TaskGroups: [] }, { namespace: "ci" });
      const scoped = createNomadClient({
        addr: fake.url,
        dispatcher: t.dispatcher,
        token: "s3cret",
        namespace: "ci",
        region: "global",
      });
      const res = await scoped.dispatch("builder", { meta: {}, idempotencyToken: "x" });
      await scoped.readJob(res.id);
      await scoped.jobAllocations(res.id);
      await scoped.listJobs({ prefix: "builder" });
      await scoped.stopJob(res.id);
      await scoped.leader();
      expect(fake.requests.length).toBe(6);
      for (const r of fake.requests) {
        expect(r.headers["x-nomad-token"]).toBe("s3cret");
        expect(r.query).toMatchObject({ namespace: "ci", region: "global" });
      }
    } finally {
      await fake.close();
    }
  });

  it("answers 403 without retrying when the token is refused", async () => {
    const fake = await startNomadFake({ aclToken: "s3cret" });
    try {
      const wrong = createNomadClient({ addr: fake.url, dispatcher: t.dispatcher, token: "nope" });
      const err = await rejection(wrong.dispatch("builder", { meta: {}, idempotencyToken: "x" }));
      expect(err).toMatchObject({ upstreamStatus: 403, upstreamBody: "Permission denied", unavailable: false });
      expect(fake.requests).toHaveLength(1);
    } finally {
      await fake.close();
    }
  });

  it("drives failure, placement failure, loss and stop through the task-state sequences Nomad's client writes", async () => {
    const fake = t.fake;
    if (!fake) return;
    const failed = await nomad.dispatch(builder, { meta: META, idempotencyToken: token() });
    fake.placeAlloc(failed.id);
    fake.finishTask(failed.id, 2);
    const [f] = (await nomad.jobAllocations(failed.id)).allocations;
    expect(f?.ClientStatus).toBe("failed");
    const events = f?.TaskStates.executor?.Events ?? [];
    expect(events.map((e) => e.Type).slice(-2)).toEqual(["Terminated", "Not Restarting"]);
    expect(events.at(-2)?.Details.exit_code).toBe("2");
    expect(events.at(-1)?.Details).toMatchObject({ restart_reason: "Policy allows no restarts", fails_task: "true" });

    const unplaced = await nomad.dispatch(builder, { meta: META, idempotencyToken: token() });
    fake.failPlacement(unplaced.id);
    expect((await nomad.readJob(unplaced.id))?.job.Status).toBe("pending");
    expect((await nomad.jobAllocations(unplaced.id)).allocations).toEqual([]);
    expect(fake.evaluations(unplaced.id).map((e) => e.Status)).toEqual(["complete", "blocked"]);

    const lost = await nomad.dispatch(builder, { meta: META, idempotencyToken: token() });
    fake.placeAlloc(lost.id);
    fake.startTask(lost.id);
    fake.loseAlloc(lost.id);
    expect((await nomad.jobAllocations(lost.id)).allocations[0]).toMatchObject({ ClientStatus: "lost", DesiredStatus: "stop" });
    expect((await nomad.readJob(lost.id))?.job.Status).toBe("dead");

    const cancelled = await nomad.dispatch(builder, { meta: META, idempotencyToken: token() });
    fake.placeAlloc(cancelled.id);
    fake.startTask(cancelled.id);
    await nomad.stopJob(cancelled.id);
    const [c] = (await nomad.jobAllocations(cancelled.id)).allocations;
    expect(c).toMatchObject({ ClientStatus: "complete", DesiredStatus: "stop" });
    expect(c?.TaskStates.executor?.Failed).toBe(false);
    expect(c?.TaskStates.executor?.Events.map((e) => e.Type)).toEqual(expect.arrayContaining(["Started", "Killing", "Killed"]));

    const broken = await nomad.dispatch(builder, { meta: META, idempotencyToken: token() });
    fake.placeAlloc(broken.id);
    fake.failTaskSetup(broken.id, "Failed to pull `nope:latest`");
    const [b] = (await nomad.jobAllocations(broken.id)).allocations;
    expect(b?.ClientStatus).toBe("failed");
    expect(b?.TaskStates.executor?.StartedAt).toBe("0001-01-01T00:00:00Z");
  });
});
