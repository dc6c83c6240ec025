import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, constants, openSync } from "node:fs";
import { chmod, mkdir, mkdtemp, rmdir, symlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ExecutorError } from "./errors.js";
import { removeTree } from "./fsutil.js";
import { exitCode, lastLine, shellQuote } from "./proc.js";

/**
 * How the build's tree is isolated: `auto` picks mount (root) or userns (not root), never copy on its own; copy
 * only where the operator asked for it (or `petrel run` falls back to it for the developer's own tree).
 */
export type Isolation = "auto" | "mount" | "userns" | "copy";
/** What actually ran. */
export type IsolationMode = "mount" | "userns" | "copy";

/** A named cache directory bind-mounted at `target` for the build. */
export interface CacheMount {
  name: string;
  source: string;
  target: string;
}

/** Everything needed to run one build script in an isolated tree. */
export interface SandboxSpec {
  /** Read-only tree the build starts from (base worktree or a developer's working tree). */
  lower: string;
  /** Per-build scratch directory (overlay upper and work, or the copy); deleted afterwards. */
  buildRoot: string;
  /** Where the build sees its tree when mounts are possible. */
  buildDir: string;
  /** `buildDir` was created for this build and is removed afterwards (never true for a working tree). */
  ownsBuildDir: boolean;
  caches: readonly CacheMount[];
  /**
   * Copy mode only: run the build as this unprivileged user, in a private copy outside the cache root, so it
   * cannot reach the cache root or the shared worktrees (root executors; see build.ts).
   */
  copyAs?: { uid: number; gid: number };
  /** Directories covered by an empty tmpfs inside the build's mount namespace. */
  hide: readonly string[];
  /** Paths made read-only inside the build's mount namespace. */
  readOnly: readonly string[];
  /** The build command, run in the build directory. */
  command: readonly string[];
  env: NodeJS.ProcessEnv;
  /** Open `$SHELL -i` in the build directory when the command fails. */
  debug: boolean;
  /** Run the build in its own session so the whole process group can be stopped. */
  newSession: boolean;
  killGraceMs: number;
  /**
   * Files locked (flock) by the build's own shell before anything else, on descriptors the executor keeps open
   * until the build has been cleaned up: the lock lives exactly as long as the build, at no extra process
   * spawn for the executor.
   */
  locks: readonly { path: string; shared: boolean }[];
  /** Takes the build's stdout and stderr as pipes (the merged log); without it they are the executor's own. */
  output?: ((stdout: import("node:stream").Readable, stderr: import("node:stream").Readable) => void) | undefined;
}

/** Called once the tree is ready and before the build command starts; prints the step headers. */
export interface SandboxHooks {
  ready(info: { mode: IsolationMode; buildDir: string; setupMs: number; cachesMounted: boolean; home?: string }): void;
  fallback(info: { from: IsolationMode; to: IsolationMode; reason: string }): void;
}

/** How the build ended; `lower_gone`: the tree to build vanished before it could be locked (retry). */
export type SandboxResult = { kind: "ran"; exitCode: number; mode: IsolationMode; cancelled: boolean } | { kind: "lower_gone" };

const READY = "@@petrel-ready@@";
const SETUP_FAILED = 125;
const LOWER_GONE = 124;
// strerror(ENOSPC): what cp and mount print on a full disk.
const ENOSPC_TEXT = "No space left on device";
const FIRST_LOCK_FD = 5;
const DROPPED_CAPS = ["sys_admin", "sys_ptrace", "sys_module", "sys_rawio", "sys_boot", "mac_admin", "mac_override"] as const;

/**
 * The modes to try, in order, for a process with this uid. `auto` never falls back to a copy unless
 * `copyFallback` (`petrel run` building the developer's own tree): a build that cannot be isolated fails.
 */
export function modesFor(isolation: Isolation, uid: number, copyFallback = false): IsolationMode[] {
  if (isolation !== "auto") return [isolation];
  const first: IsolationMode = uid === 0 ? "mount" : "userns";
  return copyFallback ? [first, "copy"] : [first];
}

/**
 * Runs the build command on an overlay of `lower` inside a private mount namespace (`unshare`), so the mounts
 * vanish with the build's last process; where mounting fails, the next of `modes` is tried, if any.
 */
export async function runSandbox(
  spec: SandboxSpec,
  modes: readonly IsolationMode[],
  hooks: SandboxHooks,
  signal?: AbortSignal,
): Promise<SandboxResult> {
  const lockFds = spec.locks.map((l) => openSync(l.path, constants.O_RDWR | constants.O_CREAT, 0o644));
  const privateDirs: string[] = [];
  try {
    for (let i = 0; i < modes.length; i++) {
      const mode = modes[i] as IsolationMode;
      const started = performance.now();
      const { buildDir, privateDir } = await prepare(spec, mode);
      if (privateDir) privateDirs.push(privateDir);
      const outcome = await launch(spec, mode, buildDir, started, hooks, lockFds, signal);
      if (outcome.kind === "ran") return { kind: "ran", exitCode: outcome.exitCode, mode, cancelled: outcome.cancelled };
      if (signal?.aborted) return { kind: "ran", exitCode: 143, mode, cancelled: true };
      if (outcome.kind === "lower_gone") return { kind: "lower_gone" };
      await removeTree(spec.buildRoot);
      if (outcome.reason.includes(ENOSPC_TEXT)) {
        throw new ExecutorError("disk_full", `disk full: ${outcome.reason}`);
      }
      const next = modes[i + 1];
      if (next === undefined) {
        throw new ExecutorError("mount_failed", `cannot set up the build tree (${mode}): ${outcome.reason}`);
      }
      hooks.fallback({ from: mode, to: next, reason: outcome.reason });
    }
    throw new ExecutorError("internal", "no isolation mode to try");
  } finally {
    await removeTree(spec.buildRoot).catch(() => undefined);
    for (const d of privateDirs) await removeTree(d).catch(() => undefined);
    if (spec.ownsBuildDir) await rmdir(spec.buildDir).catch(() => undefined);
    for (const fd of lockFds) closeSync(fd);
  }
}

async function prepare(spec: SandboxSpec, mode: IsolationMode): Promise<{ buildDir: string; privateDir?: string }> {
  await mkdir(spec.buildRoot, { recursive: true });
  // Mount options and the copy are relative to the build root, so no path needs escaping for overlayfs.
  await symlink(spec.lower, join(spec.buildRoot, "lower"));
  if (mode === "copy") {
    // Outside the cache root: a build working inside it could walk from its tree to the shared worktrees.
    const privateDir = await mkdtemp(join(tmpdir(), "petrel-copy-"));
    // Only traversable: the tree and the home in it belong to the build user, the directory stays root's.
    if (spec.copyAs) await chmod(privateDir, 0o711);
    await mkdir(join(privateDir, "tree"));
    if (spec.copyAs) await mkdir(join(privateDir, "home"));
    return { buildDir: join(privateDir, "tree"), privateDir };
  }
  await mkdir(join(spec.buildRoot, "upper"));
  await mkdir(join(spec.buildRoot, "work"));
  if (spec.ownsBuildDir) await mkdir(spec.buildDir, { recursive: true });
  return { buildDir: spec.buildDir };
}

/** The home a copy-mode build run as `copyAs` gets (its own HOME is root's, which it cannot write). */
export function copyHome(buildDir: string): string {
  return join(buildDir, "..", "home");
}

/** The shell program run inside the namespace: mounts, handshake, then exec of the build command. */
export function setupScript(spec: SandboxSpec, mode: IsolationMode, buildDir: string): string {
  const q = shellQuote;
  const lines: string[] = [];
  spec.locks.forEach((lock, i) => {
    lines.push(`flock ${lock.shared ? "-s" : "-x"} ${FIRST_LOCK_FD + i} 2>&3 || exit ${SETUP_FAILED}`);
  });
  lines.push(`cd -- ${q(spec.buildRoot)} 2>&3 || exit ${SETUP_FAILED}`);
  // Checked under the locks: eviction may have taken an unlocked worktree after the executor saw it.
  lines.push(`[ -d lower/ ] || exit ${LOWER_GONE}`);
  if (mode === "copy") {
    // --reflink=auto shares blocks on btrfs/xfs and degrades to a plain copy elsewhere.
    lines.push(`cp -a --reflink=auto -- lower/. ${q(buildDir)} 2>&3 || exit ${SETUP_FAILED}`);
    if (spec.copyAs) {
      const owner = `${spec.copyAs.uid}:${spec.copyAs.gid}`;
      lines.push(`chown -R -- ${owner} ${q(buildDir)} ${q(copyHome(buildDir))} 2>&3 || exit ${SETUP_FAILED}`);
      lines.push(`HOME=${q(copyHome(buildDir))}; export HOME`);
    }
  } else {
    // The worktree under the overlay is read-only in the build's namespace too, whatever else goes wrong.
    lines.push(`mount --bind -o ro -- lower lower 2>&3 || exit ${SETUP_FAILED}`);
    lines.push(`mount -t overlay petrel -o lowerdir=lower,upperdir=upper,workdir=work -- ${q(buildDir)} 2>&3 || exit ${SETUP_FAILED}`);
    for (const c of spec.caches) {
      // The source is re-created under the lock in case eviction took it between the executor's check and now.
      const [source, target] = [q(c.source), q(c.target)];
      lines.push(`mkdir -p -- ${source} ${target} 2>&3 && mount --bind -- ${source} ${target} 2>&3 || exit ${SETUP_FAILED}`);
    }
    for (const path of spec.readOnly) {
      const p = q(path);
      lines.push(`mount --bind -- ${p} ${p} 2>&3 && mount -o remount,bind,ro -- ${p} 2>&3 || exit ${SETUP_FAILED}`);
    }
    for (const dir of spec.hide) {
      lines.push(`mount -t tmpfs -o size=16k,mode=0755 petrel-hidden -- ${q(dir)} 2>&3 || exit ${SETUP_FAILED}`);
    }
  }
  lines.push(`cd -- ${q(buildDir)} 2>&3 || exit ${SETUP_FAILED}`);
  if (mode !== "copy" || spec.copyAs) {
    lines.push(`command -v setpriv >/dev/null || { echo "setpriv (util-linux) not found" >&3; exit ${SETUP_FAILED}; }`);
  }
  lines.push(`printf '\\n%s\\n' ${q(READY)} >&3`);
  lines.push(`read -r _ <&4 || exit ${SETUP_FAILED}`);
  lines.push(["exec 3>&- 4<&-", ...spec.locks.map((_, i) => `${FIRST_LOCK_FD + i}<&-`)].join(" "));
  // Without CAP_SYS_ADMIN the build cannot unmount what hides the cache directory or mount anything else,
  // and without CAP_SYS_PTRACE it cannot read the executor's memory.
  const drop = dropPrivileges(spec, mode);
  const cmd = [...drop, ...spec.command].map(q).join(" ");
  if (spec.debug) {
    lines.push(cmd, "rc=$?");
    const notice = "==> build failed (exit %s): debug shell in %s with the build environment; exit it to finish\\n";
    lines.push(`if [ "$rc" -ne 0 ]; then printf '${notice}' "$rc" "$PWD" >&2; "\${SHELL:-/bin/sh}" -i; fi`);
    lines.push('exit "$rc"');
  } else {
    lines.push(`exec ${cmd}`);
  }
  return lines.join("\n");
}

function dropPrivileges(spec: SandboxSpec, mode: IsolationMode): string[] {
  if (mode !== "copy") return ["setpriv", `--bounding-set=${DROPPED_CAPS.map((c) => `-${c}`).join(",")}`, "--"];
  if (!spec.copyAs) return [];
  const { uid, gid } = spec.copyAs;
  // No capabilities and no setuid way back: the cache root (0700, root's) is out of the build's reach.
  return [
    "setpriv",
    `--reuid=${uid}`,
    `--regid=${gid}`,
    "--clear-groups",
    "--bounding-set=-all",
    "--inh-caps=-all",
    "--no-new-privs",
    "--",
  ];
}

function argvFor(mode: IsolationMode, script: string): string[] {
  const sh = ["/bin/sh", "-c", script, "petrel-build"];
  if (mode === "mount") return ["unshare", "--mount", "--propagation", "private", "--", ...sh];
  if (mode === "userns") return ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private", "--", ...sh];
  return sh;
}

type Outcome = { kind: "ran"; exitCode: number; cancelled: boolean } | { kind: "setup_failed"; reason: string } | { kind: "lower_gone" };

function launch(
  spec: SandboxSpec,
  mode: IsolationMode,
  buildDir: string,
  started: number,
  hooks: SandboxHooks,
  lockFds: readonly number[],
  signal?: AbortSignal,
): Promise<Outcome> {
  const argv = argvFor(mode, setupScript(spec, mode, buildDir));
  return new Promise((resolve, reject) => {
    let child: ChildProcess;
    try {
      child = spawn(argv[0] as string, argv.slice(1), {
        env: spec.env,
        stdio: ["inherit", spec.output ? "pipe" : "inherit", spec.output ? "pipe" : "inherit", "pipe", "pipe", ...lockFds],
        detached: spec.newSession,
      });
    } catch (err) {
      reject(err);
      return;
    }
    let ready = false;
    let diag = "";
    let cancelled = false;
    let killTimer: NodeJS.Timeout | undefined;
    if (spec.output && child.stdout && child.stderr) spec.output(child.stdout, child.stderr);
    const control = child.stdio[3] as NodeJS.ReadableStream | null;
    const go = child.stdio[4] as NodeJS.WritableStream | null;
    const kill = (sig: NodeJS.Signals) => {
      if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
      try {
        process.kill(spec.newSession ? -child.pid : child.pid, sig);
      } catch {
        // Already gone.
      }
    };
    const onAbort = () => {
      cancelled = true;
      kill("SIGTERM");
      killTimer = setTimeout(() => kill("SIGKILL"), spec.killGraceMs);
      killTimer.unref();
    };
    if (signal?.aborted) onAbort();
    else signal?.addEventListener("abort", onAbort, { once: true });
    control?.setEncoding("utf8");
    control?.on("data", (d: string) => {
      diag += d;
      if (ready || !diag.includes(`\n${READY}\n`)) return;
      ready = true;
      try {
        const home = mode === "copy" && spec.copyAs ? { home: copyHome(buildDir) } : {};
        hooks.ready({ mode, buildDir, setupMs: performance.now() - started, cachesMounted: mode !== "copy", ...home });
      } finally {
        go?.end("go\n");
      }
    });
    control?.on("error", () => undefined);
    go?.on("error", () => undefined);
    child.on("error", (err: NodeJS.ErrnoException) => {
      signal?.removeEventListener("abort", onAbort);
      if (err.code === "ENOENT") resolve({ kind: "setup_failed", reason: `${argv[0]} not found` });
      else reject(err);
    });
    child.on("exit", (code, sig) => {
      signal?.removeEventListener("abort", onAbort);
      if (killTimer) clearTimeout(killTimer);
      // Processes the build left behind in its group die with it.
      if (spec.newSession && child.pid !== undefined) {
        try {
          process.kill(-child.pid, "SIGKILL");
        } catch {
          // Nothing left.
        }
      }
      const status = exitCode(code, sig);
      if (ready || cancelled) resolve({ kind: "ran", exitCode: status, cancelled });
      else if (status === LOWER_GONE) resolve({ kind: "lower_gone" });
      else resolve({ kind: "setup_failed", reason: lastLine(diag.replace(READY, "")) || `setup exited ${status}` });
    });
  });
}
