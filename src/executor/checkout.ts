import { mkdir, readdir } from "node:fs/promises";
import { join } from "node:path";
import { ExecutorError } from "./errors.js";
import { exists, removeTree, signalOf, touch } from "./fsutil.js";
import { repoSlug } from "./layout.js";
import { type FileLock, lockFile } from "./lock.js";
import type { CheckoutRequest } from "./materialize.js";

/**
 * A base worktree to use read-only. Whoever uses it must hold `lockPath` shared (eviction needs it exclusively):
 * a fresh checkout comes with that lock held (`lock`); a cached one is returned unlocked, for the build's shell
 * to lock without the cost of a process spawn here, and to re-check for existence once locked.
 */
export interface Checkout {
  dir: string;
  lockPath: string;
  /** True when the worktree already existed. */
  cached: boolean;
  /** How it was obtained: `cached`, `from mirror` or `fetched <ref>`. */
  detail: string;
  lock?: FileLock;
}

const MAX_ROUNDS = 5;

/**
 * Returns the base worktree of `commit`, creating it once: concurrent callers for the same commit wait on an
 * exclusive lock while one of them checks out into a temporary directory that is renamed into place when
 * complete, so a killed executor leaves at most a `.tmp-*` directory nobody trusts (and the next checkout of
 * that commit deletes).
 */
export async function checkoutCommit(req: CheckoutRequest): Promise<Checkout> {
  const slug = repoSlug(req.url);
  const dir = join(req.layout.worktrees, slug);
  await mkdir(dir, { recursive: true });
  const final = join(dir, req.commit);
  const lockPath = `${final}.lock`;
  if (await exists(final)) {
    await touch(lockPath);
    return { dir: final, lockPath, cached: true, detail: "cached" };
  }
  let detail: string | undefined;
  for (let round = 0; round < MAX_ROUNDS; round++) {
    const shared = await lockFile(lockPath, { shared: true, ...signalOf(req) });
    if (!shared) throw new ExecutorError("internal", `cannot lock ${lockPath}`);
    if (await exists(final)) {
      await touch(lockPath);
      return { dir: final, lockPath, cached: detail === undefined, detail: detail ?? "cached", lock: shared };
    }
    shared.release();
    const exclusive = await lockFile(lockPath, signalOf(req));
    if (!exclusive) throw new ExecutorError("internal", `cannot lock ${lockPath}`);
    try {
      // A conversion between shared and exclusive flock is not atomic, so re-check under the exclusive lock.
      if (!(await exists(final))) {
        await removeStale(dir, req.commit);
        // Only a cold checkout needs git: loaded on demand to keep the warm path's start-up short.
        const { createWorktree } = await import("./materialize.js");
        detail = await createWorktree(req, slug, dir, final);
      }
    } finally {
      exclusive.release();
    }
  }
  throw new ExecutorError("internal", `worktree of ${req.label} kept disappearing (eviction racing the checkout)`);
}

async function removeStale(dir: string, commit: string): Promise<void> {
  const prefix = `.tmp-${commit}-`;
  for (const name of await readdir(dir)) if (name.startsWith(prefix)) await removeTree(join(dir, name));
}
