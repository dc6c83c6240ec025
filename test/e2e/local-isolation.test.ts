import type { ChildProcess } from "node:child_process";
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sign } from "../../src/gitea/signature.js";
import { findByEnv } from "../../src/local/isolate.js";
import { writeRepo } from "../../src/registry/file.js";

// Attacks of issue 9 (findings 3 and 5) against a real single-machine petrel: real webhooks, a real git
// repository, real builds through the compiled CLI. Namespaces need root; without it these are skipped.
const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const SECRET = "iso-hook-secret-7f3a";
const ADMIN = "iso-admin-token-0123456789";
const KEY = "git.iso.test/acme/app";
const TOKEN = `tok-${randomBytes(12).toString("hex")}`;
const GIT_ENV = {
  GIT_AUTHOR_NAME: "t",
  GIT_AUTHOR_EMAIL: "t@example.test",
  GIT_COMMITTER_NAME: "t",
  GIT_COMMITTER_EMAIL: "t@example.test",
};
const isRoot = process.getuid?.() === 0;

interface Petrel {
  url: string;
  child: ChildProcess;
  exited: Promise<number | null>;
}

async function startPetrel(dir: string): Promise<Petrel> {
  const child = spawn(process.execPath, [join(ROOT, "bin/petrel.js"), "serve"], {
    env: {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      PETREL_LISTEN: "127.0.0.1:0",
      PETREL_CONFIG: join(dir, "petrel.yaml"),
      PETREL_DATA_DIR: join(dir, "data"),
      PETREL_ADMIN_TOKEN: ADMIN,
      PETREL_LOCAL_CONCURRENCY: "2",
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
        // not JSON
      }
    });
    void exited.then((code) => reject(new Error(`petrel exited with ${code} before listening`)));
  });
  return { url, child, exited };
}

describe.skipIf(!isRoot)("single-machine builds cannot reach each other (as root)", () => {
  const dir = mkdtempSync(join(tmpdir(), "petrel-iso-"));
  const data = join(dir, "data");
  const gates = join(dir, "gates");
  const bare = join(dir, "remote", "acme", "app.git");
  const src = join(dir, "src");
  let petrel: Petrel;

  /** Commits `.petrel` with this script on main and returns the commit. */
  function commit(script: string): string {
    writeFileSync(join(src, ".petrel"), `#!/bin/sh\n${script}\n`);
    chmodSync(join(src, ".petrel"), 0o755);
    execFileSync("git", ["add", ".petrel"], { cwd: src });
    execFileSync("git", ["commit", "-q", "-m", "build"], { cwd: src, env: { ...process.env, ...GIT_ENV } });
    execFileSync("git", ["push", "-q", bare, "main"], { cwd: src });
    return execFileSync("git", ["rev-parse", "HEAD"], { cwd: src, encoding: "utf8" }).trim();
  }

  async function push(sha: string, sender: string): Promise<string> {
    const body = JSON.stringify({
      ref: "refs/heads/main",
      after: sha,
      repository: {
        full_name: "acme/app",
        private: false,
        html_url: "https://git.iso.test/acme/app",
        clone_url: "https://git.iso.test/acme/app.git",
      },
      sender: { login: sender },
    });
    const res = await fetch(`${petrel.url}/hook`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-gitea-event": "push", "x-gitea-signature": sign(SECRET, body) },
      body,
    });
    expect(res.status).toBe(201);
    return ((await res.json()) as { build: string }).build;
  }

  const auth = { authorization: `Bearer ${ADMIN}` };
  const state = async (id: string) =>
    (
      (await (await fetch(`${petrel.url}/builds/${encodeURIComponent(id)}`, { headers: auth })).json()) as {
        state: string;
        reason?: string;
      }
    ).state;
  const log = async (id: string, type = "stdout") =>
    (await fetch(`${petrel.url}/builds/${encodeURIComponent(id)}/logs?type=${type}&follow=false`, { headers: auth })).text();

  async function until(what: () => Promise<boolean>, ms: number, label: string): Promise<void> {
    const end = Date.now() + ms;
    while (!(await what())) {
      if (Date.now() > end) throw new Error(`timed out waiting for ${label}`);
      await sleep(50);
    }
  }

  /** Files under the data directory whose bytes contain `text`. */
  const onDisk = (text: string) => spawnSync("grep", ["-rl", "--", text, data], { encoding: "utf8" }).stdout.trim();

  beforeAll(async () => {
    mkdirSync(gates);
    execFileSync("git", ["init", "-q", "--bare", "-b", "main", bare]);
    execFileSync("git", ["init", "-q", "-b", "main", src]);
    await writeRepo(
      join(dir, "petrel.yaml"),
      KEY,
      // The operator's clone_url: payloads may not name a local path (issue 9, finding 2).
      // supersede off: the attack needs builds of one branch running and queued side by side.
      {
        hook: { secret: SECRET },
        trusted: { senders: ["dana"] },
        caches: { deps: "deps" },
        clone_url: `file://${bare}`,
        supersede: false,
      },
      { API_TOKEN: TOKEN },
    );
    petrel = await startPetrel(dir);
  }, 60_000);

  afterAll(async () => {
    writeFileSync(join(gates, "t"), "");
    petrel.child.kill("SIGTERM");
    await petrel.exited;
  }, 30_000);

  it("an untrusted build reads no payload, secret, config or process of a running or queued trusted build, and cannot write its cache", async () => {
    const waitGate = (name: string, tag: string) => `sh -c 'while [ ! -e ${gates}/${name} ]; do sleep 0.1; done' ${tag}`;
    const trustedScript = (n: number) =>
      `# trusted ${n}\n. "$PETREL_SECRETS"\necho "trusted-cache" > deps/own\necho "trusted up"\n${waitGate("t", "waiter-of-T")}`;
    const attack = [
      `D=${data}`,
      `echo "untrusted up"`,
      waitGate("u", "waiter-of-U"),
      // Payloads and secrets files of every build, under the data dir, the config, and every process's view.
      `find "$D" -type f 2>/dev/null | while read -r f; do cat "$f" 2>/dev/null; done`,
      `cat ${dir}/petrel.yaml 2>&1`,
      `for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; tr '\\0' '\\n' < $p/environ 2>/dev/null; done`,
      `for f in /proc/[0-9]*/root$D/builds/*/secrets/* /proc/[0-9]*/root$D/builds/*/local/*; do cat "$f" 2>/dev/null; done`,
      `ls /proc/*/root/$D/builds /proc/*/root$D/builds/*/local/build 2>&1`,
      // The trusted cache, directly and through other builds' mount namespaces.
      `for d in $D/cache/caches/*/trusted/* /proc/[0-9]*/root$D/cache/caches/*/trusted/* /proc/[0-9]*/root$D/builds/*/local/build/deps; do`,
      `  [ -d "$d" ] && echo pwned > "$d/pwned" 2>/dev/null && echo "wrote $d"`,
      `done`,
      `echo "attack done"`,
    ].join("\n");
    try {
      await attackAndCheck();
    } finally {
      // Whatever failed, the trusted builds end, so the next tests get build slots.
      writeFileSync(join(gates, "u"), "");
      writeFileSync(join(gates, "t"), "");
    }
    async function attackAndCheck(): Promise<void> {
      const t = await push(commit(trustedScript(1)), "dana");
      await until(async () => (await log(t)).includes("trusted up"), 30_000, "the trusted build to run");
      const u = await push(commit(attack), "eve");
      await until(async () => (await log(u)).includes("untrusted up"), 30_000, "the untrusted build to run");
      const q = await push(commit(trustedScript(2)), "dana");
      expect(await state(q)).toBe("queued");
      // Neither the running nor the queued trusted build's secrets rest on disk.
      expect(onDisk(TOKEN)).toBe("");

      writeFileSync(join(gates, "u"), "");
      await until(async () => (await state(u)) === "success", 30_000, "the attack to finish");
      const out = await log(u);
      const err = await log(u, "stderr");
      expect(out).toContain("attack done");
      expect(out + err).not.toContain(TOKEN);
      expect(out).not.toContain(SECRET);
      expect(out).not.toContain("waiter-of-T");
      expect(out).not.toContain(encodeURIComponent(t));
      const trustedCaches = join(data, "cache", "caches");
      const pwned = spawnSync("find", [trustedCaches, "-path", "*/trusted/*", "-name", "pwned"], { encoding: "utf8" }).stdout;
      expect(pwned).toBe("");
      // The trusted build's own cache write went through: the check above looked at the right place.
      expect(spawnSync("find", [trustedCaches, "-path", "*/trusted/deps/own"], { encoding: "utf8" }).stdout).not.toBe("");

      writeFileSync(join(gates, "t"), "");
      await until(async () => (await state(t)) === "success" && (await state(q)) === "success", 30_000, "the trusted builds to finish");
      expect(onDisk(TOKEN)).toBe("");
    }
  }, 120_000);

  it("cancel ends every process of the build, escaped sessions and double-forked daemons included, within the grace", async () => {
    const mark = `mark-${randomBytes(6).toString("hex")}`;
    const id = await push(
      commit(
        [
          `export ISO_MARK=${mark}`,
          "setsid sleep 1000 &",
          "( ( sleep 1001 & ) & )",
          "setsid sh -c 'trap \"\" TERM; sleep 1002 & wait' &",
          "sleep 0.3; echo spawned",
          "sleep 1000",
        ].join("\n"),
      ),
      "dana",
    );
    await until(async () => (await log(id)).includes("spawned"), 30_000, "the build to spawn its processes");
    // A forked shell shows ISO_MARK in /proc/<pid>/environ only once it has exec'd its command: wait for all.
    await until(async () => (await findByEnv("ISO_MARK", mark)).length >= 5, 10_000, "every process of the build to exec");
    const t0 = Date.now();
    const res = await fetch(`${petrel.url}/builds/${encodeURIComponent(id)}`, { method: "DELETE", headers: auth });
    expect(res.status).toBe(202);
    await until(async () => (await findByEnv("ISO_MARK", mark)).length === 0, 10_000, "the build's processes to end");
    const took = Date.now() - t0;
    expect(took).toBeLessThan(10_000); // petrel's default grace
    expect(await state(id)).toBe("cancelled");
    console.info(`cancel: every process of the build gone ${took} ms after DELETE`);
  }, 60_000);

  it("after petrel is SIGKILLed mid-build and restarted, the build is failed, its processes are gone and no secret stays on disk", async () => {
    const mark = `mark-${randomBytes(6).toString("hex")}`;
    const id = await push(
      commit(
        [
          `. "$PETREL_SECRETS"`,
          `export ISO_MARK=${mark}`,
          "setsid sleep 1000 &",
          "( ( sleep 1001 & ) & )",
          "echo started",
          "sleep 1000",
        ].join("\n"),
      ),
      "dana",
    );
    await until(async () => (await log(id)).includes("started"), 30_000, "the build to start");
    await until(async () => (await findByEnv("ISO_MARK", mark)).length >= 3, 10_000, "every process of the build to exec");
    expect(onDisk(TOKEN)).toBe("");
    petrel.child.kill("SIGKILL");
    await petrel.exited;
    petrel = await startPetrel(dir);
    const after = (await (await fetch(`${petrel.url}/builds/${encodeURIComponent(id)}`, { headers: auth })).json()) as {
      state: string;
      reason: string;
    };
    expect(after.state).toBe("error");
    expect(after.reason).toMatch(/petrel stopped/);
    await until(async () => (await findByEnv("ISO_MARK", mark)).length === 0, 5_000, "the build's processes to end");
    expect(onDisk(TOKEN)).toBe("");
    const buildDir = join(data, "builds", encodeURIComponent(id));
    expect(readdirSync(buildDir).sort()).toEqual(["build.json", "merged", "stderr.log", "stdout.log"]);
    expect(existsSync(join(buildDir, "secrets"))).toBe(false);
  }, 90_000);
});
