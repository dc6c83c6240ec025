import { execFileSync, spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = fileURLToPath(new URL("../..", import.meta.url));
/** The production entry, `petrel` (runs dist/, built by test/global-setup.ts). */
export const PETREL = join(ROOT, "bin/petrel.js");

/** A fresh directory under the system temp dir, removed by `cleanup()`. */
export function tempDir(prefix: string): string {
  return mkdtempSync(join(tmpdir(), `petrel-test-${prefix}-`));
}

export function cleanup(...dirs: string[]): void {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
}

/** Runs a shell command synchronously and returns its stdout (throws on failure). */
export function sh(command: string, cwd?: string, env?: NodeJS.ProcessEnv): string {
  return execFileSync("/bin/sh", ["-c", command], { cwd, env: { ...process.env, ...env }, encoding: "utf8" });
}

const GIT_ID = { GIT_AUTHOR_NAME: "t", GIT_AUTHOR_EMAIL: "t@example.test", GIT_COMMITTER_NAME: "t", GIT_COMMITTER_EMAIL: "t@example.test" };

/** A bare "remote" repository plus a work clone to commit from; `url` is the remote's file:// URL. */
export interface TestRepo {
  bare: string;
  work: string;
  url: string;
  /** Writes files (path → content; `null` deletes), commits, pushes to `branch` and returns the commit id. */
  commit(files: Record<string, string | null>, opts?: { branch?: string; executable?: string[]; push?: string }): string;
}

/** Creates a bare repository at `<dir>/remote.git` with a work clone at `<dir>/work`. */
export function createRepo(dir: string): TestRepo {
  const bare = join(dir, "remote.git");
  const work = join(dir, "work");
  sh(`git init -q --bare -b main ${bare} && git init -q -b main ${work}`);
  return {
    bare,
    work,
    url: `file://${bare}`,
    commit(files, opts = {}) {
      const branch = opts.branch ?? "main";
      sh(`git checkout -q -B ${branch}`, work);
      for (const [path, content] of Object.entries(files)) {
        const full = join(work, path);
        if (content === null) rmSync(full, { force: true });
        else {
          mkdirSync(dirname(full), { recursive: true });
          writeFileSync(full, content);
        }
      }
      for (const path of opts.executable ?? []) chmodSync(join(work, path), 0o755);
      sh("git add -A && git commit -q --allow-empty -m change", work, GIT_ID);
      const id = sh("git rev-parse HEAD", work).trim();
      sh(`git push -q ${bare} HEAD:${opts.push ?? `refs/heads/${branch}`}`, work);
      return id;
    },
  };
}

/** A build script: `.petrel` with the given shell body, executable. */
export function script(body: string): Record<string, string> {
  return { ".petrel": `#!/bin/sh\n${body}\n` };
}

export interface RunOptions {
  meta: Record<string, string>;
  cacheDir: string;
  taskDir?: string;
  secretsDir?: string;
  jobId?: string;
  env?: NodeJS.ProcessEnv;
  payload?: unknown;
  /** Text handed over a pipe as descriptor 3 with PETREL_PAYLOAD_FD=3, as the single-machine backend does. */
  payloadPipe?: string;
  /** Wrap the command (e.g. `unshare --mount sh -c '...' --`). */
  prefix?: string[];
  onStdout?: (text: string, pid: number) => void;
  onStderr?: (text: string, pid: number) => void;
  onSpawn?: (pid: number) => void;
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs `petrel executor` (bin/petrel.js) as a Nomad task would, in its own process group. */
export function runExecutor(opts: RunOptions): Promise<RunResult> {
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    NOMAD_JOB_ID: opts.jobId ?? `builder/dispatch-${Math.floor(Date.now() / 1000)}-${randomHex()}`,
    PETREL_CACHE_DIR: opts.cacheDir,
    PETREL_KILL_GRACE: "2s",
    PETREL_EVICT_INTERVAL: "1000d",
    ...opts.env,
  };
  for (const [k, v] of Object.entries(opts.meta)) env[`NOMAD_META_${k}`] = v;
  if (opts.taskDir) {
    env.NOMAD_TASK_DIR = opts.taskDir;
    mkdirSync(opts.taskDir, { recursive: true });
    if (opts.payload !== undefined) writeFileSync(join(opts.taskDir, "payload.json"), JSON.stringify(opts.payload));
  }
  if (opts.secretsDir) env.NOMAD_SECRETS_DIR = opts.secretsDir;
  if (opts.payloadPipe !== undefined) env.PETREL_PAYLOAD_FD = "3";
  const argv = [...(opts.prefix ?? []), process.execPath, PETREL, "executor"];
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const stdio = opts.payloadPipe === undefined ? ["ignore", "pipe", "pipe"] : ["ignore", "pipe", "pipe", "pipe"];
    const child = spawn(argv[0] as string, argv.slice(1), { env, stdio: stdio as ["ignore", "pipe", "pipe"], detached: true });
    if (opts.payloadPipe !== undefined) {
      const pipe = child.stdio[3] as NodeJS.WritableStream;
      pipe.on("error", () => undefined);
      pipe.end(opts.payloadPipe);
    }
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => {
      stdout += d;
      opts.onStdout?.(stdout, child.pid as number);
    });
    child.stderr.setEncoding("utf8").on("data", (d: string) => {
      stderr += d;
      opts.onStderr?.(stderr, child.pid as number);
    });
    if (child.pid) opts.onSpawn?.(child.pid);
    child.on("error", reject);
    child.on("close", (code, signal) => resolve({ code, signal, stdout, stderr, ms: performance.now() - started }));
  });
}

export function randomHex(): string {
  return Math.floor(Math.random() * 0xffffffff)
    .toString(16)
    .padStart(8, "0");
}

/** Standard meta for a push to main. */
export function pushMeta(repo: TestRepo, commit: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    REPO_URL: repo.url,
    COMMIT: commit,
    BRANCH: "main",
    FLAVOR: "default",
    REPO: "acme/widgets",
    EVENT: "push",
    TRUSTED: "false",
    ...extra,
  };
}

/** Path → (type, mode, content hash) of every entry under `dir`, including `.git`: equal maps mean identical trees. */
export function treeDigest(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (rel: string) => {
    const full = join(dir, rel);
    const st = lstatSync(full);
    const mode = (st.mode & 0o7777).toString(8);
    if (st.isSymbolicLink()) out.set(rel, `l ${readlinkSync(full)}`);
    else if (st.isDirectory()) {
      out.set(rel, `d ${mode} ${st.mtimeMs}`);
      for (const name of readdirSync(full).sort()) walk(rel ? `${rel}/${name}` : name);
    } else out.set(rel, `f ${mode} ${st.size} ${createHash("sha256").update(readFileSync(full)).digest("hex")} ${st.mtimeMs}`);
  };
  walk("");
  return out;
}

/** Mount points of this process's mount namespace (the host's, for the test process). */
/**
 * Mounts on the host whose mount point lies under one of `roots` (the test's own directories, and where the
 * executor puts build directories), so another program mounting elsewhere on the machine cannot fail a test.
 */
export function mountPoints(...roots: string[]): string[] {
  const under = [...roots, join(tmpdir(), "petrel-build-")];
  return readFileSync("/proc/self/mountinfo", "utf8")
    .split("\n")
    .filter(Boolean)
    .map((line) => line.split(" ").slice(3, 5))
    .filter(([, point]) => point !== undefined && under.some((root) => point.startsWith(root)))
    .map((fields) => fields.join(" "))
    .sort();
}

/**
 * Whether this process may create a private mount namespace and mount overlayfs in it. CI runs as root, where
 * these tests must run: there a missing capability fails the suite instead of skipping the isolation tests.
 */
export function mountSupport(): { ok: boolean; reason: string } {
  const support = probeMounts();
  if (!support.ok && process.env.CI && process.getuid?.() === 0) {
    throw new Error(`CI runs as root but overlay mounts fail, so the isolation tests cannot run: ${support.reason}`);
  }
  return support;
}

function probeMounts(): { ok: boolean; reason: string } {
  const dir = mkdtempSync(join(tmpdir(), "petrel-probe-"));
  try {
    for (const d of ["l", "u", "w", "m"]) mkdirSync(join(dir, d));
    const r = spawnSync(
      "unshare",
      ["--mount", "--propagation", "private", "--", "/bin/sh", "-c", "mount -t overlay probe -o lowerdir=l,upperdir=u,workdir=w m"],
      { cwd: dir, encoding: "utf8" },
    );
    if (r.error) return { ok: false, reason: `unshare unavailable: ${r.error.message}` };
    return r.status === 0 ? { ok: true, reason: "" } : { ok: false, reason: (r.stderr || `exit ${r.status}`).trim() };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** True when a process with this pid exists (and is not a zombie). */
export function isAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return !/^\d+ \(.*\) Z/.test(stat);
  } catch {
    return false;
  }
}

/** Polls `check` every 10 ms until it returns true or `ms` pass. */
export async function waitFor(check: () => boolean, ms: number): Promise<boolean> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (check()) return true;
    await new Promise((r) => setTimeout(r, 10));
  }
  return check();
}
