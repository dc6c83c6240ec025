import { createHash } from "node:crypto";
import { join } from "node:path";

/** Where the executor keeps things under PETREL_CACHE_DIR (see docs/executor.md, "Cache directory"). */
export interface CacheLayout {
  root: string;
  mirrors: string;
  worktrees: string;
  caches: string;
  builds: string;
  trash: string;
  knownHosts: string;
  evictStamp: string;
  evictLock: string;
}

/** The directory layout under a cache root. */
export function cacheLayout(root: string): CacheLayout {
  return {
    root,
    mirrors: join(root, "mirrors"),
    worktrees: join(root, "worktrees"),
    caches: join(root, "caches"),
    builds: join(root, "builds"),
    trash: join(root, "trash"),
    knownHosts: join(root, "known_hosts"),
    evictStamp: join(root, "evicted.stamp"),
    evictLock: join(root, "evict.lock"),
  };
}

/** A repository URL without credentials, for messages and for the clone's `origin`. */
export function redactUrl(url: string): string {
  return url.replace(/^([a-z][a-z0-9+.-]*:\/\/)[^/@]*@/i, "$1");
}

/**
 * A directory name for a repository: readable (`acme_widgets`) plus a hash of the normalised URL, so two
 * repositories never share a mirror, worktrees or caches even when their names collide.
 */
export function repoSlug(url: string): string {
  const normal = redactUrl(url.trim()).replace(/\/+$/, "").replace(/\.git$/, "").toLowerCase();
  const path = normal.replace(/^[a-z][a-z0-9+.-]*:\/\/[^/]*/, "").replace(/^[^/:]*:/, "");
  const tail = path.split("/").filter(Boolean).slice(-2).join("_");
  const readable = tail.replace(/[^a-z0-9._-]+/g, "-").replace(/^[.-]+/, "").slice(0, 60) || "repo";
  const hash = createHash("sha256").update(normal).digest("hex").slice(0, 10);
  return `${readable}-${hash}`;
}

/** `owner/name` from a repository URL (for headers when the REPO meta is absent). */
export function repoNameFromUrl(url: string): string {
  const path = redactUrl(url).replace(/\/+$/, "").replace(/\.git$/, "").replace(/^[a-z][a-z0-9+.-]*:\/\/[^/]*/i, "");
  return path.replace(/^[^/:]*:/, "").split("/").filter(Boolean).slice(-2).join("/") || url;
}

/** A build ID (`builder/dispatch-…`) as one safe path segment. */
export function buildSlug(id: string): string {
  return id.replace(/[^A-Za-z0-9._-]+/g, "_").replace(/^[.]+/, "_").slice(0, 120) || "build";
}
