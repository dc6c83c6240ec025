/**
 * `npm run demo`: a build end to end on this machine. Makes a throwaway git repository with a `.petrel`,
 * registers it with petrel (the YAML file of single-machine mode), sends a signed push webhook as Gitea would,
 * and follows the build's log to the end. Uses the petrel at PETREL_URL if one answers; otherwise starts one of
 * its own in a temporary directory and stops it afterwards.
 */
import { execFileSync, spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, writeFileSync, chmodSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { sign } from "../src/gitea/signature.js";
import { writeRepo } from "../src/registry/file.js";

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

function git(cwd: string, ...args: string[]): string {
  return execFileSync("git", args, { cwd, encoding: "utf8", env: { ...process.env, GIT_AUTHOR_NAME: "demo", GIT_AUTHOR_EMAIL: "demo@example.test", GIT_COMMITTER_NAME: "demo", GIT_COMMITTER_EMAIL: "demo@example.test" } }).trim();
}

async function main(): Promise<number> {
  const work = mkdtempSync(join(tmpdir(), "petrel-demo-"));
  let url = (process.env.PETREL_URL ?? `http://${process.env.PETREL_LISTEN ?? "127.0.0.1:8080"}`).replace(/\/+$/, "");
  let configPath = resolve(process.env.PETREL_CONFIG ?? "./petrel.yaml");
  let own: ChildProcess | undefined;

  if (!(await healthy(url))) {
    const port = 20000 + Math.floor(Math.random() * 20000);
    url = `http://127.0.0.1:${port}`;
    configPath = join(work, "petrel.yaml");
    writeFileSync(configPath, "repos: {}\n");
    say(`no petrel answers at ${process.env.PETREL_URL ?? "http://127.0.0.1:8080"}; starting one at ${url} (data in ${work})`);
    if (!existsSync(join(ROOT, "dist/cli/main.js"))) execFileSync("npm", ["run", "build", "--silent"], { cwd: ROOT, stdio: "inherit" });
    own = spawn(process.execPath, [join(ROOT, "bin/petrel.js"), "serve"], {
      env: { PATH: process.env.PATH, HOME: process.env.HOME, PETREL_LISTEN: `127.0.0.1:${port}`, PETREL_CONFIG: configPath, PETREL_DATA_DIR: join(work, "data"), LOG_LEVEL: "warn" },
      stdio: ["ignore", "inherit", "inherit"],
    });
    for (let i = 0; i < 100 && !(await healthy(url)); i++) await sleep(100);
    if (!(await healthy(url))) throw new Error(`petrel did not come up at ${url}`);
  }

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

  const secret = randomBytes(16).toString("hex");
  const key = "demo.petrel.local/acme/hello";
  await writeRepo(configPath, key, { hook: { secret }, trusted: { senders: ["demo"] } });
  say(`registered ${key} in ${configPath}`);
  await sleep(600); // the registry reloads the file on change

  const body = JSON.stringify(
    {
      ref: "refs/heads/main",
      before: "0".repeat(40),
      after: commit,
      commits: [],
      head_commit: { id: commit, message: "demo build script\n" },
      repository: { name: "hello", full_name: "acme/hello", private: false, html_url: "http://demo.petrel.local/acme/hello", clone_url: `file://${bare}` },
      pusher: { login: "demo" },
      sender: { login: "demo" },
    },
    null,
    2,
  );
  const res = await fetch(`${url}/hook`, {
    method: "POST",
    headers: { "content-type": "application/json", "x-gitea-event": "push", "x-gitea-delivery": crypto.randomUUID(), "x-gitea-signature": sign(secret, body) },
    body,
  });
  const answer = (await res.json()) as { build?: string; error?: { message: string } };
  if (res.status !== 201 || answer.build === undefined) throw new Error(`webhook answered ${res.status}: ${JSON.stringify(answer)}`);
  say(`webhook answered ${res.status}: build ${answer.build}`);
  say(`following ${url}/builds/${encodeURIComponent(answer.build)}/logs?type=stderr (executor steps) and stdout`);

  const follow = async (type: string) => {
    const logs = await fetch(`${url}/builds/${encodeURIComponent(answer.build ?? "")}/logs?type=${type}&follow=true`);
    for await (const chunk of (logs.body ?? []) as unknown as AsyncIterable<Uint8Array>) (type === "stdout" ? process.stdout : process.stderr).write(chunk);
  };
  await Promise.all([follow("stderr"), follow("stdout")]);
  const build = (await (await fetch(`${url}/builds/${encodeURIComponent(answer.build)}`)).json()) as { state: string; exitCode?: number };
  say(`build ${build.state}${build.exitCode === undefined ? "" : ` (exit code ${build.exitCode})`}`);

  if (own !== undefined) {
    own.kill("SIGTERM");
    await new Promise((r) => own?.once("exit", r));
  }
  return build.state === "success" ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    say(`failed: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(1);
  },
);
