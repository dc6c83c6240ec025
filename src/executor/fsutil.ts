import type { Stats } from "node:fs";
import { chmod, readdir, rename, rm, stat, statfs, utimes } from "node:fs/promises";
import { join } from "node:path";

/** True when `path` exists (any type). */
export async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/** A short random suffix for temporary names (not a secret: node:crypto would cost milliseconds of start-up). */
export function randomSuffix(): string {
  return Math.floor(Math.random() * 0x100000000)
    .toString(16)
    .padStart(8, "0");
}

/**
 * Deletes a tree. Overlay work dirs and trees left by user-namespace builds can hold directories without
 * write permission for us, so on EACCES/EPERM the tree is made writable and the removal retried.
 */
export async function removeTree(path: string): Promise<void> {
  try {
    await rm(path, { recursive: true, force: true });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== "EACCES" && code !== "EPERM" && code !== "ENOTEMPTY") throw err;
    await makeWritable(path);
    await rm(path, { recursive: true, force: true });
  }
}

async function makeWritable(path: string): Promise<void> {
  let st: Stats;
  try {
    st = await stat(path);
  } catch {
    return;
  }
  if (!st.isDirectory()) return;
  await chmod(path, 0o700).catch(() => undefined);
  const entries = await readdir(path, { withFileTypes: true }).catch(() => []);
  for (const e of entries) if (e.isDirectory()) await makeWritable(join(path, e.name));
}

/** Moves a tree into `trashDir` (atomic, same filesystem), then deletes it. */
export async function discardTree(path: string, trashDir: string): Promise<void> {
  const target = join(trashDir, `${Date.now()}-${randomSuffix()}`);
  try {
    await rename(path, target);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return;
    await removeTree(path);
    return;
  }
  await removeTree(target);
}

/** Marks a path as used now (its mtime is the "last used" time eviction reads). */
export async function touch(path: string): Promise<void> {
  const now = new Date();
  await utimes(path, now, now).catch(() => undefined);
}

/** Free bytes for unprivileged users on the filesystem of `path`, or undefined when unknown. */
export async function freeBytes(path: string): Promise<number | undefined> {
  try {
    const s = await statfs(path);
    return s.bavail * s.bsize;
  } catch {
    return undefined;
  }
}

/** `{ signal }` when the request has one (exactOptionalPropertyTypes forbids passing undefined). */
export function signalOf(req: { signal?: AbortSignal | undefined }): { signal?: AbortSignal } {
  return req.signal ? { signal: req.signal } : {};
}
