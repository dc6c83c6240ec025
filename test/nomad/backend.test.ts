import { Agent } from "undici";
import { afterAll, afterEach, beforeEach, describe, expect, it } from "vitest";
import { createNomadBackend, dispatchRefusal } from "../../src/nomad/backend.js";
import { createNomadClient } from "../../src/nomad/client.js";
import { type NomadFake, startNomadFake } from "../fakes/nomad.js";
import { rejection } from "../helpers/rejection.js";

const META = { REPO_URL: "https://git.example.test/acme/widgets", COMMIT: "4c1d7e0", BRANCH: "main", FLAVOR: "default" };
const REQUIRED = ["REPO_URL", "COMMIT", "BRANCH", "FLAVOR"];

const dispatcher = new Agent();
let fake: NomadFake;

beforeEach(async () => {
  fake = await startNomadFake();
  for (const [id, payload] of [
    ["builder", "optional"],
    ["needs-payload", "required"],
    ["no-payload", "forbidden"],
  ] as const) {
    fake.registerJob({
      ID: id,
      Type: "batch",
      ParameterizedJob: { Payload: payload, MetaRequired: REQUIRED, MetaOptional: ["PR"] },
      TaskGroups: [{ Name: "runner", Tasks: [{ Name: "executor", Driver: "raw_exec" }] }],
    });
  }
});
afterEach(() => fake.close());
afterAll(() => dispatcher.close());

const backend = () => createNomadBackend({ nomad: createNomadClient({ addr: fake.url, dispatcher }) });
const dispatches = () => fake.requests.filter((r) => r.path.endsWith("/dispatch")).length;

describe("single flight", () => {
  it("shares one request between concurrent identical dispatches, so a racy Nomad creates one child", async () => {
    fake.setDispatchRace(true);
    const b = backend();
    const [first, second, third] = await Promise.all([
      b.dispatch({ builder: "builder", meta: META, idempotencyToken: "same" }),
      b.dispatch({ builder: "builder", meta: META, idempotencyToken: "same" }),
      b.dispatch({ builder: "builder", meta: META, idempotencyToken: "same" }),
    ]);
    expect(first).toEqual({ id: first.id, duplicate: false });
    expect(second).toEqual({ id: first.id, duplicate: true });
    expect(third).toEqual({ id: first.id, duplicate: true });
    expect(dispatches()).toBe(1);
    expect(fake.children("builder")).toEqual([first.id]);
  });

  it("keeps the shared request alive for the callers that did not abort", async () => {
    fake.setLatency(200);
    const b = backend();
    const controller = new AbortController();
    const quitter = b.dispatch({ builder: "builder", meta: META, idempotencyToken: "same" }, controller.signal);
    const stayer = b.dispatch({ builder: "builder", meta: META, idempotencyToken: "same" });
    controller.abort(new Error("gone"));
    await expect(quitter).rejects.toThrow("gone");
    const res = await stayer;
    expect(fake.children("builder")).toEqual([res.id]);
  });
});

describe("refusals checked against the builder's parameterized block", () => {
  it.each([
    ["needs-payload", META, undefined, /requires a payload/],
    ["no-payload", META, { secrets: {} }, /forbids a payload/],
    ["builder", { ...META, NOPE: "x" }, undefined, /does not declare the meta keys NOPE/],
    ["builder", { REPO_URL: "x", COMMIT: "y" }, undefined, /requires the meta keys BRANCH, FLAVOR/],
  ] as const)("answers 502 upstream_error for %s without sending the dispatch", async (builder, meta, payload, message) => {
    const err = await rejection(
      backend().dispatch({ builder, meta, idempotencyToken: "t", ...(payload === undefined ? {} : { payload }) }),
    );
    expect(err).toMatchObject({ code: "upstream_error", status: 502 });
    expect((err as Error).message).toMatch(message);
    expect(dispatches()).toBe(0);
  });

  it("keeps Nomad's own refusal for what cannot be checked up front", async () => {
    fake.failNext(1, 500, "dispatch job priority must be between [1, 100]", { path: /dispatch$/ });
    const err = await rejection(backend().dispatch({ builder: "builder", meta: META, idempotencyToken: "t" }));
    expect(err).toMatchObject({ code: "upstream_error", status: 502 });
    expect((err as Error).message).toContain("priority must be between");
    expect(dispatches()).toBe(1);
  });

  it("accepts what the block declares, optional keys included", () => {
    const params = { payload: "optional" as const, metaRequired: REQUIRED, metaOptional: ["PR"] };
    expect(dispatchRefusal(params, { ...META, PR: "7" }, 10)).toBeUndefined();
    expect(dispatchRefusal(params, META, undefined)).toBeUndefined();
  });
});
