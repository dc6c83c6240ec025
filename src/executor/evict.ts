import { mkdir, readdir, stat, unlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { discardTree, removeTree } from "./fsutil.js";
import type { CacheLayout } from "./layout.js";
import { lockFile } from "./lock.js";
import { capture } from "./proc.js";
import type { EvictionSettings } from "./settings.js";

/** What one eviction pass removed. */
export interface EvictionReport {
  removed: string[];
  freedBytes: number;
  /** Entries that were due but in use by a running build. */
  inUse: number;
}

interface Candidate {
  path: string;
  /** Lock that every user holds (shared); eviction needs it exclusively. */
  lock: string;
  /** Delete the lock file after removing the entry (it belongs to the entry alone). */
  dropLock: boolean;
  lastUsed: number;
  bytes: number;
}

const STALE_BUILD_MS = 60 * 60_000;
const STARTING_BUILD_MS = 60_000;

/**
 * Removes old base worktrees, caches and mirrors, by age and then by total size (least recently used first),
 * plus what killed builds left behind. An entry in use holds a shared lock, so eviction (which only ever tries
 * an exclusive lock without waiting) skips it. Runs at most once per `intervalMs` across all executors sharing
 * the cache directory, unless `force`.
 */
export async function evictCaches(
  layout: CacheLayout,
  settings: EvictionSettings,
  opts: { now?: number; force?: boolean } = {},
): Promise<EvictionReport | undefined> {
  const now = opts.now ?? Date.now();
  await mkdir(layout.root, { recursive: true });
  if (!opts.force) {
    const last = await mtimeOf(layout.evictStamp);
    if (last !== undefined && now - last < settings.intervalMs) return undefined;
  }
  const lock = await lockFile(layout.evictLock, { wait: false });
  if (!lock) return undefined;
  const report: EvictionReport = { removed: [], freedBytes: 0, inUse: 0 };
  try {
    await writeFile(layout.evictStamp, `${new Date(now).toISOString()}\n`);
    await mkdir(layout.trash, { recursive: true });
    await sweepBuilds(layout, now, report);
    await sweepTrash(layout, now);
    const worktrees = await listWorktrees(layout);
    await sweepTemps(layout);
    await sweepMirrorTemps(layout);
    const caches = await listCaches(layout);
    const mirrors = await listMirrors(layout);
    await measure([...worktrees, ...caches, ...mirrors]);
    await applyLimits(layout, worktrees, settings.worktreesMaxAgeMs, settings.worktreesMaxBytes, now, report);
    await applyLimits(layout, caches, settings.cachesMaxAgeMs, settings.cachesMaxBytes, now, report);
    await applyLimits(layout, mirrors, settings.mirrorsMaxAgeMs, Number.POSITIVE_INFINITY, now, report);
    return report;
  } finally {
    lock.release();
  }
}

async function mtimeOf(path: string): Promise<number | undefined> {
  try {
    return (await stat(path)).mtimeMs;
  } catch {
    return undefined;
  }
}

async function names(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch {
    return [];
  }
}

async function sweepBuilds(layout: CacheLayout, now: number, report: EvictionReport): Promise<void> {
  const entries = await names(layout.builds);
  const set = new Set(entries);
  for (const name of entries) {
    const path = join(layout.builds, name);
    if (name.endsWith(".lock")) {
      // A starting build creates its scratch directory a moment before its shell takes this lock.
      const age = now - ((await mtimeOf(path)) ?? now);
      if (age < STARTING_BUILD_MS) continue;
      const held = await lockFile(path, { wait: false });
      if (!held) continue;
      try {
        const dir = path.slice(0, -".lock".length);
        if (set.has(dir.slice(layout.builds.length + 1))) {
          await removeTree(dir);
          report.removed.push(dir);
        }
        await unlink(path).catch(() => undefined);
      } finally {
        held.release();
      }
    } else if (!set.has(`${name}.lock`)) {
      const m = await mtimeOf(path);
      if (m !== undefined && now - m > STALE_BUILD_MS) {
        await removeTree(path);
        report.removed.push(path);
      }
    }
  }
}

async function sweepTrash(layout: CacheLayout, now: number): Promise<void> {
  for (const name of await names(layout.trash)) {
    const path = join(layout.trash, name);
    const m = await mtimeOf(path);
    // A younger entry may still be being deleted by the executor that moved it here.
    if (m !== undefined && now - m > STALE_BUILD_MS) await removeTree(path);
  }
}

async function listWorktrees(layout: CacheLayout): Promise<Candidate[]> {
  const out: Candidate[] = [];
  for (const repo of await names(layout.worktrees)) {
    const dir = join(layout.worktrees, repo);
    for (const name of await names(dir)) {
      if (name.startsWith(".") || name.endsWith(".lock")) continue;
      const path = join(dir, name);
      const lock = `${path}.lock`;
      const lastUsed = (await mtimeOf(lock)) ?? (await mtimeOf(path)) ?? 0;
      out.push({ path, lock, dropLock: true, lastUsed, bytes: 0 });
    }
  }
  return out;
}

async function sweepTemps(layout: CacheLayout): Promise<void> {
  for (const repo of await names(layout.worktrees)) {
    const dir = join(layout.worktrees, repo);
    for (const name of await names(dir)) {
      const m = /^\.tmp-([0-9a-f]+)-[0-9a-f]+$/.exec(name);
      if (!m) continue;
      // A checkout in progress holds the commit's lock exclusively; one that died holds nothing.
      const held = await lockFile(join(dir, `${m[1]}.lock`), { wait: false });
      if (!held) continue;
      try {
        await removeTree(join(dir, name));
      } finally {
        held.release();
      }
    }
  }
}

async function sweepMirrorTemps(layout: CacheLayout): Promise<void> {
  for (const name of await names(layout.mirrors)) {
    const m = /^(.+\.git)\.tmp-[0-9a-f]+$/.exec(name);
    if (!m) continue;
    // Created under the mirror's lock: free means its creator died.
    const held = await lockFile(join(layout.mirrors, `${m[1]}.lock`), { wait: false });
    if (!held) continue;
    try {
      await removeTree(join(layout.mirrors, name));
    } finally {
      held.release();
    }
  }
}

async function listCaches(layout: CacheLayout): Promise<Candidate[]> {
  const out: Candidate[] = [];
  for (const repo of await names(layout.caches)) {
    for (const ns of await names(join(layout.caches, repo))) {
      if (ns.endsWith(".lock")) continue;
      const nsDir = join(layout.caches, repo, ns);
      for (const name of await names(nsDir)) {
        const path = join(nsDir, name);
        out.push({ path, lock: `${nsDir}.lock`, dropLock: false, lastUsed: (await mtimeOf(path)) ?? 0, bytes: 0 });
      }
    }
  }
  return out;
}

async function listMirrors(layout: CacheLayout): Promise<Candidate[]> {
  const out: Candidate[] = [];
  for (const name of await names(layout.mirrors)) {
    if (!name.endsWith(".git")) continue;
    const path = join(layout.mirrors, name);
    const lock = `${path}.lock`;
    out.push({ path, lock, dropLock: true, lastUsed: (await mtimeOf(lock)) ?? (await mtimeOf(path)) ?? 0, bytes: 0 });
  }
  return out;
}

async function measure(candidates: Candidate[]): Promise<void> {
  if (candidates.length === 0) return;
  const r = await capture("du", ["-s", "-B1", "--", ...candidates.map((c) => c.path)]);
  const sizes = new Map<string, number>();
  for (const line of r.stdout.split("\n")) {
    const tab = line.indexOf("\t");
    if (tab > 0) sizes.set(line.slice(tab + 1), Number(line.slice(0, tab)));
  }
  for (const c of candidates) c.bytes = sizes.get(c.path) ?? 0;
}

async function applyLimits(
  layout: CacheLayout,
  candidates: Candidate[],
  maxAgeMs: number,
  maxBytes: number,
  now: number,
  report: EvictionReport,
): Promise<void> {
  const ordered = [...candidates].sort((a, b) => a.lastUsed - b.lastUsed);
  let total = ordered.reduce((sum, c) => sum + c.bytes, 0);
  for (const c of ordered) {
    const tooOld = now - c.lastUsed > maxAgeMs;
    if (!tooOld && total <= maxBytes) continue;
    if (await evictOne(layout, c)) {
      total -= c.bytes;
      report.removed.push(c.path);
      report.freedBytes += c.bytes;
    } else {
      report.inUse++;
    }
  }
}

async function evictOne(layout: CacheLayout, c: Candidate): Promise<boolean> {
  const held = await lockFile(c.lock, { wait: false });
  if (!held) return false;
  try {
    await discardTree(c.path, layout.trash);
    // Deleted while held: a process that opened the old file re-checks the inode after locking (lock.ts).
    if (c.dropLock) await unlink(c.lock).catch(() => undefined);
    return true;
  } finally {
    held.release();
  }
}
