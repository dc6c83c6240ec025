import { createRequire } from "node:module";
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
 * The repository a URL names, as `host[:port]/path` (or a local path): no scheme, credentials, `.git` suffix or
 * trailing slash, host lower-cased. `https://` and `ssh://` URLs of one repository normalise alike.
 */
export function normalizeRepoUrl(url: string): string {
  let s = url
    .trim()
    .replace(/\/+$/, "")
    .replace(/\.git$/, "");
  const scheme = /^[a-z][a-z0-9+.-]*:\/\//i.exec(s);
  if (scheme) {
    s = s.slice(scheme[0].length);
  } else {
    // scp-like `user@host:owner/name`
    const scp = /^([^/:@]+@)?([^/:]+):(?!\/\/)/.exec(s);
    if (scp) s = `${scp[1] ?? ""}${scp[2]}/${s.slice(scp[0].length)}`;
  }
  const slash = s.indexOf("/");
  let host = slash < 0 ? s : s.slice(0, slash);
  const path = slash < 0 ? "" : s.slice(slash);
  host = host.replace(/^[^@]*@/, "").toLowerCase();
  return `${host}${path}`.replace(/\/{2,}/g, "/");
}

const MAX_SLUG = 120;
const require = createRequire(import.meta.url);

/**
 * A directory name for a repository, under mirrors/, worktrees/ and caches/: the normalised URL escaped
 * injectively (`git.example.test+acme+widgets`), so two repositories never share a mirror or caches. Very long
 * names end in a SHA-256 of the URL instead.
 */
export function repoSlug(url: string): string {
  const normal = normalizeRepoUrl(url);
  let out = "";
  for (const byte of Buffer.from(normal, "utf8")) {
    const c = String.fromCharCode(byte);
    if (/[A-Za-z0-9._-]/.test(c)) out += c;
    else if (c === "/") out += "+";
    else out += `%${byte.toString(16).padStart(2, "0")}`;
  }
  if (out === "" || out === "." || out === "..") out = `%${out}`;
  if (out.length <= MAX_SLUG) return out;
  // Loaded only here: node:crypto costs milliseconds of every executor's start.
  const { createHash } = require("node:crypto") as typeof import("node:crypto");
  return `${out.slice(0, 80)}~${createHash("sha256").update(normal).digest("hex").slice(0, 32)}`;
}

/** `owner/name` from a repository URL (for headers when the REPO meta is absent). */
export function repoNameFromUrl(url: string): string {
  const path = redactUrl(url)
    .replace(/\/+$/, "")
    .replace(/\.git$/, "")
    .replace(/^[a-z][a-z0-9+.-]*:\/\/[^/]*/i, "");
  return (
    path
      .replace(/^[^/:]*:/, "")
      .split("/")
      .filter(Boolean)
      .slice(-2)
      .join("/") || url
  );
}

/** A build ID (`builder/dispatch-…`) as one safe path segment. */
export function buildSlug(id: string): string {
  return (
    id
      .replace(/[^A-Za-z0-9._-]+/g, "_")
      .replace(/^[.]+/, "_")
      .slice(0, 120) || "build"
  );
}
