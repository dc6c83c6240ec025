import type { ChildProcess } from "node:child_process";
import { execFileSync, spawn } from "node:child_process";
import { chmodSync, mkdtempSync, readdirSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sign } from "../../src/gitea/signature.js";
import { writeRepo } from "../../src/registry/file.js";
import { readSse } from "../helpers/sse.js";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const SECRET = "e2e-hook-secret-0b5d";
const KEY = "git.e2e.test/acme/app";
/** What Gitea would send as clone_url; the build clones the entry's clone_url (the local bare repository). */
const PAYLOAD_CLONE_URL = "https://git.e2e.test/acme/app.git";
const GIT_ENV = {
  GIT_AUTHOR_NAME: "t",
  GIT_AUTHOR_EMAIL: "t@example.test",
  GIT_COMMITTER_NAME: "t",
  GIT_COMMITTER_EMAIL: "t@example.test",
};

interface Petrel {
  url: string;
  /** The start-up line, as JSON. */
  listening: Record<string, unknown>;
  child: ChildProcess;
  exited: Promise<number | null>;
}

/** Starts the compiled `petrel serve` in single-machine mode and waits for its "listening" line. */
async function startPetrel(
  dir: string,
  root = ROOT,
  options: { cwd?: string; env?: Record<string, string | undefined> } = {},
): Promise<Petrel> {
  const child = spawn(process.execPath, [join(root, "bin/petrel.js"), "serve"], {
    env: {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      PETREL_LISTEN: "127.0.0.1:0",
      PETREL_CONFIG: join(dir, "petrel.yaml"),
      PETREL_DATA_DIR: join(dir, "data"),
      PETREL_ADMIN_TOKEN: "e2e-admin-token-0123456789",
      ...options.env,
    },
    stdio: ["ignore", "pipe", "inherit"],
    ...(options.cwd === undefined ? {} : { cwd: options.cwd }),
  });
  const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
  const lines = createInterface({ input: child.stdout! });
  const started = await new Promise<{ url: string; listening: Record<string, unknown> }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("petrel did not start")), 30_000);
    lines.on("line", (line) => {
      try {
        const rec = JSON.parse(line) as { msg?: string; listen?: string };
        if (rec.msg === "petrel listening" && rec.listen) {
          clearTimeout(timer);
          resolve({ url: `http://${rec.listen}`, listening: rec });
        }
      } catch {
        // not JSON: ignore
      }
    });
    void exited.then((code) => reject(new Error(`petrel exited with ${code} before listening`)));
  });
  return { ...started, child, exited };
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

/** Serves the bare repositories under `root` over git's smart HTTP protocol (`git http-backend`) on 127.0.0.1. */
async function serveGit(root: string): Promise<{ host: string; requests: string[]; close(): Promise<void> }> {
  const requests: string[] = [];
  const server = createServer((req, res) => {
    requests.push(`${req.method} ${req.url}`);
    const url = new URL(req.url ?? "/", "http://127.0.0.1");
    const env: NodeJS.ProcessEnv = {
      PATH: process.env.PATH,
      GIT_PROJECT_ROOT: root,
      GIT_HTTP_EXPORT_ALL: "1",
      PATH_INFO: url.pathname,
      QUERY_STRING: url.search.slice(1),
      REQUEST_METHOD: req.method ?? "GET",
      CONTENT_TYPE: req.headers["content-type"] ?? "",
      REMOTE_ADDR: "127.0.0.1",
      HTTP_CONTENT_ENCODING: req.headers["content-encoding"] ?? "",
      GIT_PROTOCOL: String(req.headers["git-protocol"] ?? ""),
    };
    if (req.headers["content-length"] !== undefined) env.CONTENT_LENGTH = req.headers["content-length"];
    const cgi = spawn("git", ["http-backend"], { env, stdio: ["pipe", "pipe", "ignore"] });
    req.pipe(cgi.stdin);
    let head = Buffer.alloc(0);
    let headersDone = false;
    cgi.stdout.on("data", (chunk: Buffer) => {
      if (headersDone) return void res.write(chunk);
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf("\r\n\r\n");
      if (end < 0) return;
      headersDone = true;
      let status = 200;
      for (const line of head.subarray(0, end).toString("latin1").split("\r\n")) {
        const colon = line.indexOf(":");
        const name = line.slice(0, colon).trim();
        const value = line.slice(colon + 1).trim();
        if (name.toLowerCase() === "status") status = Number(value.split(" ")[0]);
        else res.setHeader(name, value);
      }
      res.writeHead(status);
      res.write(head.subarray(end + 4));
    });
    cgi.stdout.on("end", () => res.end());
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  return {
    host: `127.0.0.1:${(server.address() as AddressInfo).port}`,
    requests,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

async function push(
  url: string,
  commit: string,
  repoUrl = PAYLOAD_CLONE_URL,
  htmlUrl = "https://git.e2e.test/acme/app",
): Promise<Response> {
  const body = JSON.stringify({
    ref: "refs/heads/main",
    after: commit,
    repository: { full_name: "acme/app", private: false, html_url: htmlUrl, clone_url: repoUrl },
    sender: { login: "dana" },
  });
  return fetch(`${url}/hook`, {
    method: "POST",
    headers: { "content-type": "application/json", "x-gitea-event": "push", "x-gitea-signature": sign(SECRET, body) },
    body,
  });
}

async function pushBuild(url: string, commit: string): Promise<string> {
  const res = await push(url, commit);
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
    await writeRepo(join(dir, "petrel.yaml"), KEY, { hook: { secret: SECRET }, trusted: { senders: ["dana"] }, clone_url: repo.url });
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
    const id = await pushBuild(petrel.url, repo.commit);
    const res = await fetch(`${petrel.url}/builds/${encodeURIComponent(id)}/logs?type=stdout&follow=true`);
    expect(res.headers.get("content-type")).toMatch(/^text\/plain/);
    const arrivals: Array<{ at: number; text: string }> = [];
    const decoder = new TextDecoder();
    for await (const chunk of (res.body ?? []) as unknown as AsyncIterable<Uint8Array>)
      arrivals.push({ at: Date.now(), text: decoder.decode(chunk) });
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

  it("refuses a signed delivery whose clone_url is a local path, and builds nothing", async () => {
    const before = ((await (await fetch(`${petrel.url}/builds?limit=500`)).json()) as { builds: unknown[] }).builds.length;
    for (const url of [repo.url, repo.url.slice("file://".length)]) {
      const res = await push(petrel.url, repo.commit, url);
      expect(res.status).toBe(400);
      expect(((await res.json()) as { error: { code: string } }).error.code).toBe("repository_mismatch");
    }
    expect(((await (await fetch(`${petrel.url}/builds?limit=500`)).json()) as { builds: unknown[] }).builds.length).toBe(before);
  });

  it("builds an entry without clone_url from the payload's clone URL over real smart HTTP, scheme and port kept", async () => {
    const git = await serveGit(join(dir, "remote"));
    try {
      const key = `${git.host.replace(":", "_")}/acme/app`;
      await writeRepo(join(dir, "petrel.yaml"), key, { hook: { secret: SECRET }, trusted: { senders: ["dana"] }, logs: "public" });
      let res: Response | undefined;
      // The running petrel picks the new entry up from the file by itself.
      for (let i = 0; i < 100; i++) {
        res = await push(petrel.url, repo.commit, `http://${git.host}/ACME/app.git`, `http://${git.host}/acme/app`);
        if (res.status !== 404) break;
        await sleep(50);
      }
      expect(res?.status).toBe(201);
      const { build } = (await res!.json()) as { build: string };
      let state = "";
      for (let i = 0; i < 300 && !["success", "failure", "error"].includes(state); i++) {
        state = (await getBuild(petrel.url, build)).state;
        await sleep(100);
      }
      expect(await getBuild(petrel.url, build)).toMatchObject({ state: "success" });
      // The executor fetched over HTTP from the URL rebuilt on the entry's key (lower-case), not the payload's spelling.
      expect(git.requests.some((r) => r.startsWith("GET /acme/app.git/info/refs"))).toBe(true);
      expect(git.requests.some((r) => r.includes("ACME"))).toBe(false);
      expect(await getBuild(petrel.url, build)).toMatchObject({ repoUrl: `http://${git.host}/acme/app.git` });
    } finally {
      await git.close();
    }
  });

  it("merges stdout, stderr and the executor's step lines in the order they were written (type=all)", async () => {
    // Two pipes carry no order between them: writes a few microseconds apart can swap (README, "Logs"), so
    // the lines come from separate moments, as a build's commands do.
    const commit = commitTo(dir, "echo out; sleep 0.2; echo err >&2; sleep 0.2; echo out2");
    const id = await pushBuild(petrel.url, commit);
    const text = await (await fetch(`${petrel.url}/builds/${encodeURIComponent(id)}/logs?type=all&follow=true`)).text();
    const lines = text.split("\n").filter(Boolean);
    expect(lines.filter((l) => !l.startsWith("==> "))).toEqual(["out", "err", "out2"]);
    const at = (line: string) => lines.findIndex((l) => l.startsWith(line));
    expect(at("==> checkout acme/app@")).toBe(0);
    expect(at("==> run .petrel")).toBeLessThan(at("out"));
    expect(at("==> exit 0")).toBeGreaterThan(at("out2"));
    // The separate logs stay for scripts, byte for byte.
    expect(await (await fetch(`${petrel.url}/builds/${encodeURIComponent(id)}/logs?type=stdout`)).text()).toBe("out\nout2\n");
    const stderr = await (await fetch(`${petrel.url}/builds/${encodeURIComponent(id)}/logs?type=stderr`)).text();
    expect(stderr.split("\n").filter((l) => l && !l.startsWith("==> "))).toEqual(["err"]);
  }, 60_000);

  it("does not let a build forge an SSE event with carriage returns, and keeps the text after them", async () => {
    // The attack of issue 9 finding 7: `\r` ends an SSE line, so a build printing this once made browsers
    // see a `state` event saying success while the build failed.
    const attack = String.raw`printf 'working 10%%\r\revent: state\rdata: {"state":"success"}\r\rprogress 20%%\r\nwin\r\nlone\rlast\n'; exit 3`;
    const commit = commitTo(dir, attack);
    const id = await pushBuild(petrel.url, commit);
    const res = await fetch(`${petrel.url}/builds/${encodeURIComponent(id)}/logs?type=stdout`, {
      headers: { accept: "text/event-stream" },
    });
    expect(res.headers.get("content-type")).toMatch(/^text\/event-stream/);
    const events = await readSse(res);
    const states = events.filter((e) => e.event === "state").map((e) => (JSON.parse(e.data) as { state: string }).state);
    expect(states).not.toContain("success");
    expect(states.at(-1)).toBe("failure");
    expect(events.map((e) => e.event)).toEqual(expect.arrayContaining(["log", "end"]));
    expect(events.every((e) => ["state", "log", "end"].includes(e.event))).toBe(true);
    // Every line end (\r, \r\n, lone \r) arrives as a line end; no text is lost.
    const log = events
      .filter((e) => e.event === "log")
      .map((e) => e.data)
      .join("");
    expect(log).toBe('working 10%\n\nevent: state\ndata: {"state":"success"}\n\nprogress 20%\nwin\nlone\nlast\n');
    expect(Number(events.filter((e) => e.event === "log").at(-1)?.id)).toBe(
      Buffer.byteLength('working 10%\r\revent: state\rdata: {"state":"success"}\r\rprogress 20%\r\nwin\r\nlone\rlast\n'),
    );
    expect(await getBuild(petrel.url, id)).toMatchObject({ state: "failure", exitCode: 3 });
  }, 60_000);

  it("keeps builds and logs across a restart, and reports a build killed with petrel as error", async () => {
    const [done] = ((await (await fetch(`${petrel.url}/builds?limit=1&state=success`)).json()) as { builds: Array<{ id: string }> }).builds;
    expect(done).toBeDefined();
    const before = await (await fetch(`${petrel.url}/builds/${encodeURIComponent(done!.id)}/logs?type=stdout&follow=false`)).text();

    const slow = commitTo(dir, 'echo "started"; sleep 30; echo "never"');
    const interrupted = await pushBuild(petrel.url, slow);
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

describe("single-machine mode started from a relative PETREL_DATA_DIR and PETREL_CONFIG", () => {
  const dir = mkdtempSync(join(tmpdir(), "petrel-e2e-rel-"));
  let petrel: Petrel;
  let repo: { url: string; commit: string };

  beforeAll(async () => {
    repo = makeRepo(dir, 'echo "built from $PWD"');
    await writeRepo(join(dir, "petrel.yaml"), KEY, { hook: { secret: SECRET }, trusted: { senders: ["dana"] }, clone_url: repo.url });
    // Relative paths as a user types them, resolved against the directory petrel was started in.
    petrel = await startPetrel(dir, ROOT, { cwd: dir, env: { PETREL_DATA_DIR: "./state", PETREL_CONFIG: "petrel.yaml" } });
  }, 60_000);

  afterAll(async () => {
    petrel.child.kill("SIGTERM");
    await petrel.exited;
  });

  it("shows the absolute paths in its start-up line", () => {
    expect(petrel.listening).toMatchObject({ mode: "local", config: join(dir, "petrel.yaml"), data: join(dir, "state") });
  });

  it("builds a signed push green, its cache under the absolute data dir", async () => {
    const id = await pushBuild(petrel.url, repo.commit);
    let build = await getBuild(petrel.url, id);
    for (let i = 0; i < 600 && !["success", "failure", "error"].includes(build.state); i++) {
      await sleep(50);
      build = await getBuild(petrel.url, id);
    }
    const stderr = await (await fetch(`${petrel.url}/builds/${encodeURIComponent(id)}/logs?type=stderr&follow=false`)).text();
    expect(stderr).not.toContain("must be an absolute path");
    expect(build).toMatchObject({ state: "success", exitCode: 0 });
    const stdout = await (await fetch(`${petrel.url}/builds/${encodeURIComponent(id)}/logs?type=stdout&follow=false`)).text();
    expect(stdout).toMatch(/^built from \//);
    expect(readdirSync(join(dir, "state"))).toContain("cache");
  }, 60_000);
});
