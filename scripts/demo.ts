/**
 * `npm run demo`: a build end to end on this machine, with no side effects. Makes a throwaway git repository
 * with a `.petrel`, starts a petrel of its own (single-machine mode, a temporary `petrel.yaml` and data
 * directory, a free port), sends a signed push webhook as Gitea would, follows the build's log to the end,
 * then stops that petrel and removes every temporary folder. Your own `petrel.yaml` and a petrel you run are
 * never touched.
 */

import type { ChildProcess } from "node:child_process";
import { execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdtempSync, writeFileSync } from "node:fs";
import { rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { sign } from "../src/gitea/signature.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const say = (line: string) => process.stderr.write(`demo: ${line}\n`);

async function healthy(url: string): Promise<boolean> {
  try {
    const res = await fetch(`${url}/health`, { signal: AbortSignal.timeout(1000) });
    return res.ok;
  } catch {
    return false;
  }
}

/** A port nothing listens on right now, chosen by the kernel. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

function git(cwd: string, ...args: string[]): string {
  const who = {
    GIT_AUTHOR_NAME: "demo",
    GIT_AUTHOR_EMAIL: "demo@example.test",
    GIT_COMMITTER_NAME: "demo",
    GIT_COMMITTER_EMAIL: "demo@example.test",
  };
  return execFileSync("git", args, { cwd, encoding: "utf8", env: { ...process.env, ...who } }).trim();
}

async function demo(work: string, started: (child: ChildProcess) => void): Promise<number> {
  // A repository with a build script, as a repository author would write it.
  const bare = join(work, "acme", "hello.git");
  const src = join(work, "src");
  execFileSync("git", ["init", "-q", "--bare", "-b", "main", bare]);
  execFileSync("git", ["init", "-q", "-b", "main", src]);
  writeFileSync(
    join(src, ".petrel"),
    '#!/bin/sh\nset -eu\necho "building $REPO_URL at $COMMIT on $BRANCH (flavor $FLAVOR)"\nfor step in fetch compile test; do echo "  $step ... ok"; sleep 0.3; done\necho "\\033[32mall green\\033[0m"\n',
  );
  chmodSync(join(src, ".petrel"), 0o755);
  git(src, "add", ".petrel");
  git(src, "commit", "-q", "-m", "demo build script");
  git(src, "push", "-q", bare, "main");
  const commit = git(src, "rev-parse", "HEAD");

  // petrel's own configuration for this run only: the repository is registered before petrel starts.
  const secret = randomBytes(16).toString("hex");
  const key = "demo.petrel.local/acme/hello";
  const configPath = join(work, "petrel.yaml");
  // clone_url: builds clone the local bare repository; a webhook's own clone URL must name the registered host.
  writeFileSync(
    configPath,
    `repos:\n  ${key}:\n    hook: { secret: "${secret}" }\n    trusted: { senders: [demo] }\n    clone_url: "file://${bare}"\n`,
    { mode: 0o600 },
  );

  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  say(`starting a petrel of its own at ${url} (configuration and data in ${work}, removed afterwards)`);
  if (!existsSync(join(ROOT, "dist/cli/main.js"))) execFileSync("npm", ["run", "build", "--silent"], { cwd: ROOT, stdio: "inherit" });
  const env = {
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    PETREL_LISTEN: `127.0.0.1:${port}`,
    PETREL_CONFIG: configPath,
    PETREL_DATA_DIR: join(work, "data"),
    LOG_LEVEL: "warn",
  };
  started(spawn(process.execPath, [join(ROOT, "bin/petrel.js"), "serve"], { env, stdio: ["ignore", "inherit", "inherit"] }));
  for (let i = 0; i < 100 && !(await healthy(url)); i++) await sleep(100);
  if (!(await healthy(url))) throw new Error(`petrel did not come up at ${url}`);

  const body = JSON.stringify(
    {
      ref: "refs/heads/main",
      before: "0".repeat(40),
      after: commit,
      commits: [],
      head_commit: { id: commit, message: "demo build script\n" },
      repository: { name: "hello", full_name: "acme/hello", private: false, html_url: `https://${key}`, clone_url: `https://${key}.git` },
      pusher: { login: "demo" },
      sender: { login: "demo" },
    },
    null,
    2,
  );
  const res = await fetch(`${url}/hook`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      "x-gitea-event": "push",
      "x-gitea-delivery": crypto.randomUUID(),
      "x-gitea-signature": sign(secret, body),
    },
    body,
  });
  const answer = (await res.json()) as { build?: string; error?: { message: string } };
  if (res.status !== 201 || answer.build === undefined) throw new Error(`webhook answered ${res.status}: ${JSON.stringify(answer)}`);
  const build = answer.build;
  say(`webhook answered ${res.status}: build ${build}`);
  say(`following ${url}/builds/${encodeURIComponent(build)}/logs?follow=true`);

  const follow = async (type: string) => {
    const logs = await fetch(`${url}/builds/${encodeURIComponent(build)}/logs?type=${type}&follow=true`);
    for await (const chunk of (logs.body ?? []) as unknown as AsyncIterable<Uint8Array>)
      (type === "stdout" ? process.stdout : process.stderr).write(chunk);
  };
  await Promise.all([follow("stderr"), follow("stdout")]);
  const done = (await (await fetch(`${url}/builds/${encodeURIComponent(build)}`)).json()) as { state: string; exitCode?: number };
  say(`build ${done.state}${done.exitCode === undefined ? "" : ` (exit code ${done.exitCode})`}`);
  return done.state === "success" ? 0 : 1;
}

async function main(): Promise<number> {
  const work = mkdtempSync(join(tmpdir(), "petrel-demo-"));
  let own: ChildProcess | undefined;
  const interrupted = new Promise<number>((resolve) => process.once("SIGINT", () => resolve(130)));
  try {
    return await Promise.race([demo(work, (child) => (own = child)), interrupted]);
  } finally {
    if (own !== undefined && own.exitCode === null) {
      const exited = new Promise((r) => own?.once("exit", r));
      own.kill("SIGTERM");
      await exited;
    }
    // Cached worktrees are read-only by design; make them writable again so the folder can go.
    execFileSync("chmod", ["-R", "u+w", work], { stdio: "ignore" });
    await rm(work, { recursive: true, force: true });
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    say(`failed: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(1);
  },
);
