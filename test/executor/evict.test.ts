import { existsSync, mkdirSync, readdirSync, utimesSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { evictCaches } from "../../src/executor/evict.js";
import { type CacheLayout, cacheLayout } from "../../src/executor/layout.js";
import { lockFile } from "../../src/executor/lock.js";
import { DEFAULT_EVICTION, type EvictionSettings } from "../../src/executor/settings.js";
import { cleanup, tempDir } from "./helpers.js";

const DAY = 86_400_000;
const KIB = 1024;

describe("eviction", () => {
  let dir: string;
  let layout: CacheLayout;
  const now = Date.now();

  beforeEach(() => {
    dir = tempDir("evict");
    layout = cacheLayout(join(dir, "cache"));
  });
  afterEach(() => cleanup(dir));

  function ageBy(path: string, ms: number): void {
    const t = new Date(now - ms);
    utimesSync(path, t, t);
  }

  /** A base worktree of `bytes` last used `ageMs` ago. */
  function worktree(commit: string, ageMs: number, bytes = 4 * KIB): string {
    const d = join(layout.worktrees, "acme_w-0123456789", commit);
    mkdirSync(d, { recursive: true });
    writeFileSync(join(d, "blob"), Buffer.alloc(bytes, 1));
    writeFileSync(`${d}.lock`, "");
    ageBy(`${d}.lock`, ageMs);
    return d;
  }

  function cache(ns: string, name: string, ageMs: number, bytes = 4 * KIB): string {
    const d = join(layout.caches, "acme_w-0123456789", ns, name);
    mkdirSync(d, { recursive: true });
    writeFileSync(join(d, "data"), Buffer.alloc(bytes, 2));
    ageBy(d, ageMs);
    return d;
  }

  const settings = (over: Partial<EvictionSettings>): EvictionSettings => ({ ...DEFAULT_EVICTION, ...over });

  it("removes worktrees unused for longer than the age limit, with their lock files", async () => {
    const old = worktree("a".repeat(40), 10 * DAY);
    const fresh = worktree("b".repeat(40), 1 * DAY);
    const report = await evictCaches(layout, settings({ worktreesMaxAgeMs: 7 * DAY }), { now, force: true });
    expect(existsSync(old)).toBe(false);
    expect(existsSync(`${old}.lock`)).toBe(false);
    expect(existsSync(fresh)).toBe(true);
    expect(report?.removed).toEqual([old]);
  });

  it("removes least recently used worktrees until the total fits the size limit", async () => {
    const oldest = worktree("1".repeat(40), 3 * DAY, 64 * KIB);
    const middle = worktree("2".repeat(40), 2 * DAY, 64 * KIB);
    const newest = worktree("3".repeat(40), 1 * DAY, 64 * KIB);
    await evictCaches(layout, settings({ worktreesMaxBytes: 150 * KIB }), { now, force: true });
    expect(existsSync(oldest)).toBe(false);
    expect(existsSync(middle)).toBe(true);
    expect(existsSync(newest)).toBe(true);
  });

  it("never removes a worktree or cache a running build holds", async () => {
    const busy = worktree("c".repeat(40), 30 * DAY);
    const busyCache = cache("trusted", "npm", 60 * DAY);
    const idleCache = cache("untrusted", "npm", 60 * DAY);
    const held = await lockFile(`${busy}.lock`, { shared: true });
    const heldCaches = await lockFile(join(layout.caches, "acme_w-0123456789", "trusted.lock"), { shared: true });
    const report = await evictCaches(layout, settings({}), { now, force: true });
    expect(existsSync(busy)).toBe(true);
    expect(existsSync(busyCache)).toBe(true);
    expect(existsSync(idleCache)).toBe(false);
    expect(report?.inUse).toBe(2);
    held?.release();
    heldCaches?.release();
    await evictCaches(layout, settings({}), { now, force: true });
    expect(existsSync(busy)).toBe(false);
    expect(existsSync(busyCache)).toBe(false);
  });

  it("evicts caches by size, least recently used first", async () => {
    const a = cache("trusted", "a", 3 * DAY, 64 * KIB);
    const b = cache("trusted", "b", 1 * DAY, 64 * KIB);
    await evictCaches(layout, settings({ cachesMaxBytes: 100 * KIB }), { now, force: true });
    expect(existsSync(a)).toBe(false);
    expect(existsSync(b)).toBe(true);
  });

  it("cleans up what killed builds and checkouts left, but not what live ones hold", async () => {
    mkdirSync(layout.builds, { recursive: true });
    const dead = join(layout.builds, "b1-aaaa");
    mkdirSync(join(dead, "upper"), { recursive: true });
    writeFileSync(`${dead}.lock`, "");
    ageBy(`${dead}.lock`, 2 * 3_600_000);
    // One that is just starting: its shell has not taken the lock yet.
    const starting = join(layout.builds, "b3-cccc");
    mkdirSync(join(starting, "upper"), { recursive: true });
    writeFileSync(`${starting}.lock`, "");
    const live = join(layout.builds, "b2-bbbb");
    mkdirSync(join(live, "upper"), { recursive: true });
    const liveLock = await lockFile(`${live}.lock`);
    const repoDir = join(layout.worktrees, "acme_w-0123456789");
    mkdirSync(join(repoDir, `.tmp-${"d".repeat(40)}-0a0b0c0d`), { recursive: true });
    const busyTmp = join(repoDir, `.tmp-${"e".repeat(40)}-01020304`);
    mkdirSync(busyTmp);
    const checkoutLock = await lockFile(join(repoDir, `${"e".repeat(40)}.lock`));
    const halfMirror = join(layout.mirrors, "git.example.test+acme+w.git.tmp-0badf00d");
    mkdirSync(halfMirror, { recursive: true });
    await evictCaches(layout, settings({}), { now, force: true });
    expect(existsSync(halfMirror)).toBe(false);
    expect(existsSync(dead)).toBe(false);
    expect(existsSync(`${dead}.lock`)).toBe(false);
    expect(existsSync(live)).toBe(true);
    expect(existsSync(starting)).toBe(true);
    expect(readdirSync(repoDir).filter((n) => n.startsWith(".tmp-"))).toEqual([`.tmp-${"e".repeat(40)}-01020304`]);
    liveLock?.release();
    checkoutLock?.release();
  });

  it("runs at most once per interval unless forced", async () => {
    worktree("f".repeat(40), 30 * DAY);
    const first = await evictCaches(layout, settings({ intervalMs: 60_000 }));
    expect(first?.removed).toHaveLength(1);
    worktree("0".repeat(40), 30 * DAY);
    expect(await evictCaches(layout, settings({ intervalMs: 60_000 }))).toBeUndefined();
    expect((await evictCaches(layout, settings({ intervalMs: 60_000 }), { force: true }))?.removed).toHaveLength(1);
  });

  it("removes mirrors unused for longer than their age limit", async () => {
    const mirror = join(layout.mirrors, "acme_w-0123456789.git");
    mkdirSync(mirror, { recursive: true });
    writeFileSync(`${mirror}.lock`, "");
    ageBy(`${mirror}.lock`, 40 * DAY);
    await evictCaches(layout, settings({ mirrorsMaxAgeMs: 30 * DAY }), { now, force: true });
    expect(existsSync(mirror)).toBe(false);
  });
});
