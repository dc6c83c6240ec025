import { rmSync, type Stats } from "node:fs";
import { chmod, chown, lstat, mkdir, readlink, realpath, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, dirname, isAbsolute, join, normalize, relative } from "node:path";
import { checkoutCommit } from "./checkout.js";
import { diskFull, ExecutorError, exitCodeOf, isDiskFull } from "./errors.js";
import { randomSuffix, touch } from "./fsutil.js";
import { buildSlug, type CacheLayout } from "./layout.js";
import type { FileLock } from "./lock.js";
import type { CheckoutRequest } from "./materialize.js";
import {
  type CacheMount,
  type Isolation,
  type IsolationMode,
  modesFor,
  runSandbox,
  type SandboxResult,
  type SandboxSpec,
} from "./sandbox.js";
import type { SecretsFile } from "./secrets.js";
import { type EvictionSettings, formatMs } from "./settings.js";

/** Where the build's tree comes from: a commit checked out through the cache, or a developer's working tree. */
export type BuildSource =
  | { kind: "commit"; checkout: Omit<CheckoutRequest, "layout" | "label" | "signal"> }
  | { kind: "worktree"; dir: string };

/** One build, fully decided: what `petrel executor` and `petrel run` hand to `executeBuild`. */
export interface ExecutorPlan {
  id: string;
  layout: CacheLayout;
  /** `owner/name@short`, for headers. */
  label: string;
  /** Directory name of the repository under mirrors/, worktrees/ and caches/. */
  repoSlug: string;
  source: BuildSource;
  /** The environment the build script inherits, before petrel's own variables. */
  baseEnv: Record<string, string | undefined>;
  /** COMMIT, BRANCH, REPO_URL, FLAVOR, CI, PETREL_BUILD_ID and the colour variables. */
  vars: Record<string, string>;
  trusted: boolean;
  /** Written to the secrets file when `trusted`. */
  secrets: Record<string, string>;
  /** Shell text written to the secrets file after the secrets when `trusted` (an Albatros entry's `inject`). */
  inject?: string;
  secretsDir?: string;
  /** Cache name → path the build sees it at (`~/` = `home`, relative = inside the build directory). */
  caches: Record<string, string>;
  home: string;
  /** Where the merged tree is mounted; a fresh directory under the temp dir when absent. */
  buildDir?: string;
  /** `buildDir` is the developer's working tree itself: mounted over, never created or removed. */
  buildDirIsLower?: boolean;
  /** Hide the cache root from the build (Nomad builds: other repositories' mirrors and trusted caches). */
  hideCacheRoot: boolean;
  /** Paths outside the tree the build must not write: a linked worktree's git directories (`petrel run`). */
  readOnly?: readonly string[];
  isolation: Isolation;
  /**
   * `petrel run` only: where `auto` cannot mount, build a copy of the developer's own tree instead of failing.
   * Builds of a commit never fall back (docs/executor.md, "Isolation").
   */
  copyFallback?: boolean;
  debug: boolean;
  newSession: boolean;
  killGraceMs: number;
  eviction?: EvictionSettings;
}

/** Where the executor writes its step headers. */
export interface BuildIo {
  stderr: { write(text: string): unknown };
  /** Takes the build's stdout and stderr pipes (to feed the merged log); absent: the build writes to ours. */
  attach?: ((stdout: import("node:stream").Readable, stderr: import("node:stream").Readable) => void) | undefined;
  /** Waits (at most `ms`) for the attached pipes' last bytes, so the closing step line comes after them. */
  drain?: (ms: number) => Promise<void>;
}

const SCRIPTS = [".petrel", ".albatros"] as const;
const MAX_ATTEMPTS = 3;
/** Who a copy-mode build of a commit runs as when the executor is root: the overflow uid/gid ("nobody"). */
const COPY_BUILD_USER = { uid: 65534, gid: 65534 } as const;
/** How long the build's output pipes may stay open after it exited (a background process holding them). */
const OUTPUT_DRAIN_MS = 1000;

/**
 * Runs one build in order (checkout, overlay, caches, run, clean up) and returns the exit code:
 * the script's, or the executor's own (docs/executor.md) when a step before it failed.
 */
export async function executeBuild(plan: ExecutorPlan, io: BuildIo, signal?: AbortSignal): Promise<number> {
  const say = (line: string) => io.stderr.write(`==> ${line}\n`);
  const held: FileLock[] = [];
  let secretsFile: SecretsFile | undefined;
  let exitCode: number;
  let cancelled = false;
  const buildLocks: string[] = [];
  try {
    const uid = process.getuid?.() ?? 0;
    const modes = modesFor(plan.isolation, uid, plan.copyFallback === true);
    const copyAs = await copyModeUser(plan, modes, uid);
    const buildDir = plan.buildDir ?? join(tmpdir(), `petrel-build-${randomSuffix()}`);
    const planned = planCaches(plan, buildDir);
    const env: NodeJS.ProcessEnv = { ...plan.baseEnv, ...plan.vars, HOME: plan.home };
    delete env.PETREL_SECRETS;
    if (plan.trusted) {
      const { writeSecretsFile } = await import("./secrets.js");
      secretsFile = await writeSecretsFile(plan.secrets, plan.secretsDir, buildSlug(plan.id), plan.inject);
      env.PETREL_SECRETS = secretsFile.path;
    }
    await mkdir(plan.layout.builds, { recursive: true });
    let result: SandboxResult = { kind: "lower_gone" };
    let command = { name: "", argv: [] as string[] };
    let runStarted = 0;
    for (let attempt = 0; attempt < MAX_ATTEMPTS && result.kind === "lower_gone"; attempt++) {
      const source = await prepareSource(plan, say, held, signal);
      command = await findScript(source.dir, plan.label);
      // Checked in the tree the build starts from, which nobody writes, before anything is mounted on it.
      await checkCachesInTree(planned, buildDir, source.dir);
      // Copy mode mounts no cache: they are not created, locked or marked used either.
      const { mounts: caches, lock: cachesLock } = modes.every((m) => m === "copy")
        ? { mounts: planned.map(({ name, target }) => ({ name, source: "", target })), lock: undefined }
        : await prepareCaches(plan, planned);
      if (copyAs && secretsFile) await handSecretsTo(secretsFile, copyAs);
      const buildRoot = join(plan.layout.builds, `${buildSlug(plan.id)}-${randomSuffix()}`);
      buildLocks.push(`${buildRoot}.lock`);
      const spec: SandboxSpec = {
        lower: source.dir,
        buildRoot,
        buildDir,
        ownsBuildDir: plan.buildDir === undefined || !plan.buildDirIsLower,
        caches,
        ...(copyAs ? { copyAs } : {}),
        hide: plan.hideCacheRoot ? [plan.layout.root] : [],
        readOnly: plan.readOnly ?? [],
        command: command.argv,
        env,
        debug: plan.debug,
        newSession: plan.newSession,
        killGraceMs: plan.killGraceMs,
        output: io.attach,
        // Held by the build's shell, see SandboxSpec.locks: the worktree and caches in use (shared) and the
        // scratch directory (exclusive), which eviction must leave alone.
        locks: [
          ...(source.lockPath ? [{ path: source.lockPath, shared: true }] : []),
          { path: `${buildRoot}.lock`, shared: false },
          ...(cachesLock ? [{ path: cachesLock, shared: true }] : []),
        ],
      };
      const name = command.name;
      result = await runSandbox(
        spec,
        modes,
        {
          fallback: ({ from, to, reason }) => {
            say(`${from === "userns" ? "user-namespace overlay" : "overlay"} unavailable (${reason}); trying ${to}`);
          },
          ready: ({ mode, buildDir: dir, setupMs, home }) => {
            say(describeTree(mode, dir, setupMs));
            if (home)
              say(`build runs as uid ${COPY_BUILD_USER.uid} with HOME=${home} (copy mode: the cache directory is out of its reach)`);
            if (mode === "copy" && plan.readOnly?.length) {
              say(`warning: without mounts, git writes reach ${plan.readOnly.join(", ")} (outside the working tree)`);
            }
            if (caches.length) say(describeCaches(plan, caches, mode));
            if (secretsFile) say(describeSecrets(secretsFile));
            say(`run ${name} (started ${formatMs(performance.now())} after the executor)`);
            runStarted = performance.now();
          },
        },
        signal,
      );
    }
    if (result.kind === "lower_gone") {
      throw new ExecutorError("internal", `the worktree of ${plan.label} was evicted as the build started, ${MAX_ATTEMPTS} times`);
    }
    await io.drain?.(OUTPUT_DRAIN_MS);
    cancelled = result.cancelled;
    exitCode = cancelled ? exitCodeOf("cancelled") : result.exitCode;
    const took = runStarted ? ` after ${formatMs(performance.now() - runStarted)}` : "";
    say(cancelled ? `cancelled: build stopped${took}` : `exit ${exitCode}${took}`);
  } catch (err) {
    const failure = await asExecutorError(err, plan, signal);
    cancelled = failure.failure === "cancelled";
    say(cancelled ? "cancelled" : `error: ${failure.message}`);
    exitCode = failure.exitCode;
  } finally {
    for (const lock of held.reverse()) lock.release();
    // The build is over and its scratch directory gone: nothing is left for the lock to guard.
    for (const path of buildLocks) rmSync(path, { force: true });
    if (secretsFile) await rm(secretsFile.ownDir ?? secretsFile.path, { recursive: true, force: true });
  }
  if (!cancelled && plan.eviction) await evict(plan, say);
  return exitCode;
}

async function prepareSource(
  plan: ExecutorPlan,
  say: (line: string) => void,
  held: FileLock[],
  signal: AbortSignal | undefined,
): Promise<{ dir: string; lockPath?: string }> {
  if (plan.source.kind === "worktree") {
    say(`checkout ${plan.label} (working tree ${plan.source.dir})`);
    return { dir: plan.source.dir };
  }
  const started = performance.now();
  const request = { ...plan.source.checkout, layout: plan.layout, label: plan.label, ...(signal ? { signal } : {}) };
  const co = await checkoutCommit(request);
  if (co.lock) held.push(co.lock);
  say(`checkout ${plan.label} (${co.detail}) ${formatMs(performance.now() - started)}`);
  return { dir: co.dir, lockPath: co.lockPath };
}

async function findScript(lower: string, label: string): Promise<{ name: string; argv: string[] }> {
  for (const name of SCRIPTS) {
    let st: Stats;
    try {
      st = await lstat(join(lower, name));
    } catch {
      continue;
    }
    if (st.isDirectory()) continue;
    // A script committed without its executable bit still runs, with sh, as Albatros builders did.
    return { name, argv: st.isFile() && (st.mode & 0o111) === 0 ? ["/bin/sh", `./${name}`] : [`./${name}`] };
  }
  throw new ExecutorError("no_build_script", `no build script: neither .petrel nor .albatros at the root of ${label}`);
}

interface PlannedCache {
  name: string;
  /** As configured (`~/.npm`, `deps`), for messages. */
  path: string;
  target: string;
}

/** The caches' mount points, or a `cache_refused` error naming the first cache that cannot be mounted. */
function planCaches(plan: ExecutorPlan, buildDir: string): PlannedCache[] {
  const out: PlannedCache[] = [];
  for (const name of Object.keys(plan.caches).sort()) {
    const path = plan.caches[name] as string;
    if (!/^[A-Za-z0-9._-]+$/.test(name) || name === "." || name === "..") throw refuseCache(name, path, "not a valid cache name");
    if (path.split("/").includes("..")) throw refuseCache(name, path, "the path contains '..'");
    let target: string;
    if (path === "~" || path.startsWith("~/")) target = join(plan.home, path.slice(1));
    else if (isAbsolute(path)) target = normalize(path);
    else target = join(buildDir, path);
    if (!isAbsolute(target)) throw refuseCache(name, path, "not an absolute path once resolved");
    // A cache inside the cache root would be hidden from the build, or expose other repositories.
    if (within(plan.layout.root, target)) throw refuseCache(name, path, `it lies inside the cache directory ${plan.layout.root}`);
    if (target === buildDir) throw refuseCache(name, path, "it is the build directory itself");
    out.push({ name, path, target });
  }
  for (const a of out) {
    for (const b of out) {
      if (a !== b && within(a.target, b.target)) throw refuseCache(b.name, b.path, `it lies inside cache "${a.name}"`);
    }
  }
  return out;
}

/**
 * Refuses a cache whose mount point inside the build tree is not a plain directory of the tree: a symlink
 * (mount would follow it out of the tree) or a file where a directory must be. A mount point the tree lacks is
 * created in the build's own layer. Absolute and `~/` targets are checked too when they lead into the tree.
 */
async function checkCachesInTree(caches: readonly PlannedCache[], buildDir: string, tree: string): Promise<void> {
  const realBuildDir = await realpathLoose(buildDir);
  for (const c of caches) {
    let rel: string | undefined;
    if (within(buildDir, c.target)) rel = relative(buildDir, c.target);
    else {
      const real = await realpathLoose(c.target);
      if (real === realBuildDir) throw refuseCache(c.name, c.path, "it resolves to the build directory itself");
      if (within(realBuildDir, real)) rel = relative(realBuildDir, real);
    }
    if (rel === undefined) continue;
    let at = tree;
    const parts = rel.split("/").filter((p) => p !== "" && p !== ".");
    for (const [i, part] of parts.entries()) {
      if (part === "..") throw refuseCache(c.name, c.path, "it escapes the build tree");
      at = join(at, part);
      const shown = parts.slice(0, i + 1).join("/");
      let st: Stats;
      try {
        st = await lstat(at);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "ENOENT" || (err as NodeJS.ErrnoException).code === "ENOTDIR") break;
        throw err;
      }
      if (st.isSymbolicLink()) throw refuseCache(c.name, c.path, `"${shown}" in the tree is a symlink`);
      if (!st.isDirectory()) {
        const what = st.isFile() ? "a regular file" : "not a directory";
        throw refuseCache(c.name, c.path, `"${shown}" in the tree is ${what}`);
      }
    }
  }
}

function refuseCache(name: string, path: string, reason: string): ExecutorError {
  return new ExecutorError("cache_refused", `cache "${name}" (${path}) refused: ${reason}; nothing was mounted`);
}

/** True when `path` is `dir` or inside it (lexically). */
function within(dir: string, path: string): boolean {
  const rel = relative(dir, path);
  return rel === "" || (!rel.startsWith("..") && !isAbsolute(rel));
}

/** `realpath` of the longest existing prefix, with the rest appended; dangling symlinks are followed too. */
async function realpathLoose(path: string, depth = 0): Promise<string> {
  try {
    return await realpath(path);
  } catch {
    const parent = dirname(path);
    if (parent === path || depth > 40) return path;
    const realParent = await realpathLoose(parent, depth + 1);
    const link = await readlink(join(realParent, basename(path))).catch(() => undefined);
    if (link === undefined) return join(realParent, basename(path));
    return realpathLoose(isAbsolute(link) ? link : join(realParent, link), depth + 1);
  }
}

async function prepareCaches(plan: ExecutorPlan, planned: readonly PlannedCache[]): Promise<{ mounts: CacheMount[]; lock?: string }> {
  if (planned.length === 0) return { mounts: [] };
  // Untrusted builds (forks, unknown senders) get their own set, so they can never poison trusted builds' caches.
  const ns = plan.trusted ? "trusted" : "untrusted";
  const nsDir = join(plan.layout.caches, plan.repoSlug, ns);
  await mkdir(nsDir, { recursive: true });
  const mounts: CacheMount[] = [];
  for (const { name, target } of planned) {
    const source = join(nsDir, name);
    await mkdir(source, { recursive: true });
    await touch(source);
    mounts.push({ name, source, target });
  }
  // Held (shared) by the build's shell for as long as the build runs; eviction needs it exclusively.
  return { mounts, lock: `${nsDir}.lock` };
}

/**
 * Copy mode gives the build no mount namespace to hide the cache root in. It is refused for a commit's build
 * unless the build is trusted and the executor is root: the build then runs as an unprivileged user and the
 * cache root is made private to root. Returns that user, or undefined when the build runs as the executor.
 */
async function copyModeUser(plan: ExecutorPlan, modes: readonly string[], uid: number): Promise<typeof COPY_BUILD_USER | undefined> {
  if (!modes.includes("copy") || plan.source.kind !== "commit") return undefined;
  if (!plan.trusted) {
    throw new ExecutorError(
      "isolation_refused",
      "refusing to run an untrusted build (fork or unknown sender) with PETREL_ISOLATION=copy: copy mode cannot keep it away from the shared worktrees and caches; use mount or userns",
    );
  }
  if (uid !== 0) {
    throw new ExecutorError(
      "isolation_refused",
      "PETREL_ISOLATION=copy needs a root executor (the build runs as an unprivileged user, away from the cache directory); use userns or run the executor as root",
    );
  }
  await mkdir(plan.layout.root, { recursive: true });
  await chmod(plan.layout.root, 0o700);
  const st = await stat(plan.layout.root);
  if ((st.mode & 0o077) !== 0 || st.uid === COPY_BUILD_USER.uid) {
    throw new ExecutorError(
      "isolation_refused",
      `cannot make ${plan.layout.root} private to root (mode ${(st.mode & 0o777).toString(8)}): refusing copy mode`,
    );
  }
  return COPY_BUILD_USER;
}

/** A copy-mode build runs as another user: it must still read its own secrets. */
async function handSecretsTo(file: SecretsFile, user: { uid: number; gid: number }): Promise<void> {
  await chown(file.path, user.uid, user.gid);
  if (file.ownDir) await chmod(file.ownDir, 0o711);
}

function describeTree(mode: IsolationMode, buildDir: string, setupMs: number): string {
  if (mode === "copy") return `copy of the tree at ${buildDir} (no mounts possible) ${formatMs(setupMs)}`;
  const how = mode === "userns" ? "user + mount namespace" : "private mount namespace";
  return `overlay at ${buildDir} (${how}) ${formatMs(setupMs)}`;
}

function describeCaches(plan: ExecutorPlan, caches: readonly CacheMount[], mode: IsolationMode): string {
  const list = caches.map((c) => `${c.name}=${plan.caches[c.name] ?? c.target}`).join(", ");
  if (mode === "copy") return `caches: not mounted without mount namespaces (${list})`;
  return `caches ${list} (${plan.trusted ? "trusted" : "untrusted: separate from trusted builds"})`;
}

function describeSecrets(file: SecretsFile): string {
  const skipped = file.skipped.map((s) => JSON.stringify(s)).join(", ");
  const inject = file.inject ? " and the entry's inject text" : "";
  return `secrets: ${file.count}${inject} in $PETREL_SECRETS${skipped ? `; skipped ${skipped} (not shell names)` : ""}`;
}

async function asExecutorError(err: unknown, plan: ExecutorPlan, signal: AbortSignal | undefined): Promise<ExecutorError> {
  if (err instanceof ExecutorError) return err;
  if (signal?.aborted || (err as Error | undefined)?.name === "AbortError") {
    return new ExecutorError("cancelled", "cancelled", { cause: err });
  }
  if (isDiskFull(err)) return diskFull(plan.layout.root, err);
  return new ExecutorError("internal", (err as Error | undefined)?.message ?? String(err), { cause: err });
}

async function evict(plan: ExecutorPlan, say: (line: string) => void): Promise<void> {
  if (!plan.eviction) return;
  const started = performance.now();
  try {
    const { evictCaches } = await import("./evict.js");
    const report = await evictCaches(plan.layout, plan.eviction);
    if (report && (report.removed.length || report.inUse)) {
      const busy = report.inUse ? `, ${report.inUse} in use kept` : "";
      const freed = (report.freedBytes / 1024 ** 2).toFixed(1);
      say(`evicted ${report.removed.length} (${freed} MiB${busy}) ${formatMs(performance.now() - started)}`);
    }
  } catch (err) {
    say(`eviction failed: ${(err as Error).message}`);
  }
}
