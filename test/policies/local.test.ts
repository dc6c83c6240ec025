import { execFileSync } from "node:child_process";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readConfig } from "../../src/config.js";
import { sign } from "../../src/gitea/signature.js";
import type { RunningPetrel } from "../../src/main.js";
import { startPetrel } from "../../src/main.js";
import { writeRepo } from "../../src/registry/file.js";
import { fixtureJson } from "../gitea/fixtures.js";
import { captureLogs } from "../helpers/log-capture.js";

const SECRET = "local-policy-secret-4e1a";
const ADMIN = "local-policy-admin-token-0123";
const KEY = "git.example.test/acme/widgets";
const GIT_ENV = {
  GIT_AUTHOR_NAME: "t",
  GIT_AUTHOR_EMAIL: "t@example.test",
  GIT_COMMITTER_NAME: "t",
  GIT_COMMITTER_EMAIL: "t@example.test",
};

interface ShownBuild {
  id: string;
  state: string;
  reason?: string;
  event: string;
  commit: string;
  ref: string;
  trusted: boolean;
}

describe("build policies in single-machine mode (the local runner, real builds of a real repository)", () => {
  let dir: string;
  let src: string;
  let bare: string;
  let petrel: RunningPetrel;
  const logs = captureLogs("info");

  /** Commits a `.petrel` script on `branch` and pushes it to the bare repository; returns the commit. */
  const commit = (branch: string, script: string): string => {
    execFileSync("git", ["checkout", "-q", "-B", branch], { cwd: src });
    writeFileSync(join(src, ".petrel"), `#!/bin/sh\n${script}\n`);
    chmodSync(join(src, ".petrel"), 0o755);
    execFileSync("git", ["add", ".petrel"], { cwd: src });
    execFileSync("git", ["commit", "-q", "--allow-empty", "-m", script], { cwd: src, env: { ...process.env, ...GIT_ENV } });
    execFileSync("git", ["push", "-q", "-f", bare, branch], { cwd: src });
    return execFileSync("git", ["rev-parse", "HEAD"], { cwd: src, encoding: "utf8" }).trim();
  };

  const deliver = async (sha: string, branch: string, flavor?: string): Promise<string> => {
    const body = structuredClone(fixtureJson("push.json")) as Record<string, unknown> & { head_commit: { id: string } };
    body.ref = `refs/heads/${branch}`;
    body.after = sha;
    body.head_commit.id = sha;
    const raw = Buffer.from(JSON.stringify(body));
    const res = await fetch(`${petrel.url}/hook${flavor === undefined ? "" : `?flavor=${flavor}`}`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-gitea-event": "push", "x-gitea-signature": sign(SECRET, raw) },
      body: new Uint8Array(raw),
    });
    expect(res.status).toBe(201);
    return ((await res.json()) as { build: string }).build;
  };

  const show = async (id: string): Promise<ShownBuild> =>
    (await (
      await fetch(`${petrel.url}/builds/${encodeURIComponent(id)}`, { headers: { authorization: `Bearer ${ADMIN}` } })
    ).json()) as ShownBuild;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "petrel-policies-"));
    src = join(dir, "src");
    bare = join(dir, "widgets.git");
    execFileSync("git", ["init", "-q", "--bare", "-b", "main", bare]);
    execFileSync("git", ["init", "-q", "-b", "main", src]);
    commit("main", "echo nightly");
    await writeRepo(join(dir, "petrel.yaml"), KEY, {
      hook: { secret: SECRET },
      clone_url: `file://${bare}`,
      trusted: { senders: ["dana"] },
      flavors: { default: { builder: "builder" }, quick: { builder: "builder", timeout: "2s" } },
      cron: [{ name: "often", schedule: "*/3 * * * * *", ref: "main", flavor: "default" }],
    });
    const env = {
      PETREL_LISTEN: "127.0.0.1:0",
      PETREL_CONFIG: join(dir, "petrel.yaml"),
      PETREL_DATA_DIR: join(dir, "data"),
      PETREL_ADMIN_TOKEN: ADMIN,
      PETREL_LOCAL_CONCURRENCY: "8",
    };
    petrel = await startPetrel(readConfig(env, dir), logs.log, { ...process.env, ...env });
  });

  afterAll(async () => {
    await petrel?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("cancels a running build of a branch when a newer commit of it arrives", async () => {
    const first = await deliver(commit("feature", "sleep 60"), "feature");
    for (let i = 0; i < 400 && (await show(first)).state !== "running"; i++) await new Promise((r) => setTimeout(r, 25));
    const second = await deliver(commit("feature", "sleep 60 # again"), "feature");
    let shown = await show(first);
    for (let i = 0; i < 600 && shown.state === "running"; i++) {
      await new Promise((r) => setTimeout(r, 25));
      shown = await show(first);
    }
    expect(shown).toMatchObject({ state: "cancelled", reason: `superseded by ${second}` });
    expect((await show(second)).state).toMatch(/queued|running/);
    // Counted once the stop is done, which may be a moment after the record says cancelled.
    let metrics = "";
    for (let i = 0; i < 200 && !metrics.includes("petrel_builds_superseded_total 1"); i++) {
      metrics = await (await fetch(`${petrel.url}/metrics`)).text();
      await new Promise((r) => setTimeout(r, 25));
    }
    expect(metrics).toContain("petrel_builds_superseded_total 1");
  }, 30_000);

  it("stops a build past its timeout: error, timed out after 2s", async () => {
    const id = await deliver(commit("hang", "sleep 60"), "hang", "quick");
    let shown = await show(id);
    for (let i = 0; i < 600 && !["error", "cancelled", "success", "failure"].includes(shown.state); i++) {
      await new Promise((r) => setTimeout(r, 25));
      shown = await show(id);
    }
    expect(shown).toMatchObject({ state: "error", reason: "timed out after 2s" });
  }, 30_000);

  it("runs the cron schedule: trusted EVENT=cron builds of the ref's head", async () => {
    const listed = async () =>
      (
        (await (await fetch(`${petrel.url}/builds?limit=100`, { headers: { authorization: `Bearer ${ADMIN}` } })).json()) as {
          builds: ShownBuild[];
        }
      ).builds.filter((b) => b.event === "cron");
    let cron = await listed();
    for (let i = 0; i < 400 && cron.length < 2; i++) {
      await new Promise((r) => setTimeout(r, 25));
      cron = await listed();
    }
    expect(cron.length).toBeGreaterThanOrEqual(2);
    const head = execFileSync("git", ["rev-parse", "main"], { cwd: src, encoding: "utf8" }).trim();
    for (const b of cron) expect(b).toMatchObject({ commit: head, ref: "main" });
    expect(cron.every((b) => b.trusted === true)).toBe(true);
  }, 30_000);
});
