import { pino } from "pino";
import { Agent } from "undici";
import { afterAll, afterEach, beforeEach, describe, expect, it } from "vitest";
import { UpstreamError } from "../../src/errors.js";
import { createNomadClient, isPermanentDispatchError, type NomadClient } from "../../src/nomad/client.js";
import { type NomadFake, startNomadFake } from "../fakes/nomad.js";
import { rejection } from "../helpers/rejection.js";

// Retry policy, retry budget, outages and single-flight: these need the fake's failure hooks, so they never
// run against a real Nomad.

const META = { REPO_URL: "https://git.example.test/acme/widgets", COMMIT: "4c1d7e0", BRANCH: "main", FLAVOR: "default" };
const SLACK_MS = 400;

const dispatcher = new Agent();
let fake: NomadFake;

beforeEach(async () => {
  fake = await startNomadFake();
  fake.registerJob({
    ID: "builder",
    Type: "batch",
    ParameterizedJob: { Payload: "optional", MetaRequired: ["REPO_URL", "COMMIT", "BRANCH", "FLAVOR"] },
    TaskGroups: [{ Name: "runner", Tasks: [{ Name: "executor", Driver: "raw_exec" }] }],
  });
});
afterEach(() => fake.close());
afterAll(() => dispatcher.close());

function client(retryBudgetMs?: number, addr = fake.url): NomadClient {
  return createNomadClient({ addr, dispatcher, ...(retryBudgetMs === undefined ? {} : { retryBudgetMs }) });
}

const dispatches = () => fake.requests.filter((r) => r.path.endsWith("/dispatch")).length;

describe("dispatch retries", () => {
  it("retries a 500 that is not a validation error, then succeeds", async () => {
    fake.failNext(1, 500, "rpc error: EOF", { path: /dispatch$/ });
    const res = await client().dispatch("builder", { meta: META, idempotencyToken: "a" });
    expect(res.duplicate).toBe(false);
    expect(dispatches()).toBe(2);
    expect(fake.children("builder")).toHaveLength(1);
  });

  it("retries 503s and 429s until Nomad answers", async () => {
    fake.failNext(2, 503, "No cluster leader", { path: /dispatch$/ });
    fake.failNext(1, 429, "Too Many Requests", { path: /dispatch$/ });
    await client().dispatch("builder", { meta: META, idempotencyToken: "a" });
    expect(dispatches()).toBe(4);
  });

  it.each([
    "parameterized job not found",
    'Specified job "builder" is not a parameterized job',
    'Specified job "builder" is stopped',
    "Payload is not provided but required by parameterized job",
    "Payload provided but forbidden by parameterized job",
    "Payload exceeds maximum size; 20000 > 16384",
    "Dispatch request included unpermitted metadata keys: [NOPE]",
    "Dispatch did not provide required meta keys: [BRANCH]",
    "dispatch job priority must be between [1, 100]",
  ])("fails at once on the permanent 500 %j", async (text) => {
    fake.failNext(5, 500, text, { path: /dispatch$/ });
    const err = await rejection(client().dispatch("builder", { meta: META, idempotencyToken: "a" }));
    expect(err).toBeInstanceOf(UpstreamError);
    expect(err).toMatchObject({ upstreamStatus: 500, upstreamBody: text });
    expect(isPermanentDispatchError(err as UpstreamError)).toBe(true);
    expect(dispatches()).toBe(1);
  });

  it("fails at once on a real validation error from the fake", async () => {
    const err = await rejection(client().dispatch("builder", { meta: { REPO_URL: "x" }, idempotencyToken: "a" }));
    expect(err).toMatchObject({ upstreamBody: "Dispatch did not provide required meta keys: [COMMIT BRANCH FLAVOR]" });
    expect(dispatches()).toBe(1);
  });

  it.each([400, 403, 404, 409])("never retries a %i", async (status) => {
    fake.failNext(5, status, "nope", { path: /dispatch$/ });
    const err = await rejection(client().dispatch("builder", { meta: META, idempotencyToken: "a" }));
    expect(err).toMatchObject({ upstreamStatus: status, unavailable: false, code: "upstream_error" });
    expect(dispatches()).toBe(1);
  });
});

describe("retry budget", () => {
  it("gives up within the budget when Nomad keeps answering 503, after several attempts", async () => {
    fake.failNext(1000, 503, "No cluster leader");
    const started = performance.now();
    const err = await rejection(client(1000).dispatch("builder", { meta: META, idempotencyToken: "a" }));
    const elapsed = performance.now() - started;
    expect(err).toMatchObject({ upstreamStatus: 503, code: "nomad_unavailable", status: 503 });
    expect(elapsed).toBeLessThan(1000 + SLACK_MS);
    expect(dispatches()).toBeGreaterThan(1);
  });

  it("keeps the default budget of 3.5 s, inside Gitea's 5 s delivery timeout", async () => {
    fake.failNext(1000, 503, "No cluster leader");
    const started = performance.now();
    await rejection(client().dispatch("builder", { meta: META, idempotencyToken: "a" }));
    const elapsed = performance.now() - started;
    expect(elapsed).toBeLessThan(3500 + SLACK_MS);
    expect(elapsed).toBeGreaterThan(1500);
    expect(dispatches()).toBeGreaterThan(3);
  });

  it("does not start an attempt that the slowest one so far says cannot finish in time", async () => {
    fake.setLatency(400);
    fake.failNext(1000, 503, "No cluster leader");
    const started = performance.now();
    await rejection(client(1000).dispatch("builder", { meta: META, idempotencyToken: "a" }));
    // 0–400 ms fails, 100 ms back-off, 500–900 ms fails; a third attempt would end past 1000 ms.
    expect(dispatches()).toBe(2);
    expect(performance.now() - started).toBeLessThan(1000 + SLACK_MS);
  });

  it("cuts an attempt that hangs at the end of the budget", async () => {
    fake.setLatency(5000);
    const started = performance.now();
    const err = await rejection(client(500).dispatch("builder", { meta: META, idempotencyToken: "a" }));
    expect(performance.now() - started).toBeLessThan(500 + SLACK_MS);
    expect(err).toMatchObject({ upstreamStatus: 0, code: "nomad_unavailable" });
    expect((err as Error).message).toContain("no answer within 500 ms");
  });

  it("stops retrying as soon as the caller aborts", async () => {
    fake.failNext(1000, 503, "No cluster leader", { path: /\/dispatch$/ });
    const controller = new AbortController();
    setTimeout(() => controller.abort(new Error("shutting down")), 250);
    // The client announces each retry with its delay: the test waits out the last one it announced.
    const delays: number[] = [];
    const log = pino({ level: "warn" }, { write: (line: string) => void delays.push(JSON.parse(line).delayMs) });
    const c = createNomadClient({ addr: fake.url, dispatcher, retryBudgetMs: 3000, log });
    const started = performance.now();
    const err = await rejection(c.dispatch("builder", { meta: META, idempotencyToken: "a" }, { signal: controller.signal }));
    expect((err as Error).message).toBe("shutting down");
    expect(performance.now() - started).toBeLessThan(250 + SLACK_MS);
    const attempts = dispatches();
    expect(delays.length).toBeGreaterThan(0);
    // A retry that survived the abort would have been sent by now (its timer was set before this one), and a
    // round trip through the same connection pool comes after it.
    await new Promise((r) => setTimeout(r, delays.at(-1)));
    await c.readJob("builder");
    expect(dispatches()).toBe(attempts);
  });
});

describe("Nomad down", () => {
  it("reports a refused connection as status 0, nomad_unavailable", async () => {
    const gone = await startNomadFake();
    const addr = gone.url;
    await gone.close();
    const err = await rejection(client(300, addr).dispatch("builder", { meta: META, idempotencyToken: "a" }));
    expect(err).toBeInstanceOf(UpstreamError);
    expect(err).toMatchObject({ upstreamStatus: 0, unavailable: true, code: "nomad_unavailable", status: 503 });
    expect((err as Error).message).toMatch(/ECONNREFUSED/);
  });

  it("retries through dropped connections and dispatches once Nomad is back", async () => {
    fake.setDown(true);
    setTimeout(() => fake.setDown(false), 300);
    const res = await client(3000).dispatch("builder", { meta: META, idempotencyToken: "a" });
    expect(res.duplicate).toBe(false);
    expect(fake.children("builder")).toEqual([res.id]);
  });

  it("logs each retry without the token, the meta or the payload", async () => {
    const lines: string[] = [];
    const log = pino({ level: "debug" }, { write: (line: string) => lines.push(line) });
    const nomad = createNomadClient({ addr: fake.url, dispatcher, token: "tok-s3cret", log });
    fake.failNext(2, 503, "No cluster leader", { path: /dispatch$/ });
    await nomad.dispatch("builder", { meta: META, payload: Buffer.from("deploy-key-s3cret"), idempotencyToken: "a" });
    expect(lines).toHaveLength(2);
    expect(JSON.parse(lines[0] ?? "{}")).toMatchObject({ action: "dispatch", attempt: 1, status: 503 });
    const all = lines.join("\n");
    for (const secret of ["tok-s3cret", "deploy-key-s3cret", Buffer.from("deploy-key-s3cret").toString("base64"), META.REPO_URL]) {
      expect(all).not.toContain(secret);
    }
  });

  it("retries reads on 5xx too", async () => {
    fake.failNext(1, 500, "No cluster leader", { method: "GET" });
    expect(await client().readJob("builder")).toMatchObject({ job: { ID: "builder" } });
  });
});

describe("single-flight and shared reads", () => {
  it("does not share dispatches itself: two concurrent identical dispatches make the racy Nomad create two children (the backend shares them)", async () => {
    fake.setDispatchRace(true);
    await Promise.all([
      client().dispatch("builder", { meta: META, idempotencyToken: "same" }),
      client().dispatch("builder", { meta: META, idempotencyToken: "same" }),
    ]);
    expect(fake.children("builder")).toHaveLength(2);
  });

  it("sends different tokens separately", async () => {
    const nomad = client();
    const [a, b] = await Promise.all([
      nomad.dispatch("builder", { meta: META, idempotencyToken: "one" }),
      nomad.dispatch("builder", { meta: META, idempotencyToken: "two" }),
    ]);
    expect(a.id).not.toBe(b.id);
    expect(dispatches()).toBe(2);
  });

  it("asks Nomad again once the shared request has settled", async () => {
    const nomad = client();
    const first = await nomad.dispatch("builder", { meta: META, idempotencyToken: "same" });
    const again = await nomad.dispatch("builder", { meta: META, idempotencyToken: "same" });
    expect(again).toEqual({ id: first.id, evalId: "", duplicate: true });
    expect(dispatches()).toBe(2);
  });

  it("shares a builder's parameterized read too, and one caller's abort leaves the others their answer", async () => {
    fake.setLatency(200);
    const nomad = client();
    const controller = new AbortController();
    const quitter = nomad.parameterized("builder", { signal: controller.signal });
    const stayer = nomad.parameterized("builder");
    controller.abort(new Error("gone"));
    await expect(quitter).rejects.toThrow("gone");
    await expect(stayer).resolves.toMatchObject({ payload: "optional", metaRequired: ["REPO_URL", "COMMIT", "BRANCH", "FLAVOR"] });
    expect(fake.requests.filter((r) => r.path === "/v1/job/builder")).toHaveLength(1);
  });
});
