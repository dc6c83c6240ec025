import { Agent } from "undici";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { ConsulClient, KvEntry, WatchOptions } from "../../src/consul/client.js";
import { createConsulClient } from "../../src/consul/client.js";
import type { ConsulFake } from "../fakes/consul.js";
import { startConsulFake } from "../fakes/consul.js";

let fake: ConsulFake;
let agent: Agent;
let consul: ConsulClient;
let controller: AbortController;
let running: Promise<void> | undefined;

beforeEach(async () => {
  fake = await startConsulFake();
  agent = new Agent();
  consul = createConsulClient({ addr: fake.url, dispatcher: agent });
  controller = new AbortController();
  running = undefined;
});

afterEach(async () => {
  controller.abort();
  await running;
  await fake.close();
  await agent.close();
});

async function until(check: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 5));
  }
}

function startWatch(key: string, extra: Partial<WatchOptions> = {}): { changes: Array<KvEntry[] | null>; errors: unknown[] } {
  const changes: Array<KvEntry[] | null> = [];
  const errors: unknown[] = [];
  running = consul.watch(key, {
    recurse: true,
    wait: "5s",
    signal: controller.signal,
    minIntervalMs: 0,
    onChange: (entries) => void changes.push(entries),
    onError: (err) => void errors.push(err),
    backoff: { minMs: 20, maxMs: 50 },
    ...extra,
  });
  return { changes, errors };
}

const values = (entries: KvEntry[] | null | undefined): string[] | null =>
  entries == null ? null : entries.map((e) => `${e.key}=${e.value?.toString() ?? ""}`);

describe("consul watch loop", () => {
  it("emits the first answer, even when the prefix is empty, then each change", async () => {
    const { changes } = startWatch("p/");
    await fake.waitForWaiting(1);
    expect(changes).toEqual([null]);
    fake.set("p/a", "1");
    await until(() => changes.length === 2);
    expect(values(changes[1])).toEqual(["p/a=1"]);
  });

  it("does not emit when a write leaves the content unchanged", async () => {
    fake.set("p/a", "1");
    const { changes } = startWatch("p/");
    await fake.waitForWaiting(1);
    const before = fake.requests.length;
    fake.set("p/a", "1");
    await until(() => fake.requests.length > before && fake.waiting() === 1);
    fake.set("p/a", "2");
    await until(() => changes.length === 2);
    expect(changes.map(values)).toEqual([["p/a=1"], ["p/a=2"]]);
  });

  it("blocks with the last index it was given", async () => {
    fake.set("p/a", "1");
    startWatch("p/");
    await fake.waitForWaiting(1);
    const blocking = fake.requests.at(-1);
    expect(blocking?.query).toMatchObject({ index: fake.index().toString(), wait: "5s", recurse: "true" });
    expect(fake.requests[0]?.query.index).toBeUndefined();
  });

  it("starts over with a plain read when the index goes backwards, and still sees later updates", async () => {
    for (let i = 0; i < 5; i++) fake.set(`p/k${i}`, "v");
    const { changes } = startWatch("p/");
    await fake.waitForWaiting(1);
    const highIndex = fake.index();
    // The held blocking read is the last request recorded so far.
    const before = fake.requests.length - 1;
    fake.restore(3n);
    await fake.waitForWaiting(1);
    const after = fake.requests.slice(before).map((r) => r.query.index);
    // The blocking read that saw index 3 < highIndex is followed by a read without index, then a wait on 3.
    expect(after).toEqual([highIndex.toString(), undefined, "3"]);
    fake.set("p/new", "x");
    await until(() => changes.some((c) => values(c)?.includes("p/new=x") ?? false));
  });

  it("never sends index 0, even when the server answers with index 0", async () => {
    fake.overrideIndex(0n);
    startWatch("p/");
    await fake.waitForWaiting(1);
    // The server now reports 5: the held wait on 1 returns, and the loop blocks on 5.
    fake.overrideIndex(5n);
    await until(() => fake.requests.length === 3);
    await fake.waitForWaiting(1);
    expect(fake.requests.map((r) => r.query.index)).toEqual([undefined, "1", "5"]);
  });

  it("keeps the request rate bounded when every answer comes back at once", async () => {
    fake.setBlocking(false);
    fake.set("p/a", "1");
    const started = performance.now();
    startWatch("p/", { minIntervalMs: 100, burst: 2 });
    // Burst of 2, then one request per 100 ms: the 8th cannot leave before 600 ms, where an unlimited loop
    // sends thousands a second. Timed by what was sent, not counted inside a window.
    await until(() => fake.requests.length >= 8, 5_000);
    expect(performance.now() - started).toBeGreaterThanOrEqual(590);
  });

  it("backs off on errors, reports them, and recovers when Consul returns", async () => {
    fake.set("p/a", "1");
    const successes: bigint[] = [];
    const failures: { attempt: number; retryInMs: number; at: number }[] = [];
    const { changes } = startWatch("p/", {
      onSuccess: (i) => void successes.push(i),
      onError: (_err, d) => void failures.push({ ...d, at: performance.now() }),
    });
    await fake.waitForWaiting(1);
    await fake.setDown(true);
    await until(() => failures.length >= 4);
    // Backoff of 20..50 ms: each wait is half to all of a doubling ceiling, and the next attempt waits it out.
    expect(failures.slice(0, 4).map((f) => f.attempt)).toEqual([1, 2, 3, 4]);
    for (const [i, f] of failures.slice(0, 4).entries()) {
      const ceiling = Math.min(50, 20 * 2 ** i);
      expect(f.retryInMs).toBeGreaterThanOrEqual(ceiling / 2);
      expect(f.retryInMs).toBeLessThanOrEqual(ceiling);
      const next = failures[i + 1];
      if (next) expect(next.at - f.at).toBeGreaterThanOrEqual(f.retryInMs - 1);
    }
    const okBefore = successes.length;
    fake.set("p/a", "2");
    await fake.setDown(false);
    await until(() => changes.length === 2);
    expect(values(changes[1])).toEqual(["p/a=2"]);
    expect(successes.length).toBeGreaterThan(okBefore);
  });

  it("confirms a recovery at once instead of waiting out a blocking query", async () => {
    const successes: number[] = [];
    const { errors } = startWatch("p/", { wait: "5m", onSuccess: () => void successes.push(Date.now()) });
    await fake.waitForWaiting(1);
    await fake.setDown(true);
    await until(() => errors.length >= 1);
    const before = successes.length;
    await fake.setDown(false);
    const back = Date.now();
    await until(() => successes.length > before, 2_000);
    expect((successes.at(-1) ?? 0) - back).toBeLessThan(1_000);
  });

  it("stops promptly when aborted during a blocking read and sends nothing more", async () => {
    startWatch("p/", { wait: "5m" });
    await fake.waitForWaiting(1);
    const sent = fake.requests.length;
    const started = Date.now();
    controller.abort();
    await running;
    expect(Date.now() - started).toBeLessThan(1_000);
    // The loop has returned, so nothing more can be sent; the held query itself was cancelled.
    await until(() => fake.waiting() === 0);
    expect(fake.requests).toHaveLength(sent);
  });

  it("stops when aborted during an error backoff", async () => {
    await fake.setDown(true);
    const { errors } = startWatch("p/", { backoff: { minMs: 60_000, maxMs: 60_000 } });
    await until(() => errors.length === 1);
    const started = Date.now();
    controller.abort();
    await running;
    expect(Date.now() - started).toBeLessThan(1_000);
  });

  it("keeps watching when the change handler throws", async () => {
    let calls = 0;
    startWatch("p/", {
      onChange: () => {
        calls += 1;
        throw new Error("handler bug");
      },
    });
    await fake.waitForWaiting(1);
    fake.set("p/a", "1");
    await until(() => calls === 2);
    await fake.waitForWaiting(1);
  });
});
