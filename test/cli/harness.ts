import { execFileSync, spawn } from "node:child_process";
import { chmodSync, mkdtempSync, writeFileSync } from "node:fs";
import type { Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough, Readable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { serve } from "@hono/node-server";
import type { Hono } from "hono";
import { createApp } from "../../src/app.js";
import type { CliIo } from "../../src/cli/ops.js";
import type { StatusReporter } from "../../src/gitea/client.js";
import type { LocalBackend } from "../../src/local/backend.js";
import { createLocalBackend } from "../../src/local/backend.js";
import { createMetrics } from "../../src/metrics.js";
import { createFileRegistry } from "../../src/registry/file.js";
import type { Registry } from "../../src/registry/schema.js";
import { captureLogs } from "../helpers/log-capture.js";

export const ADMIN_TOKEN = "admin-token-0123456789abcdef";

/** In-memory stdout/stderr (and an optional stdin) for running a command in-process. */
export interface CapturedIo {
  io: CliIo;
  stdout(): string;
  stdoutBytes(): Buffer;
  stderr(): string;
}

export function captureIo(stdin = ""): CapturedIo {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  stdout.on("data", (c: Buffer) => out.push(c));
  stderr.on("data", (c: Buffer) => err.push(c));
  return {
    io: { stdout, stderr, stdin: Readable.from([Buffer.from(stdin)]) },
    stdout: () => Buffer.concat(out).toString("utf8"),
    stdoutBytes: () => Buffer.concat(out),
    stderr: () => Buffer.concat(err).toString("utf8"),
  };
}

/** Serves a Hono app over a real socket on 127.0.0.1, port 0. */
export async function listen(app: Pick<Hono, "fetch">): Promise<{ url: string; close(): Promise<void> }> {
  const server = await new Promise<Server>((resolve) => {
    const s = serve({ fetch: app.fetch, hostname: "127.0.0.1", port: 0 }, () => resolve(s as Server));
  });
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

const NO_REPORTS: StatusReporter = { report: () => undefined, drain: async () => undefined };

/** A single-machine petrel (YAML registry, local backend running a shell script as the executor) on a socket. */
export interface LocalPetrel {
  url: string;
  dir: string;
  backend: LocalBackend;
  /** acme/widgets as a real bare repository (its entry's `clone_url`) and the heads of its refs. */
  repo: WidgetsRepo;
  close(): Promise<void>;
}

/**
 * The stand-in executor behaves by branch: `fail-N` exits N, `slow` waits for `<dir>/gate`, `sleep` runs until
 * cancelled, `chatty` prints a line every 50 ms until cancelled, anything else prints to both logs and succeeds. Its stdout carries ANSI colour and a non-UTF-8 byte.
 */
export async function startLocalPetrel(): Promise<LocalPetrel> {
  const dir = mkdtempSync(join(tmpdir(), "petrel-cli-"));
  const script = join(dir, "executor.sh");
  writeFileSync(
    script,
    `#!/bin/sh
# Like the real executor: every line also goes to the merged log petrel gives it.
exec 3>>"\${PETREL_MERGED_LOG:-/dev/null}"
out() { printf "$@"; printf "$@" >&3; }
err() { printf "$@" >&2; printf "$@" >&3; }
out '\\033[32mbuilding\\033[0m %s\\n\\377raw\\n' "$NOMAD_META_COMMIT"
err '==> step header\\n'
case "$NOMAD_META_BRANCH" in
  fail-*) exit "\${NOMAD_META_BRANCH#fail-}" ;;
  slow) while [ ! -e "${dir}/gate" ]; do sleep 0.05; done; out 'after gate\\n' ;;
  sleep) exec sleep 30 ;;
  chatty) while :; do out 'tick\\n'; sleep 0.05; done ;;
esac
out 'done\\n'
`,
  );
  chmodSync(script, 0o755);
  const repo = makeWidgetsRepo(dir);
  const configPath = join(dir, "petrel.yaml");
  writeFileSync(
    configPath,
    `repos:\n  git.example.test/acme/widgets:\n    hook: { secret: "local-hook-secret-0123456789" }\n    logs: public\n    clone_url: "${repo.url}"\n  git.example.test/acme/private:\n    hook: { secret: "local-hook-secret-0123456789" }\n    logs: token\n`,
  );
  const served = await serveLocal({ dir, configPath, executor: [script], concurrency: 4 });
  return { url: served.url, dir, backend: served.backend, repo, close: served.close };
}

/** A single-machine petrel app on a socket: the YAML registry at `configPath`, the local backend under `dir`. */
export async function serveLocal(options: {
  dir: string;
  configPath: string;
  executor: string[];
  concurrency: number;
  /** PETREL_URL; https by default (the pages' cookies are then `Secure`). */
  publicUrl?: string;
}): Promise<{ url: string; registry: Registry; backend: LocalBackend; close(): Promise<void> }> {
  const { log } = captureLogs("silent");
  const registry = await createFileRegistry({ path: options.configPath, defaultBuilder: "builder", log });
  const backend = await createLocalBackend({
    dataDir: join(options.dir, "data"),
    concurrency: options.concurrency,
    log,
    executor: options.executor,
    killTimeoutMs: 1000,
    env: { PATH: process.env.PATH },
  });
  const app = createApp({
    log,
    metrics: createMetrics({ staleness: () => ({ seconds: 0, ok: true }) }),
    registry,
    backend,
    reader: backend,
    reporter: NO_REPORTS,
    publicUrl: options.publicUrl ?? "https://ci.example.test",
    defaultBuilder: "builder",
    adminToken: ADMIN_TOKEN,
  });
  const server = await listen(app);
  return {
    url: server.url,
    registry,
    backend,
    async close() {
      await server.close();
      await backend.close();
      await registry.close();
    },
  };
}

export interface WidgetsRepo {
  url: string;
  /** Heads of `main` and `fail-3` (the stand-in executor exits 3 on that branch). */
  main: string;
  fail3: string;
  /** A commit only on `refs/pull/1/head`, as a fork's pull request leaves it in the base repository. */
  pull: string;
}

const GIT_ENV = {
  GIT_AUTHOR_NAME: "t",
  GIT_AUTHOR_EMAIL: "t@example.test",
  GIT_COMMITTER_NAME: "t",
  GIT_COMMITTER_EMAIL: "t@example.test",
};

/** A real bare repository with `main`, `fail-3` and a pull request ref whose commit no branch reaches. */
function makeWidgetsRepo(dir: string): WidgetsRepo {
  const bare = join(dir, "remote", "acme", "widgets.git");
  const src = join(dir, "widgets-src");
  const git = (...args: string[]) => execFileSync("git", args, { cwd: src, env: { ...process.env, ...GIT_ENV }, encoding: "utf8" }).trim();
  execFileSync("git", ["init", "-q", "--bare", "-b", "main", bare]);
  execFileSync("git", ["init", "-q", "-b", "main", src]);
  git("commit", "-q", "--allow-empty", "-m", "main");
  const main = git("rev-parse", "HEAD");
  git("commit", "-q", "--allow-empty", "-m", "fail");
  const fail3 = git("rev-parse", "HEAD");
  git("push", "-q", bare, `${main}:refs/heads/main`, `${fail3}:refs/heads/fail-3`);
  git("checkout", "-q", "--detach", main);
  git("commit", "-q", "--allow-empty", "-m", "fork code");
  const pull = git("rev-parse", "HEAD");
  git("push", "-q", bare, `${pull}:refs/pull/1/head`);
  return { url: `file://${bare}`, main, fail3, pull };
}

/** Dispatch meta of a build of acme/widgets at `branch`. */
export function meta(branch: string, commit = "4c1d7e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d", repo = "acme/widgets"): Record<string, string> {
  return { REPO_URL: `https://git.example.test/${repo}.git`, COMMIT: commit, BRANCH: branch, FLAVOR: "default", REPO: repo };
}

/** Polls until `what` answers something other than undefined/false. */
export async function until<T>(what: () => Promise<T | undefined | false> | T | undefined | false, ms = 10_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await what();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error("condition not met in time");
    await sleep(25);
  }
}

const BIN = fileURLToPath(new URL("../../bin/petrel.js", import.meta.url));

/** Runs the compiled CLI (`node bin/petrel.js ...`) as a user would; resolves with its exit code and output. */
export function runBin(
  args: string[],
  env: Record<string, string | undefined>,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { env: { PATH: process.env.PATH, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (c: Buffer) => out.push(c));
    child.stderr.on("data", (c: Buffer) => err.push(c));
    child.once("error", reject);
    child.once("close", (code) =>
      resolve({ code, stdout: Buffer.concat(out).toString("utf8"), stderr: Buffer.concat(err).toString("utf8") }),
    );
  });
}
