import { spawnSync } from "node:child_process";
import { chmodSync, existsSync, mkdtempSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterEach, describe, expect, it } from "vitest";
import type { Build } from "../../src/builds/backend.js";
import type { LocalBackend } from "../../src/local/backend.js";
import { createLocalBackend } from "../../src/local/backend.js";
import { findByEnv } from "../../src/local/isolate.js";
import { captureLogs } from "../helpers/log-capture.js";

const META = {
  REPO_URL: "file:///srv/acme/widgets.git",
  COMMIT: "4c1d7e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d",
  BRANCH: "main",
  FLAVOR: "default",
  REPO: "acme/widgets",
};

/** A stand-in executor: a shell script run with the task environment petrel builds for `petrel executor`. */
function fakeExecutor(dir: string, body: string): string[] {
  const path = join(dir, "executor.sh");
  writeFileSync(path, `#!/bin/sh\n${body}\n`);
  chmodSync(path, 0o755);
  return [path];
}

const backends: LocalBackend[] = [];
async function start(dataDir: string, executor: string[], extra: Partial<Parameters<typeof createLocalBackend>[0]> = {}) {
  const transitions: Build[] = [];
  const backend = await createLocalBackend({
    dataDir,
    concurrency: 1,
    log: captureLogs().log,
    executor,
    killTimeoutMs: 2000,
    env: { PATH: process.env.PATH, HOME: process.env.HOME, PETREL_ADMIN_TOKEN: "x".repeat(32) },
    onTransition: (b) => transitions.push(b),
    ...extra,
  });
  backends.push(backend);
  return { backend, transitions };
}

async function until<T>(what: () => Promise<T | undefined> | T | undefined, ms = 10_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await what();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error("condition not met in time");
    await sleep(25);
  }
}

async function collect(iterable: AsyncIterable<Uint8Array>): Promise<string> {
  const parts: Buffer[] = [];
  for await (const chunk of iterable) parts.push(Buffer.from(chunk));
  return Buffer.concat(parts).toString("utf8");
}

afterEach(async () => {
  await Promise.all(backends.splice(0).map((b) => b.close()));
});

describe("local build backend", () => {
  it("runs a build to success and keeps stdout and stderr apart", async () => {
    const dir = mkdtempSync(join(tmpdir(), "petrel-local-"));
    const { backend, transitions } = await start(
      join(dir, "data"),
      fakeExecutor(dir, 'echo "out $NOMAD_META_COMMIT"; echo "err $NOMAD_JOB_ID" >&2'),
    );
    const { id, duplicate } = await backend.dispatch({ builder: "builder", meta: META, idempotencyToken: "t1" });
    expect(duplicate).toBe(false);
    expect(id).toMatch(/^builder\/dispatch-\d+-[0-9a-f]{8}$/);
    const done = await until(async () => {
      const b = await backend.getBuild(id);
      return b?.state === "success" ? b : undefined;
    });
    expect(done).toMatchObject({ repo: "acme/widgets", commit: META.COMMIT, ref: "main", exitCode: 0 });
    const signal = new AbortController().signal;
    expect(await collect(backend.logs(id, { type: "stdout", follow: false, offset: 0, signal }))).toBe(`out ${META.COMMIT}\n`);
    expect(await collect(backend.logs(id, { type: "stderr", follow: true, offset: 0, signal }))).toBe(`err ${id}\n`);
    expect(await collect(backend.logs(id, { type: "stdout", follow: false, offset: 4, signal }))).toBe(`${META.COMMIT}\n`);
    expect(transitions.map((b) => b.state)).toEqual(["queued", "running", "success"]);
  });

  it("reports a non-zero exit as failure with the code", async () => {
    const dir = mkdtempSync(join(tmpdir(), "petrel-local-"));
    const { backend } = await start(join(dir, "data"), fakeExecutor(dir, "exit 3"));
    const { id } = await backend.dispatch({ builder: "builder", meta: META, idempotencyToken: "t" });
    const b = await until(async () => ((await backend.getBuild(id))?.state === "failure" ? backend.getBuild(id) : undefined));
    expect(b?.exitCode).toBe(3);
    expect(b?.reason).toBe("exit code 3");
  });

  it("answers a repeated idempotency token with the same build", async () => {
    const dir = mkdtempSync(join(tmpdir(), "petrel-local-"));
    const { backend } = await start(join(dir, "data"), fakeExecutor(dir, "true"));
    const [a, b] = await Promise.all([
      backend.dispatch({ builder: "builder", meta: META, idempotencyToken: "same" }),
      backend.dispatch({ builder: "builder", meta: META, idempotencyToken: "same" }),
    ]);
    expect(b.id).toBe(a.id);
    expect([a.duplicate, b.duplicate].sort()).toEqual([false, true]);
    expect((await backend.listBuilds({ limit: 10 })).builds).toHaveLength(1);
  });

  it("follows a running build's log live and ends when the build ends", async () => {
    const dir = mkdtempSync(join(tmpdir(), "petrel-local-"));
    const gate = join(dir, "gate");
    const { backend } = await start(
      join(dir, "data"),
      fakeExecutor(dir, `echo first; while [ ! -e ${gate} ]; do sleep 0.05; done; echo second`),
    );
    const { id } = await backend.dispatch({ builder: "builder", meta: META, idempotencyToken: "f" });
    const seen: string[] = [];
    const reading = (async () => {
      for await (const chunk of backend.logs(id, { type: "stdout", follow: true, offset: 0, signal: new AbortController().signal })) {
        seen.push(Buffer.from(chunk).toString());
      }
    })();
    await until(() => (seen.join("") === "first\n" ? true : undefined));
    writeFileSync(gate, "");
    await reading;
    expect(seen.join("")).toBe("first\nsecond\n");
  });

  it("never runs more builds at once than the concurrency allows", async () => {
    const dir = mkdtempSync(join(tmpdir(), "petrel-local-"));
    const trace = join(dir, "trace");
    // Each build appends +1 on start and -1 at the end; the running sum must never pass the limit.
    const { backend } = await start(join(dir, "data"), fakeExecutor(dir, `echo +1 >> ${trace}; sleep 0.2; echo -1 >> ${trace}`), {
      concurrency: 2,
    });
    const ids = await Promise.all(
      Array.from({ length: 5 }, (_, i) => backend.dispatch({ builder: "builder", meta: META, idempotencyToken: `c${i}` })),
    );
    await until(async () => ((await backend.listBuilds({ limit: 10, state: "success" })).builds.length === 5 ? true : undefined), 15_000);
    let now = 0;
    let peak = 0;
    for (const line of readFileSync(trace, "utf8").trim().split("\n")) {
      now += Number(line);
      peak = Math.max(peak, now);
    }
    expect(ids).toHaveLength(5);
    expect(peak).toBe(2);
  });

  it("hands the payload to the executor over a pipe, never as a file, and keeps it out of the record", async () => {
    const dir = mkdtempSync(join(tmpdir(), "petrel-local-"));
    const probe = join(dir, "probe");
    const gate = join(dir, "gate");
    const { backend } = await start(
      join(dir, "data"),
      fakeExecutor(
        dir,
        `ls -A "$NOMAD_TASK_DIR" > ${probe}; echo "fd=$PETREL_PAYLOAD_FD" >> ${probe}; cat <&3 >> ${probe}; echo >> ${probe}; env >> ${probe}; while [ ! -e ${gate} ]; do sleep 0.05; done`,
      ),
    );
    const { id } = await backend.dispatch({
      builder: "builder",
      meta: META,
      payload: { secrets: { DEPLOY_TOKEN: "s3cret" } },
      idempotencyToken: "p",
    });
    await until(() => (existsSync(probe) && readFileSync(probe, "utf8").includes("PATH=") ? true : undefined));
    // While the build runs, no file under the data directory holds the secret.
    const grep = spawnSync("grep", ["-rl", "s3cret", join(dir, "data")], { encoding: "utf8" });
    expect(grep.stdout).toBe("");
    expect(grep.status).toBe(1);
    writeFileSync(gate, "");
    await until(async () => ((await backend.getBuild(id))?.state === "success" ? true : undefined));
    const seen = readFileSync(probe, "utf8");
    expect(seen.startsWith("fd=3\n")).toBe(true);
    expect(seen).toContain('"DEPLOY_TOKEN":"s3cret"');
    // petrel's own settings never reach a build.
    expect(seen).not.toContain("PETREL_ADMIN_TOKEN");
    expect(seen).toContain("NOMAD_META_REPO=acme/widgets");
    expect(seen).toContain("NOMAD_META_PR=\n");
    const buildDir = join(dir, "data", "builds", encodeURIComponent(id));
    expect(existsSync(join(buildDir, "local", "payload.json"))).toBe(false);
    expect(readFileSync(join(buildDir, "build.json"), "utf8")).not.toContain("s3cret");
  });

  it.each([true, false])("cancels a running build, its children and escaped sessions included (namespaces: %s)", async (namespaces) => {
    if (namespaces && process.getuid?.() !== 0) return; // PID namespaces need root
    const dir = mkdtempSync(join(tmpdir(), "petrel-local-"));
    const started = join(dir, "started");
    // The executor stand-in ignores SIGTERM, and one child leaves the process group: both must still end.
    const { backend } = await start(
      join(dir, "data"),
      fakeExecutor(dir, `trap '' TERM; sleep 30 & setsid sleep 31 & touch ${started}; wait`),
      { namespaces },
    );
    const { id } = await backend.dispatch({ builder: "builder", meta: META, idempotencyToken: "k" });
    await until(() => (existsSync(started) ? true : undefined));
    expect((await findByEnv("NOMAD_JOB_ID", id)).length).toBeGreaterThanOrEqual(3);
    const t0 = Date.now();
    await backend.cancel(id);
    // Within the grace (killTimeoutMs 2000 in these tests) plus scheduling slack.
    expect(Date.now() - t0).toBeLessThan(4000);
    expect((await backend.getBuild(id))?.state).toBe("cancelled");
    expect(await findByEnv("NOMAD_JOB_ID", id)).toEqual([]);
  });

  it("cancels a queued build without running it", async () => {
    const dir = mkdtempSync(join(tmpdir(), "petrel-local-"));
    const gate = join(dir, "gate");
    const { backend } = await start(join(dir, "data"), fakeExecutor(dir, `while [ ! -e ${gate} ]; do sleep 0.05; done`));
    const first = await backend.dispatch({ builder: "builder", meta: META, idempotencyToken: "q1" });
    const second = await backend.dispatch({ builder: "builder", meta: META, idempotencyToken: "q2" });
    expect((await backend.getBuild(second.id))?.state).toBe("queued");
    await backend.cancel(second.id);
    writeFileSync(gate, "");
    await until(async () => ((await backend.getBuild(first.id))?.state === "success" ? true : undefined));
    const b = await backend.getBuild(second.id);
    expect(b?.state).toBe("cancelled");
    expect(b?.startedAt).toBeUndefined();
  });

  it("after a crash, reports the interrupted build as error, kills its executor and keeps its log", async () => {
    const dir = mkdtempSync(join(tmpdir(), "petrel-local-"));
    const data = join(dir, "data");
    const started = join(dir, "started");
    const exe = fakeExecutor(dir, `echo before-crash; setsid sleep 30 & touch ${started}; exec sleep 30`);
    const first = await start(data, exe);
    const { id } = await first.backend.dispatch({ builder: "builder", meta: META, idempotencyToken: "crash" });
    const queued = await first.backend.dispatch({ builder: "builder", meta: META, idempotencyToken: "after" });
    await until(() => (existsSync(started) ? true : undefined));
    expect((await findByEnv("NOMAD_JOB_ID", id)).length).toBeGreaterThanOrEqual(2);
    // A second petrel on the same data directory is what a restart after a crash looks like.
    backends.splice(backends.indexOf(first.backend), 1);
    const second = await start(data, fakeExecutor(dir, "echo ran"));
    const b = await second.backend.getBuild(id);
    expect(b?.state).toBe("error");
    expect(b?.reason).toMatch(/petrel stopped/);
    expect(second.transitions.find((t) => t.id === id)?.state).toBe("error");
    await until(async () => ((await findByEnv("NOMAD_JOB_ID", id)).length === 0 ? true : undefined), 5000);
    expect(existsSync(join(data, "builds", encodeURIComponent(id), "secrets"))).toBe(false);
    const log = await collect(second.backend.logs(id, { type: "stdout", follow: true, offset: 0, signal: new AbortController().signal }));
    expect(log).toBe("before-crash\n");
    // The build that was still queued runs after the restart.
    await until(async () => ((await second.backend.getBuild(queued.id))?.state === "success" ? true : undefined), 15_000);
  });

  it("keeps only the configured number of finished builds", async () => {
    const dir = mkdtempSync(join(tmpdir(), "petrel-local-"));
    const { backend } = await start(join(dir, "data"), fakeExecutor(dir, "true"), { keep: 2 });
    for (let i = 0; i < 4; i++) {
      const { id } = await backend.dispatch({ builder: "builder", meta: META, idempotencyToken: `r${i}` });
      await until(async () => ((await backend.getBuild(id))?.state === "success" ? true : undefined));
      await sleep(5);
    }
    // Pruning follows the last build's state change by a moment.
    await until(async () => ((await backend.listBuilds({ limit: 10 })).builds.length === 2 ? true : undefined), 5000);
    expect(statSync(join(dir, "data", "builds")).isDirectory()).toBe(true);
  });
});
