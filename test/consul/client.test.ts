import { randomUUID } from "node:crypto";
import { Agent, request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ConsulClient } from "../../src/consul/client.js";
import { createConsulClient } from "../../src/consul/client.js";
import { AppError, UpstreamError } from "../../src/errors.js";
import type { ConsulFake } from "../fakes/consul.js";
import { startConsulFake } from "../fakes/consul.js";

// Contract tests: against the fake by default, against a real agent when CONSUL_HTTP_ADDR is set
// (with CONSUL_HTTP_TOKEN if ACLs are on). Fake-only cases use test-control hooks and are skipped then.
const realAddr = process.env.CONSUL_HTTP_ADDR ?? "";
const real = realAddr !== "";
const fakeOnly = real ? it.skip : it;

let fake: ConsulFake | undefined;
let addr: string;
let token: string | undefined;
let agent: Agent;
let consul: ConsulClient;
const prefix = real ? `petrel-test-${randomUUID()}` : "t";

function client(extra: Partial<Parameters<typeof createConsulClient>[0]> = {}): ConsulClient {
  return createConsulClient({ addr, dispatcher: agent, ...(token === undefined ? {} : { token }), ...extra });
}

async function raw(path: string): Promise<{ status: number; body: string; bytes: Buffer; index: string | undefined }> {
  const res = await request(`${addr}${path}`, {
    dispatcher: agent,
    ...(token === undefined ? {} : { headers: { "x-consul-token": token } }),
  });
  const index = res.headers["x-consul-index"];
  const bytes = Buffer.from(await res.body.arrayBuffer());
  return { status: res.statusCode, body: bytes.toString("utf8"), bytes, index: Array.isArray(index) ? index[0] : index };
}

function fakeOf(): ConsulFake {
  if (fake === undefined) throw new Error("fake-only test ran against a real Consul");
  return fake;
}

beforeAll(async () => {
  agent = new Agent();
  if (real) {
    addr = /^https?:\/\//.test(realAddr) ? realAddr : `http://${realAddr}`;
    token = process.env.CONSUL_HTTP_TOKEN || undefined;
  } else {
    fake = await startConsulFake();
    addr = fake.url;
  }
  consul = client();
});

afterAll(async () => {
  await consul.delete(`${prefix}/`, { recurse: true }).catch(() => undefined);
  await fake?.close();
  await agent.close();
});

describe("Consul KV client (contract)", () => {
  it("returns null entries and still an index when the key does not exist", async () => {
    const res = await consul.get(`${prefix}/missing/key`);
    expect(res.entries).toBeNull();
    expect(res.index).toBeGreaterThan(0n);
  });

  it("stores the raw bytes of a PUT and decodes base64 values to the same bytes", async () => {
    const bytes = Buffer.from([0x00, 0xff, 0xfe, 0x41, 0x0a, 0x80]);
    expect(await consul.put(`${prefix}/bin`, bytes)).toBe(true);
    const stored = await raw(`/v1/kv/${prefix}/bin?raw`);
    expect(stored.bytes.equals(bytes)).toBe(true);
    const res = await consul.get(`${prefix}/bin`);
    expect(res.entries).toHaveLength(1);
    expect(res.entries?.[0]?.value?.equals(bytes)).toBe(true);
    expect(res.entries?.[0]?.key).toBe(`${prefix}/bin`);
    expect(typeof res.entries?.[0]?.modifyIndex).toBe("bigint");
  });

  it("does not base64-encode string values on write", async () => {
    await consul.put(`${prefix}/text`, '{"hook":{"secret":"s"}}');
    const stored = await raw(`/v1/kv/${prefix}/text?raw`);
    expect(stored.status).toBe(200);
    expect(stored.body).toBe('{"hook":{"secret":"s"}}');
  });

  it("lists a prefix with recurse, sorted, with the highest ModifyIndex as the index", async () => {
    await consul.put(`${prefix}/list/b`, "2");
    await consul.put(`${prefix}/list/a`, "1");
    const res = await consul.get(`${prefix}/list/`, { recurse: true });
    expect(res.entries?.map((e) => [e.key, e.value?.toString()])).toEqual([
      [`${prefix}/list/a`, "1"],
      [`${prefix}/list/b`, "2"],
    ]);
    // biome-ignore lint/complexity/useMathMinMax: the indexes are bigints, which Math.max does not take.
    const max = res.entries?.reduce((m, e) => (e.modifyIndex > m ? e.modifyIndex : m), 0n);
    expect(res.index).toBe(max);
  });

  it("treats an empty prefix as not found", async () => {
    const res = await consul.get(`${prefix}/nothing-here/`, { recurse: true });
    expect(res.entries).toBeNull();
    expect(res.index).toBeGreaterThan(0n);
  });

  it("creates only when absent with cas=0 and reports a lost race as false", async () => {
    expect(await consul.put(`${prefix}/cas`, "first", { cas: 0n })).toBe(true);
    expect(await consul.put(`${prefix}/cas`, "second", { cas: 0n })).toBe(false);
    const current = (await consul.get(`${prefix}/cas`)).entries?.[0];
    expect(current?.value?.toString()).toBe("first");
    expect(await consul.put(`${prefix}/cas`, "stale", { cas: (current?.modifyIndex ?? 0n) + 1000n })).toBe(false);
    expect(await consul.put(`${prefix}/cas`, "third", { cas: current?.modifyIndex ?? 0n })).toBe(true);
    expect((await consul.get(`${prefix}/cas`)).entries?.[0]?.value?.toString()).toBe("third");
  });

  it("deletes with cas only when ModifyIndex matches, and never with cas=0", async () => {
    await consul.put(`${prefix}/del`, "x");
    const entry = (await consul.get(`${prefix}/del`)).entries?.[0];
    expect(await consul.delete(`${prefix}/del`, { cas: 0n })).toBe(false);
    expect(await consul.delete(`${prefix}/del`, { cas: (entry?.modifyIndex ?? 0n) + 1000n })).toBe(false);
    expect((await consul.get(`${prefix}/del`)).entries).not.toBeNull();
    expect(await consul.delete(`${prefix}/del`, { cas: entry?.modifyIndex ?? 0n })).toBe(true);
    expect((await consul.get(`${prefix}/del`)).entries).toBeNull();
  });

  it("deletes a whole prefix with recurse", async () => {
    await consul.put(`${prefix}/tree/a`, "1");
    await consul.put(`${prefix}/tree/b/c`, "2");
    expect(await consul.delete(`${prefix}/tree/`, { recurse: true })).toBe(true);
    expect((await consul.get(`${prefix}/tree/`, { recurse: true })).entries).toBeNull();
  });

  it("holds a blocking read until the key changes, then answers with the new value", async () => {
    await consul.put(`${prefix}/block`, "old");
    const { index } = await consul.get(`${prefix}/block`);
    const started = Date.now();
    const pending = consul.get(`${prefix}/block`, { index, wait: "10s" });
    // The fake shows the read is held; a real Consul answers a read that arrives after the put at once, with the
    // same outcome.
    if (fake) await fake.waitForWaiting(1);
    await consul.put(`${prefix}/block`, "new");
    const res = await pending;
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(res.entries?.[0]?.value?.toString()).toBe("new");
    expect(res.index).toBeGreaterThan(index);
  });

  it("answers a blocking read after the wait when nothing changed, with the same index", async () => {
    await consul.put(`${prefix}/quiet`, "same");
    const { index } = await consul.get(`${prefix}/quiet`);
    const started = Date.now();
    const res = await consul.get(`${prefix}/quiet`, { index, wait: "1s" });
    expect(Date.now() - started).toBeGreaterThanOrEqual(900);
    expect(res.index).toBe(index);
  });

  it("answers 400 Invalid wait time for a wait that is not a Go duration", async () => {
    const res = await raw(`/v1/kv/${prefix}/quiet?index=1&wait=300`);
    expect(res.status).toBe(400);
    expect(res.body).toContain("Invalid wait time");
  });

  it("answers 400 Invalid index for an index that is not an integer", async () => {
    const res = await raw(`/v1/kv/${prefix}/quiet?index=abc`);
    expect(res.status).toBe(400);
    expect(res.body).toContain("Invalid index");
  });

  it("sends X-Consul-Index with an empty 404", async () => {
    const res = await raw(`/v1/kv/${prefix}/absent`);
    expect(res.status).toBe(404);
    expect(res.body).toBe("");
    expect(res.index).toMatch(/^\d+$/);
  });

  it("rejects a value over 512 KiB with a clear 413 error", async () => {
    const err = await consul.put(`${prefix}/big`, Buffer.alloc(512 * 1024 + 1, 0x61)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UpstreamError);
    expect((err as UpstreamError).upstreamStatus).toBe(413);
    expect((err as UpstreamError).message).toContain("kv_max_value_size");
  });

  it("reports the leader as host:port", async () => {
    expect(await consul.leader()).toMatch(/^[\w.:[\]-]+:\d+$/);
  });
});

describe("Consul KV client (behaviour)", () => {
  it("turns a refused connection into an unavailable UpstreamError with status 0", async () => {
    const dead = createConsulClient({ addr: "http://127.0.0.1:1", dispatcher: agent, retry: { retries: 0 } });
    const err = await dead.get("x").catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UpstreamError);
    expect(err).toMatchObject({ service: "consul", upstreamStatus: 0, code: "consul_unavailable", status: 503 });
  });

  it("refuses dot segments that URL parsing would resolve to another key", async () => {
    await expect(consul.get(`${prefix}/../escape`)).rejects.toBeInstanceOf(AppError);
    await expect(consul.put(`${prefix}/./x`, "v")).rejects.toBeInstanceOf(AppError);
  });

  fakeOnly("encodes each key segment so %, ? and spaces stay part of the key", async () => {
    await consul.put("t/a b/c?d%e#f", "v");
    expect(fakeOf().entry("t/a b/c?d%e#f")?.value?.toString()).toBe("v");
    expect((await consul.get("t/a b/c?d%e#f")).entries?.[0]?.key).toBe("t/a b/c?d%e#f");
  });

  fakeOnly("sends the token as X-Consul-Token and never in the query", async () => {
    const f = fakeOf();
    const withToken = createConsulClient({ addr, dispatcher: agent, token: "tok-123" });
    const before = f.requests.length;
    await withToken.get("t/anything");
    const sent = f.requests.slice(before);
    expect(sent).toHaveLength(1);
    expect(sent[0]?.token).toBe("tok-123");
    expect(sent[0]?.query.token).toBeUndefined();
  });

  fakeOnly("sends the datacenter as dc", async () => {
    const f = fakeOf();
    const before = f.requests.length;
    await createConsulClient({ addr, dispatcher: agent, datacenter: "dc1" }).get("t/x");
    expect(f.requests[before]?.query.dc).toBe("dc1");
    const retry = { retries: 0 };
    await expect(createConsulClient({ addr, dispatcher: agent, datacenter: "dc2", retry }).get("t/x")).rejects.toThrow(
      /No path to datacenter/,
    );
  });

  fakeOnly("keeps uint64 indexes and flags exact beyond 2^53", async () => {
    const big = await startConsulFake({ initialIndex: 2n ** 62n });
    try {
      const flags = 2n ** 64n - 1n;
      const modifyIndex = big.set("k", "v", flags);
      const res = await createConsulClient({ addr: big.url, dispatcher: agent }).get("k");
      expect(res.entries?.[0]?.flags).toBe(flags);
      expect(res.entries?.[0]?.modifyIndex).toBe(modifyIndex);
      expect(res.index).toBe(modifyIndex);
    } finally {
      await big.close();
    }
  });

  fakeOnly("retries a read after a 500 and succeeds", async () => {
    const f = fakeOf();
    f.set("t/retry", "ok");
    f.failNext(500, "rpc error: No cluster leader", 1);
    const before = f.requests.length;
    const res = await createConsulClient({ addr, dispatcher: agent, retry: { retries: 2, minTimeoutMs: 10 } }).get("t/retry");
    expect(res.entries?.[0]?.value?.toString()).toBe("ok");
    expect(f.requests.length - before).toBe(2);
  });

  fakeOnly("never retries a 4xx answer", async () => {
    const f = fakeOf();
    f.failNext(400, "Bad request", 3);
    const before = f.requests.length;
    const err = await createConsulClient({ addr, dispatcher: agent, retry: { retries: 2, minTimeoutMs: 10 } })
      .get("t/x")
      .catch((e: unknown) => e);
    expect(err).toMatchObject({ upstreamStatus: 400, code: "upstream_error" });
    expect(f.requests.length - before).toBe(1);
    f.failNext(200, "", 0);
  });

  fakeOnly("never retries a CAS write, whose first answer may have been lost", async () => {
    const f = fakeOf();
    f.failNext(503, "unavailable", 1);
    const before = f.requests.length;
    const err = await createConsulClient({ addr, dispatcher: agent, retry: { retries: 2, minTimeoutMs: 10 } })
      .put("t/cas-retry", "v", { cas: 0n })
      .catch((e: unknown) => e);
    expect(err).toMatchObject({ upstreamStatus: 503, code: "consul_unavailable" });
    expect(f.requests.length - before).toBe(1);
  });

  fakeOnly("reports a cluster without leader as an error", async () => {
    const f = fakeOf();
    f.setLeader("");
    try {
      await expect(consul.leader()).rejects.toThrow(/no cluster leader/);
    } finally {
      f.setLeader("127.0.0.1:8300");
    }
  });
});

describe("Consul KV client with ACLs", () => {
  let aclFake: ConsulFake;
  beforeAll(async () => {
    aclFake = await startConsulFake({
      acl: { tokens: { reader: { read: ["petrel/"], accessorId: "acc-1" } } },
    });
  });
  afterAll(() => aclFake.close());

  fakeOnly("says the token is unknown when Consul answers ACL not found", async () => {
    const c = createConsulClient({ addr: aclFake.url, dispatcher: agent, token: "nope" });
    const err = await c.get("petrel/repos/x").catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UpstreamError);
    expect(err).toMatchObject({ upstreamStatus: 403, upstreamBody: "ACL not found", unavailable: false });
    expect((err as Error).message).toMatch(/unknown, expired or deleted/);
    expect((err as Error).message).not.toContain("nope");
  });

  fakeOnly("says the policy lacks the right when Consul answers Permission denied", async () => {
    const c = createConsulClient({ addr: aclFake.url, dispatcher: agent, token: "reader" });
    expect((await c.get("petrel/repos/x")).entries).toBeNull();
    const err = await c.put("petrel/repos/x", "{}").catch((e: unknown) => e);
    expect(err).toMatchObject({ upstreamStatus: 403 });
    expect((err as UpstreamError).upstreamBody).toMatch(/^Permission denied: token with AccessorID 'acc-1' lacks permission 'key:write'/);
    expect((err as Error).message).toMatch(/policy does not grant/);
  });

  fakeOnly("uses the anonymous token when none is sent", async () => {
    const c = createConsulClient({ addr: aclFake.url, dispatcher: agent });
    const err = await c.get("petrel/repos/x").catch((e: unknown) => e);
    expect((err as UpstreamError).upstreamBody).toMatch(/anonymous token lacks permission 'key:read'/);
  });
});
