import { execFileSync, spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { chmodSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sign } from "../../src/gitea/signature.js";
import { writeRepo } from "../../src/registry/file.js";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const SECRET = "e2e-hook-secret-0b5d";
const KEY = "git.e2e.test/acme/app";
const GIT_ENV = { GIT_AUTHOR_NAME: "t", GIT_AUTHOR_EMAIL: "t@example.test", GIT_COMMITTER_NAME: "t", GIT_COMMITTER_EMAIL: "t@example.test" };

interface Petrel {
  url: string;
  child: ChildProcess;
  exited: Promise<number | null>;
}

/** Starts the compiled `petrel serve` in single-machine mode and waits for its "listening" line. */
async function startPetrel(dir: string, root = ROOT): Promise<Petrel> {
  const child = spawn(process.execPath, [join(root, "bin/petrel.js"), "serve"], {
    env: {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      PETREL_LISTEN: "127.0.0.1:0",
      PETREL_CONFIG: join(dir, "petrel.yaml"),
      PETREL_DATA_DIR: join(dir, "data"),
      PETREL_ADMIN_TOKEN: "e2e-admin-token-0123456789",
    },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
  const lines = createInterface({ input: child.stdout! });
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("petrel did not start")), 30_000);
    lines.on("line", (line) => {
      try {
        const rec = JSON.parse(line) as { msg?: string; listen?: string };
        if (rec.msg === "petrel listening" && rec.listen) {
          clearTimeout(timer);
          resolve(`http://${rec.listen}`);
        }
      } catch {
        // not JSON: ignore
      }
    });
    void exited.then((code) => reject(new Error(`petrel exited with ${code} before listening`)));
  });
  return { url, child, exited };
}

/** A bare repository with a `.petrel` build script, and its head commit. */
function makeRepo(dir: string, script: string): { url: string; commit: string } {
  const bare = join(dir, "remote", "acme", "app.git");
  const src = join(dir, "src");
  execFileSync("git", ["init", "-q", "--bare", "-b", "main", bare]);
  execFileSync("git", ["init", "-q", "-b", "main", src]);
  writeFileSync(join(src, ".petrel"), `#!/bin/sh\n${script}\n`);
  chmodSync(join(src, ".petrel"), 0o755);
  execFileSync("git", ["add", ".petrel"], { cwd: src });
  execFileSync("git", ["commit", "-q", "-m", "build"], { cwd: src, env: { ...process.env, ...GIT_ENV } });
  execFileSync("git", ["push", "-q", bare, "main"], { cwd: src });
  return { url: `file://${bare}`, commit: execFileSync("git", ["rev-parse", "HEAD"], { cwd: src, encoding: "utf8" }).trim() };
}

function commitTo(dir: string, script: string): string {
  const src = join(dir, "src");
  writeFileSync(join(src, ".petrel"), `#!/bin/sh\n${script}\n`);
  execFileSync("git", ["commit", "-q", "-am", "next"], { cwd: src, env: { ...process.env, ...GIT_ENV } });
  execFileSync("git", ["push", "-q", join(dir, "remote", "acme", "app.git"), "main"], { cwd: src });
  return execFileSync("git", ["rev-parse", "HEAD"], { cwd: src, encoding: "utf8" }).trim();
}

async function push(url: string, repoUrl: string, commit: string): Promise<string> {
  const body = JSON.stringify({
    ref: "refs/heads/main",
    after: commit,
    repository: { full_name: "acme/app", private: false, html_url: "https://git.e2e.test/acme/app", clone_url: repoUrl },
    sender: { login: "dana" },
  });
  const res = await fetch(`${url}/hook`, {
    method: "POST",
    headers: { "content-type": "application/json", "x-gitea-event": "push", "x-gitea-signature": sign(SECRET, body) },
    body,
  });
  const answer = (await res.json()) as { build: string };
  expect(res.status).toBe(201);
  return answer.build;
}

async function getBuild(url: string, id: string): Promise<{ state: string; exitCode?: number; reason?: string }> {
  const res = await fetch(`${url}/builds/${encodeURIComponent(id)}`);
  expect(res.status).toBe(200);
  return (await res.json()) as { state: string };
}

describe("single-machine mode, end to end through the compiled CLI", () => {
  const dir = mkdtempSync(join(tmpdir(), "petrel-e2e-"));
  let petrel: Petrel;
  let repo: { url: string; commit: string };

  beforeAll(async () => {
    repo = makeRepo(dir, 'echo "step one"; sleep 0.5; echo "step two"; echo "to stderr" >&2');
    await writeRepo(join(dir, "petrel.yaml"), KEY, { hook: { secret: SECRET }, trusted: { senders: ["dana"] } });
    petrel = await startPetrel(dir);
  }, 60_000);

  afterAll(async () => {
    petrel.child.kill("SIGKILL");
  });

  it("serves /health with no Nomad or Consul", async () => {
    const res = await fetch(`${petrel.url}/health`);
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ status: "ok", mode: "local" });
  });

  it("runs a real build for a signed webhook and streams its output live until it ends", async () => {
    const id = await push(petrel.url, repo.url, repo.commit);
    const res = await fetch(`${petrel.url}/builds/${encodeURIComponent(id)}/logs?type=stdout&follow=true`);
    expect(res.headers.get("content-type")).toMatch(/^text\/plain/);
    const arrivals: Array<{ at: number; text: string }> = [];
    const decoder = new TextDecoder();
    for await (const chunk of (res.body ?? []) as unknown as AsyncIterable<Uint8Array>) arrivals.push({ at: Date.now(), text: decoder.decode(chunk) });
    const text = arrivals.map((a) => a.text).join("");
    expect(text).toBe("step one\nstep two\n");
    // Live, not buffered: the first line arrived well before the last, across the script's sleep.
    const first = arrivals.find((a) => a.text.includes("step one"));
    const last = arrivals.find((a) => a.text.includes("step two"));
    expect(last!.at - first!.at).toBeGreaterThan(300);
    expect(await getBuild(petrel.url, id)).toMatchObject({ state: "success", exitCode: 0 });
    const stderr = await (await fetch(`${petrel.url}/builds/${encodeURIComponent(id)}/logs?type=stderr&follow=false`)).text();
    expect(stderr).toContain("to stderr");
    expect(stderr).toContain("==> run .petrel");
  }, 60_000);

  it("keeps builds and logs across a restart, and reports a build killed with petrel as error", async () => {
    const [done] = (await (await fetch(`${petrel.url}/builds?limit=1&state=success`)).json() as { builds: Array<{ id: string }> }).builds;
    expect(done).toBeDefined();
    const before = await (await fetch(`${petrel.url}/builds/${encodeURIComponent(done!.id)}/logs?type=stdout&follow=false`)).text();

    const slow = commitTo(dir, 'echo "started"; sleep 30; echo "never"');
    const interrupted = await push(petrel.url, repo.url, slow);
    const logOf = async () => (await fetch(`${petrel.url}/builds/${encodeURIComponent(interrupted)}/logs?type=stdout&follow=false`)).text();
    for (let i = 0; i < 400 && (await logOf()) !== "started\n"; i++) await sleep(50);
    petrel.child.kill("SIGKILL");
    await petrel.exited;

    petrel = await startPetrel(dir);
    expect(await getBuild(petrel.url, done!.id)).toMatchObject({ state: "success" });
    expect(await (await fetch(`${petrel.url}/builds/${encodeURIComponent(done!.id)}/logs?type=stdout`)).text()).toBe(before);
    const after = await getBuild(petrel.url, interrupted);
    expect(after.state).toBe("error");
    expect(after.reason).toMatch(/petrel stopped/);
    expect(await (await fetch(`${petrel.url}/builds/${encodeURIComponent(interrupted)}/logs?type=stdout`)).text()).toBe("started\n");
  }, 90_000);

  it("stops cleanly on SIGTERM", async () => {
    petrel.child.kill("SIGTERM");
    expect(await petrel.exited).toBe(0);
  }, 20_000);
});
