import { describe, expect, it } from "vitest";
import { createTokenBucket } from "../../src/consul/token-bucket.js";

describe("token bucket", () => {
  it("lets a burst through at once, then spaces requests by the interval", () => {
    let t = 0;
    const bucket = createTokenBucket({ intervalMs: 15_000, burst: 2, now: () => t });
    expect(bucket.take()).toBe(0);
    expect(bucket.take()).toBe(0);
    expect(bucket.take()).toBe(15_000);
    t += 15_000;
    expect(bucket.take()).toBe(15_000);
  });

  it("refills while idle, but never beyond the burst", () => {
    let t = 0;
    const bucket = createTokenBucket({ intervalMs: 1_000, burst: 2, now: () => t });
    bucket.take();
    bucket.take();
    t += 60_000;
    expect(bucket.take()).toBe(0);
    expect(bucket.take()).toBe(0);
    expect(bucket.take()).toBe(1_000);
  });

  it("counts a partial refill towards the next token", () => {
    let t = 0;
    const bucket = createTokenBucket({ intervalMs: 1_000, burst: 1, now: () => t });
    bucket.take();
    t += 400;
    expect(bucket.take()).toBe(600);
  });

  it("never waits with a zero interval", () => {
    const bucket = createTokenBucket({ intervalMs: 0 });
    for (let i = 0; i < 10; i++) expect(bucket.take()).toBe(0);
  });
});
