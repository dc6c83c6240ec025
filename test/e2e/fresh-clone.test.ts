import { execFileSync, spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));

/** The first `sh` block under the README's "Quick start" heading, as a newcomer reads it. */
function quickStart(): string[] {
  const readme = readFileSync(join(ROOT, "README.md"), "utf8");
  const section = readme.split(/^## /m).find((s) => s.startsWith("Quick start"));
  const block = section === undefined ? undefined : /```sh\n([\s\S]*?)```/.exec(section)?.[1];
  if (block === undefined) throw new Error("README.md has no ```sh block under ## Quick start");
  return block
    .split("\n")
    .map((line) => line.replace(/\s+#.*$/, "").trim())
    .filter((line) => line !== "" && !line.startsWith("#"));
}

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once("error", () => resolve(false));
    server.listen(port, "127.0.0.1", () => server.close(() => resolve(true)));
  });
}

function git(cwd: string, ...args: string[]): string {
  const who = { GIT_AUTHOR_NAME: "t", GIT_AUTHOR_EMAIL: "t@example.test", GIT_COMMITTER_NAME: "t", GIT_COMMITTER_EMAIL: "t@example.test" };
  return execFileSync("git", args, { cwd, encoding: "utf8", env: { ...process.env, ...who } }).trim();
}

const sha256 = (path: string) => createHash("sha256").update(readFileSync(path)).digest("hex");

describe("a fresh clone, following the README's quick start", () => {
  const dir = mkdtempSync(join(tmpdir(), "petrel-clone-"));
  afterAll(() => {
    spawnSync("chmod", ["-R", "u+w", dir]);
    rmSync(dir, { recursive: true, force: true });
  });

  it("runs `npm ci && npm start` with an empty environment, builds a signed push green, and runs the demo", async () => {
    const steps = quickStart();
    expect(steps[0]).toBe("npm ci && npm start");
    expect(steps).toContain("npm run demo");

    const clone = join(dir, "petrel");
    // The committed tree, as CI and a newcomer get it (uncommitted work is not part of a clone).
    execFileSync("git", ["clone", "-q", ROOT, clone]);

    // A repository to build, and the petrel.yaml next to the clone that registers it.
    const bare = join(dir, "widgets.git");
    const work = join(dir, "work");
    execFileSync("git", ["init", "-q", "--bare", "-b", "main", bare]);
    execFileSync("git", ["init", "-q", "-b", "main", work]);
    writeFileSync(join(work, ".petrel"), '#!/bin/sh\necho "quick start build of $COMMIT"\necho "to stderr" >&2\n');
    chmodSync(join(work, ".petrel"), 0o755);
    git(work, "add", ".petrel");
    git(work, "commit", "-q", "-m", "build script");
    git(work, "push", "-q", bare, "main");
    const commit = git(work, "rev-parse", "HEAD");
    const key = "git.example.test/acme/widgets";
    const secret = "quick-start-secret-0123456789";
    writeFileSync(
      join(clone, "petrel.yaml"),
      `repos:\n  ${key}:\n    hook: { secret: "${secret}" }\n    trusted: { senders: [dana] }\n    clone_url: "file://${bare}"\n`,
    );
    const yamlBefore = sha256(join(clone, "petrel.yaml"));

    // No petrel environment, only PATH and HOME: the defaults must build. Only a taken 8080 moves the port.
    const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: process.env.HOME };
    if (!(await portFree(8080))) {
      const server = createServer();
      await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
      const address = server.address();
      await new Promise((r) => server.close(r));
      env.PETREL_LISTEN = `127.0.0.1:${typeof address === "object" && address !== null ? address.port : 0}`;
    }
    // npm's own settings, not the user's steps: the packages come from the cache this checkout's `npm ci` filled
    // (the same lockfile), without the registry round trips and audit that would only time the network.
    const npmEnv: NodeJS.ProcessEnv = {
      ...env,
      npm_config_prefer_offline: "true",
      npm_config_audit: "false",
      npm_config_fund: "false",
      npm_config_update_notifier: "false",
    };
    const url = `http://${env.PETREL_LISTEN ?? "127.0.0.1:8080"}`;
    const [install, start] = steps[0]!.split(" && ") as [string, string];
    execFileSync("sh", ["-c", install], { cwd: clone, env: npmEnv, stdio: "ignore" });
    let output = "";
    const child = spawn("sh", ["-c", start], { cwd: clone, env: npmEnv, stdio: ["ignore", "pipe", "pipe"], detached: true });
    child.stdout.on("data", (b: Buffer) => (output += b.toString()));
    child.stderr.on("data", (b: Buffer) => (output += b.toString()));
    try {
      let health: Response | undefined;
      for (let i = 0; i < 600 && health === undefined; i++) {
        health = await fetch(`${url}/health`).catch(() => undefined);
        if (health === undefined) await sleep(100);
      }
      expect(health?.status).toBe(200);
      expect(await health?.json()).toMatchObject({ status: "ok", mode: "local" });
      // The start-up line shows where data lives, as an absolute path. It is written once the socket listens,
      // so it can reach this pipe a moment after the first /health answer.
      for (let i = 0; i < 100 && !output.includes("petrel listening"); i++) await sleep(50);
      expect(output).toContain(join(clone, ".petrel"));

      // A signed push, as Gitea sends it (petrel replay signs with the entry's secret).
      const delivery = join(dir, "push.json");
      writeFileSync(
        delivery,
        JSON.stringify({
          ref: "refs/heads/main",
          before: "0".repeat(40),
          after: commit,
          head_commit: { id: commit, message: "build script\n" },
          repository: {
            name: "widgets",
            full_name: "acme/widgets",
            private: false,
            html_url: `https://${key}`,
            clone_url: `https://${key}.git`,
            ssh_url: "git@git.example.test:acme/widgets.git",
          },
          pusher: { login: "dana" },
          sender: { login: "dana" },
        }),
      );
      const petrel = (...args: string[]) =>
        spawnSync(process.execPath, [join(clone, "bin/petrel.js"), ...args], { cwd: clone, env, encoding: "utf8", timeout: 60_000 });
      const replay = petrel("replay", delivery, "--json");
      expect(replay.status, replay.stderr).toBe(0);
      const answer = JSON.parse(replay.stdout) as { status: number; body: { build: string } };
      expect(answer.status).toBe(201);
      const logs = petrel("logs", "-f", answer.body.build);
      expect(logs.status, logs.stderr).toBe(0);
      expect(logs.stdout).toContain(`quick start build of ${commit}`);
      expect(logs.stdout).toContain("to stderr");
      const build = (await (await fetch(`${url}/builds/${encodeURIComponent(answer.body.build)}`)).json()) as { state: string };
      expect(build.state).toBe("success");
    } finally {
      process.kill(-child.pid!, "SIGTERM");
      await new Promise((r) => child.once("exit", r));
    }

    // The demo runs on its own: its own petrel and configuration, nothing of the user's touched, nothing left.
    const demosBefore = readdirSync(tmpdir()).filter((n) => n.startsWith("petrel-demo-"));
    const demo = spawnSync("sh", ["-c", "npm run demo"], { cwd: clone, env: npmEnv, encoding: "utf8", timeout: 120_000 });
    expect(demo.status, demo.stderr).toBe(0);
    expect(demo.stdout).toContain("all green");
    expect(demo.stderr).toContain("build success");
    expect(sha256(join(clone, "petrel.yaml"))).toBe(yamlBefore);
    expect(readdirSync(tmpdir()).filter((n) => n.startsWith("petrel-demo-"))).toEqual(demosBefore);
  }, 300_000);
});
