import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { builderJob, type NomadTarget, realNomad, startTarget } from "../nomad/target.js";
import { startNomadFake } from "./nomad.js";

// Raw HTTP against the fake (or a real Nomad when NOMAD_ADDR is set): the wire facts of Nomad's HTTP API
// (https://developer.hashicorp.com/nomad/api-docs) that the client and every consumer of the fake rely on.

const PLAIN = "text/plain; charset=utf-8";
const META = { REPO_URL: "https://git.example.test/acme/widgets", COMMIT: "4c1d7e0", BRANCH: "main", FLAVOR: "default" };

let t: NomadTarget;
let builder: string;

beforeAll(async () => {
  t = await startTarget();
  builder = t.jobId("builder");
  await t.registerBuilder(builder);
});
afterAll(() => t.close());

function dispatch(parent: string, body: unknown, token?: string) {
  const q = token ? `?idempotency_token=${encodeURIComponent(token)}` : "";
  return t.http("POST", `/v1/job/${encodeURIComponent(parent)}/dispatch${q}`, body);
}

// https://github.com/hashicorp/nomad/blob/main/nomad/job_endpoint.go `validateDispatchRequest`
describe("dispatch validation", () => {
  it("answers 405 Invalid method to a GET", async () => {
    const res = await t.http("GET", `/v1/job/${builder}/dispatch`);
    expect(res.status).toBe(405);
    expect(res.text).toBe("Invalid method");
    expect(res.headers["content-type"]).toBe(PLAIN);
  });

  it("answers 400 Request body is empty to an empty body", async () => {
    const res = await dispatch(builder, "");
    expect(res).toMatchObject({ status: 400, text: "Request body is empty" });
    expect(res.headers["content-type"]).toBe(PLAIN);
  });

  it("answers 400 when the body's JobID differs from the path", async () => {
    const res = await dispatch(builder, { JobID: "other", Meta: META });
    expect(res).toMatchObject({ status: 400, text: "Job ID does not match" });
  });

  it("answers 500 parameterized job not found for an unknown job", async () => {
    const res = await dispatch(t.jobId("nope"), { Meta: META });
    expect(res).toMatchObject({ status: 500, text: "parameterized job not found" });
    expect(res.headers["content-type"]).toBe(PLAIN);
  });

  it("refuses to dispatch against a dispatched child", async () => {
    const child = JSON.parse((await dispatch(builder, { Meta: META })).text).DispatchedJobID as string;
    const res = await dispatch(child, { Meta: META });
    expect(res).toMatchObject({ status: 500, text: `Specified job "${child}" is not a parameterized job` });
  });

  it("refuses a stopped parent", async () => {
    const parent = t.jobId("stopped");
    await t.registerBuilder(parent);
    expect((await t.http("DELETE", `/v1/job/${parent}`)).status).toBe(200);
    const res = await dispatch(parent, { Meta: META });
    expect(res).toMatchObject({ status: 500, text: `Specified job "${parent}" is stopped` });
  });

  it("enforces required and forbidden payloads", async () => {
    const needs = t.jobId("needs-payload");
    const refuses = t.jobId("refuses-payload");
    await t.registerBuilder(needs, { Payload: "required" });
    await t.registerBuilder(refuses, { Payload: "forbidden" });
    expect(await dispatch(needs, { Meta: META, Payload: "" })).toMatchObject({
      status: 500,
      text: "Payload is not provided but required by parameterized job",
    });
    expect(await dispatch(refuses, { Meta: META, Payload: Buffer.from("{}").toString("base64") })).toMatchObject({
      status: 500,
      text: "Payload provided but forbidden by parameterized job",
    });
  });

  it("limits the decoded payload to 16384 bytes", async () => {
    const ok = await dispatch(builder, { Meta: META, Payload: Buffer.alloc(16384, 1).toString("base64") });
    expect(ok.status).toBe(200);
    const res = await dispatch(builder, { Meta: META, Payload: Buffer.alloc(16385, 1).toString("base64") });
    expect(res).toMatchObject({ status: 500, text: "Payload exceeds maximum size; 16385 > 16384" });
  });

  it("reports unpermitted meta keys before missing ones", async () => {
    const res = await dispatch(builder, { Meta: { REPO_URL: "x", NOPE: "1" } });
    expect(res).toMatchObject({ status: 500, text: "Dispatch request included unpermitted metadata keys: [NOPE]" });
  });

  it("names the missing required meta keys", async () => {
    const { BRANCH: _omitted, ...meta } = META;
    const res = await dispatch(builder, { Meta: meta });
    expect(res).toMatchObject({ status: 500, text: "Dispatch did not provide required meta keys: [BRANCH]" });
  });

  it("matches meta keys case-sensitively", async () => {
    const res = await dispatch(builder, { Meta: { ...META, repo: "acme/widgets" } });
    expect(res.text).toBe("Dispatch request included unpermitted metadata keys: [repo]");
  });

  it("refuses a priority outside [1, 100]", async () => {
    const res = await dispatch(builder, { Meta: META, Priority: 101 });
    expect(res).toMatchObject({ status: 500, text: "dispatch job priority must be between [1, 100]" });
  });

  it("answers 400 to meta values that are not strings", async () => {
    const res = await dispatch(builder, { Meta: { ...META, COMMIT: 7 } });
    expect(res.status).toBe(400);
  });
});

// https://developer.hashicorp.com/nomad/api-docs/jobs#dispatch-job
describe("dispatch result", () => {
  it("creates a child with the parent's ID shape, equal indexes and X-Nomad-Index", async () => {
    const res = await dispatch(builder, { Meta: META, Payload: Buffer.from('{"secrets":{}}').toString("base64") }, "fresh-1");
    expect(res.status).toBe(200);
    const body = JSON.parse(res.text);
    expect(body.DispatchedJobID).toMatch(new RegExp(`^${builder}/dispatch-\\d+-[0-9a-f]{8}$`));
    expect(body.EvalID).not.toBe("");
    expect(body.JobCreateIndex).toBe(body.Index);
    expect(body.EvalCreateIndex).toBe(body.Index);
    expect(res.headers["x-nomad-index"]).toBe(String(body.Index));

    const child = JSON.parse((await t.http("GET", `/v1/job/${encodeURIComponent(body.DispatchedJobID)}`)).text);
    expect(child).toMatchObject({
      ID: body.DispatchedJobID,
      ParentID: builder,
      Dispatched: true,
      DispatchIdempotencyToken: "fresh-1",
      Meta: expect.objectContaining(META),
      Payload: Buffer.from('{"secrets":{}}').toString("base64"),
    });
    expect(child.ParameterizedJob).not.toBeNull();
  });

  it("answers a repeated token with the existing child and no evaluation", async () => {
    const first = JSON.parse((await dispatch(builder, { Meta: META }, "repeat-1")).text);
    // A later write moves the server's index past the child's: the answer still carries the child's.
    await dispatch(builder, { Meta: META }, "repeat-1-later");
    const again = await dispatch(builder, { Meta: { ...META, BRANCH: "other" } }, "repeat-1");
    expect(again.status).toBe(200);
    const body = JSON.parse(again.text);
    const child = JSON.parse((await t.http("GET", `/v1/job/${encodeURIComponent(first.DispatchedJobID)}`)).text);
    expect(body).toMatchObject({
      DispatchedJobID: first.DispatchedJobID,
      EvalID: "",
      EvalCreateIndex: 0,
      JobCreateIndex: child.CreateIndex,
    });
    // The child's ModifyIndex (nomad/job_endpoint.go, Dispatch: `reply.Index = found.ModifyIndex`), which the
    // child's own later changes (a real agent runs it) can only move past; also in the header (recorded: Index
    // 190 and X-Nomad-Index 190 for a child created at 189).
    expect(body.Index).toBeGreaterThanOrEqual(child.CreateIndex);
    expect(body.Index).toBeLessThanOrEqual(child.ModifyIndex);
    expect(again.headers["x-nomad-index"]).toBe(String(body.Index));
    expect(child.Meta.BRANCH).toBe("main");
  });

  it("validates a repeat before looking the token up", async () => {
    await dispatch(builder, { Meta: META }, "repeat-2");
    const res = await dispatch(builder, { Meta: { NOPE: "1" } }, "repeat-2");
    expect(res.status).toBe(500);
  });

  it("forgets a token once its child is purged", async () => {
    const first = JSON.parse((await dispatch(builder, { Meta: META }, "purged-1")).text);
    await t.http("DELETE", `/v1/job/${encodeURIComponent(first.DispatchedJobID)}?purge=true`);
    const again = JSON.parse((await dispatch(builder, { Meta: META }, "purged-1")).text);
    expect(again.DispatchedJobID).not.toBe(first.DispatchedJobID);
    expect(again.EvalID).not.toBe("");
  });
});

// https://developer.hashicorp.com/nomad/api-docs/jobs#read-job, https://developer.hashicorp.com/nomad/api-docs/allocations#read-allocation
describe("job and allocation reads", () => {
  it("answers 404 job not found as plain text, for the job and its summary", async () => {
    for (const path of [`/v1/job/${t.jobId("ghost")}`, `/v1/job/${t.jobId("ghost")}/summary`]) {
      const res = await t.http("GET", path);
      expect(res).toMatchObject({ status: 404, text: "job not found" });
      expect(res.headers["content-type"]).toBe(PLAIN);
    }
  });

  it("lists no allocations for an unknown job instead of a 404", async () => {
    const res = await t.http("GET", `/v1/job/${t.jobId("ghost")}/allocations`);
    expect(res.status).toBe(200);
    expect(JSON.parse(res.text)).toEqual([]);
  });

  it("answers 404 alloc not found for an unknown allocation", async () => {
    const res = await t.http("GET", "/v1/allocation/00000000-0000-4000-8000-000000000000");
    expect(res).toMatchObject({ status: 404, text: "alloc not found" });
  });

  it("serves a dispatched job under its raw and its %2F-escaped ID, with the GET headers", async () => {
    const id = JSON.parse((await dispatch(builder, { Meta: META })).text).DispatchedJobID as string;
    const escaped = await t.http("GET", `/v1/job/${encodeURIComponent(id)}`);
    const raw = await t.http("GET", `/v1/job/${id}`);
    expect(JSON.parse(escaped.text).ID).toBe(id);
    expect(JSON.parse(raw.text).ID).toBe(id);
    expect(escaped.headers["x-nomad-index"]).toMatch(/^\d+$/);
    expect(escaped.headers["x-nomad-knownleader"]).toBe("true");
    expect(escaped.headers["x-nomad-lastcontact"]).toMatch(/^\d+$/);
  });

  it("summarises a parent's children", async () => {
    const parent = t.jobId("summarised");
    await t.registerBuilder(parent);
    await dispatch(parent, { Meta: META });
    const summary = JSON.parse((await t.http("GET", `/v1/job/${parent}/summary`)).text);
    expect(summary.JobID).toBe(parent);
    const c = summary.Children;
    expect(c.Pending + c.Running + c.Dead).toBe(1);
  });

  it("holds a blocking query until the wait runs out when nothing changes", async () => {
    const parent = t.jobId("quiet");
    await t.registerBuilder(parent);
    const first = await t.http("GET", `/v1/job/${parent}`);
    const index = Number(first.headers["x-nomad-index"]);
    const started = performance.now();
    const held = await t.http("GET", `/v1/job/${parent}?index=${index}&wait=1s`);
    const elapsed = performance.now() - started;
    expect(held.status).toBe(200);
    expect(Number(held.headers["x-nomad-index"])).toBe(index);
    expect(elapsed).toBeGreaterThan(900);
  });

  it("answers 400 Invalid wait time to a bad wait", async () => {
    const res = await t.http("GET", `/v1/job/${builder}?index=1&wait=soon`);
    expect(res).toMatchObject({ status: 400, text: "Invalid wait time" });
  });

  it("lists jobs by prefix with their summaries' namespace", async () => {
    const res = await t.http("GET", `/v1/jobs?prefix=${encodeURIComponent(builder)}`);
    const stubs = JSON.parse(res.text) as { ID: string; ParentID: string; JobSummary: { Namespace: string } }[];
    expect(stubs[0]?.ID).toBe(builder);
    expect(stubs.some((s) => s.ParentID === builder)).toBe(true);
    for (const s of stubs) expect(s.JobSummary.Namespace).toBe("default");
  });
});

// https://developer.hashicorp.com/nomad/api-docs/jobs#stop-a-job
describe("stop", () => {
  it("answers 200 with zero fields for an unknown job", async () => {
    const res = await t.http("DELETE", `/v1/job/${t.jobId("ghost")}`);
    expect(res.status).toBe(200);
    expect(JSON.parse(res.text)).toMatchObject({ EvalID: "", EvalCreateIndex: 0, JobModifyIndex: 0 });
  });

  it("keeps a stopped child readable with Stop: true", async () => {
    const id = JSON.parse((await dispatch(builder, { Meta: META })).text).DispatchedJobID as string;
    const res = await t.http("DELETE", `/v1/job/${encodeURIComponent(id)}`);
    expect(JSON.parse(res.text).EvalID).not.toBe("");
    const job = JSON.parse((await t.http("GET", `/v1/job/${encodeURIComponent(id)}`)).text);
    expect(job.Stop).toBe(true);
  });
});

// https://developer.hashicorp.com/nomad/api-docs/jobs#parse-job, https://developer.hashicorp.com/nomad/api-docs/jobs#create-job
describe("parse and register", () => {
  it("answers 400 Job spec is empty", async () => {
    const res = await t.http("POST", "/v1/jobs/parse", { JobHCL: "" });
    expect(res).toMatchObject({ status: 400, text: "Job spec is empty" });
  });

  it("answers 400 Failed to parse job for broken HCL", async () => {
    const res = await t.http("POST", "/v1/jobs/parse", { JobHCL: 'job "x" {' });
    expect(res.status).toBe(400);
    expect(res.text).toMatch(/^Failed to parse job: /);
  });

  it("answers 400 Job must be specified to a register without a job", async () => {
    const res = await t.http("POST", "/v1/jobs", { Submission: null });
    expect(res).toMatchObject({ status: 400, text: "Job must be specified" });
  });

  it("registers a parameterized job without an evaluation", async () => {
    const res = await t.http("POST", "/v1/jobs", { Job: builderJob(t.jobId("reg")) });
    expect(res.status).toBe(200);
    expect(JSON.parse(res.text)).toMatchObject({ EvalID: "", EvalCreateIndex: 0 });
    const job = JSON.parse((await t.http("GET", `/v1/job/${t.jobId("reg")}`)).text);
    expect(job).toMatchObject({ Status: "running", ParameterizedJob: { Payload: "optional" } });
  });
});

describe.skipIf(realNomad)("fake-only behaviour", () => {
  it("answers 403 Permission denied when ACLs are on and the token is wrong", async () => {
    const fake = await startNomadFake({ aclToken: "s3cret" });
    try {
      const res = await fetch(`${fake.url}/v1/job/builder`, { headers: { "X-Nomad-Token": "wrong" } });
      expect(res.status).toBe(403);
      expect(await res.text()).toBe("Permission denied");
      const bearer = await fetch(`${fake.url}/v1/job/builder`, { headers: { Authorization: "Bearer s3cret" } });
      expect(bearer.status).toBe(404);
    } finally {
      await fake.close();
    }
  });

  it("lets two concurrent identical dispatches both create children when the race is emulated", async () => {
    const fake = await startNomadFake({ dispatchRace: true });
    try {
      fake.registerJob({ ID: "builder", Type: "batch", ParameterizedJob: {}, TaskGroups: [] });
      const send = () => fetch(`${fake.url}/v1/job/builder/dispatch?idempotency_token=same`, { method: "POST", body: "{}" });
      const answers = await Promise.all([send(), send()]);
      expect(answers.map((a) => a.status)).toEqual([200, 200]);
      expect(fake.children("builder")).toHaveLength(2);
    } finally {
      await fake.close();
    }
  });

  it("answers a failNext rule before routing, then goes back to normal", async () => {
    const fake = await startNomadFake();
    try {
      fake.failNext(1, 503, "No cluster leader", { path: /^\/v1\/status\// });
      const failed = await fetch(`${fake.url}/v1/status/leader`);
      expect([failed.status, await failed.text()]).toEqual([503, "No cluster leader"]);
      expect((await fetch(`${fake.url}/v1/status/leader`)).status).toBe(200);
    } finally {
      await fake.close();
    }
  });
});
