import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { Registry } from "prom-client";
import { afterEach, describe, expect, it } from "vitest";
import { createArchiver, LOOP_PACE, type Pace } from "../../src/archive/archiver.js";
import { createArchiveStore } from "../../src/archive/store.js";
import type { Build, BuildReader, LogType } from "../../src/builds/backend.js";
import { AppError } from "../../src/errors.js";
import { captureLogs } from "../helpers/log-capture.js";

const isRoot = process.getuid?.() === 0;

function build(n: number, state: Build["state"] = "success"): Build {
  return {
    id: `builder/dispatch-17000000${String(n).padStart(2, "0")}-0000000${n % 10}`,
    builder: "builder",
    repo: "acme/widgets",
    repoUrl: "https://git.example.test/acme/widgets.git",
    commit: "b".repeat(40),
    ref: "main",
    flavor: "default",
    event: "push",
    trusted: true,
    state,
    createdAt: "2026-12-07T03:00:00.000Z",
  };
}

/** Builds held in memory, with logs of a given size, counting the reads petrel makes. */
function memoryReader(builds: Build[], logBytes = 64) {
  const byId = new Map(builds.map((b) => [b.id, b]));
  const reads = { builds: 0, logs: 0 };
  const logsGone = new Set<string>();
  const reader: BuildReader = {
    listBuilds: async () => ({ builds: [...byId.values()], hidden: 0 }),
    getBuild: async (id) => {
      reads.builds++;
      return byId.get(id);
    },
    async *logs(id: string, request: { type: LogType }) {
      reads.logs++;
      if (logsGone.has(id)) throw new AppError("gone", "logs garbage-collected");
      yield Buffer.from(`${request.type} of ${id}\n`.padEnd(logBytes, "."));
    },
    cancel: async () => undefined,
  };
  return { reader, byId, reads, logsGone };
}

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0).reverse()) c();
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "petrel-archiver-"));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A real tmpfs of `size`, mounted (read-only if asked) on a fresh directory. */
function tmpfs(size: string, readOnly = false): string {
  const dir = tempDir();
  execFileSync("mount", ["-t", "tmpfs", "-o", `size=${size}${readOnly ? ",ro" : ""}`, "tmpfs", dir]);
  cleanups.push(() => execFileSync("umount", ["-l", dir]));
  return dir;
}

async function failuresMetric(registry: Registry): Promise<string> {
  return (await registry.getSingleMetricAsString("petrel_archive_failures_total")) ?? "";
}

describe("archiver", () => {
  it("archives a build once it is final, off the listener's call, and once only", async () => {
    const dir = tempDir();
    const store = createArchiveStore({ dir });
    const running = build(1, "running");
    const { reader, byId, reads } = memoryReader([running]);
    const logs = captureLogs();
    const archiver = createArchiver({ store, reader, log: logs.log, metrics: new Registry(), settleMs: 0 });
    archiver.onBuild(running);
    await archiver.idle();
    expect(await store.has(running.id)).toBe(false);

    const done = { ...running, state: "failure" as const, exitCode: 1 };
    byId.set(done.id, done);
    archiver.onBuild(done);
    // The listener returned before anything was read.
    expect(reads.builds).toBe(0);
    archiver.onBuild(done);
    await archiver.idle();
    expect(JSON.stringify(await store.get(done.id))).toBe(JSON.stringify(done));
    const parts: Buffer[] = [];
    for await (const c of (await store.log(done.id, "stderr")) ?? []) parts.push(Buffer.from(c));
    expect(Buffer.concat(parts).toString()).toMatch(/^stderr of builder\/dispatch-1700000001-00000001\n\.+$/);
    expect(reads.logs).toBe(3);
    // Reported again (a restart's reconciliation): already archived, nothing read.
    archiver.onBuild(done);
    await archiver.idle();
    expect(reads.logs).toBe(3);
    await archiver.stop();
  });

  it("waits a moment after the final state before reading logs, so bytes the log shipper still writes are kept", async () => {
    const store = createArchiveStore({ dir: tempDir() });
    const done = build(9, "success");
    const { reader } = memoryReader([done]);
    let tail = "";
    reader.logs = async function* () {
      yield Buffer.from(`first\n${tail}`);
    };
    const archiver = createArchiver({ store, reader, log: captureLogs().log, metrics: new Registry(), settleMs: 150 });
    archiver.onBuild(done);
    await sleep(20);
    tail = "last words\n";
    await archiver.idle();
    const parts: Buffer[] = [];
    for await (const c of (await store.log(done.id, "stdout")) ?? []) parts.push(Buffer.from(c));
    expect(Buffer.concat(parts).toString()).toBe("first\nlast words\n");
    await archiver.stop();
  });

  it("does not archive a build whose logs the backend already lost, and says so", async () => {
    const store = createArchiveStore({ dir: tempDir() });
    const done = build(2, "success");
    const { reader, logsGone } = memoryReader([done]);
    logsGone.add(done.id);
    const logs = captureLogs();
    const archiver = createArchiver({ store, reader, log: logs.log, metrics: new Registry(), settleMs: 0 });
    archiver.onBuild(done);
    await archiver.idle();
    expect(await store.has(done.id)).toBe(false);
    expect(logs.text()).toMatch(/logs were gone before it could be archived/);
    await archiver.stop();
  });

  it("an unwritable directory: logged once, counted per build, retried, and archived once writable", async () => {
    const base = tempDir();
    // A file where the archive's directory should be: ENOTDIR for root too.
    writeFileSync(join(base, "archive"), "");
    const store = createArchiveStore({ dir: join(base, "archive") });
    const builds = [build(3), build(4), build(5)];
    const { reader } = memoryReader(builds);
    const logs = captureLogs();
    const metrics = new Registry();
    const archiver = createArchiver({ store, reader, log: logs.log, metrics, retryMs: 100, settleMs: 0 });
    for (const b of builds) archiver.onBuild(b);
    await archiver.idle();
    expect(await failuresMetric(metrics)).toMatch(/petrel_archive_failures_total\{cause="unwritable"\} 3/);
    expect(logs.lines.filter((l) => l.includes("could not archive a build"))).toHaveLength(1);

    // Retried later, and failing the same way: counted, not logged again.
    await sleep(250);
    await archiver.idle();
    expect(logs.lines.filter((l) => l.includes("could not archive a build"))).toHaveLength(1);
    expect(Number(/cause="unwritable"\} (\d+)/.exec(await failuresMetric(metrics))?.[1])).toBeGreaterThan(3);

    rmSync(join(base, "archive"));
    mkdirSync(join(base, "archive"));
    for (let i = 0; i < 40 && !(await store.has(builds[2]?.id ?? "")); i++) await sleep(50);
    await archiver.idle();
    for (const b of builds) expect(await store.has(b.id)).toBe(true);
    expect(logs.text()).toMatch(/archiving builds works again/);
    await archiver.stop();
  });

  it.skipIf(!isRoot)("a full disk (a real 256 KiB tmpfs): cause disk_full, the failed entry leaves no debris (needs root)", async () => {
    const dir = tmpfs("256k");
    const store = createArchiveStore({ dir });
    // Incompressible logs, so they fill the file system.
    const { reader } = memoryReader([build(6)], 0);
    const big = build(7);
    const noise = randomBytes(512 * 1024);
    reader.logs = async function* () {
      yield noise;
    };
    reader.getBuild = async (id) => (id === big.id ? big : undefined);
    const logs = captureLogs();
    const metrics = new Registry();
    const archiver = createArchiver({ store, reader, log: logs.log, metrics, retryMs: 60_000, settleMs: 0 });
    archiver.onBuild(big);
    await archiver.idle();
    expect(await failuresMetric(metrics)).toMatch(/cause="disk_full"\} 1/);
    expect(logs.text()).toMatch(/"cause":"disk_full"/);
    expect(await store.has(big.id)).toBe(false);
    expect(execFileSync("find", [dir, "-type", "f"]).toString().trim()).toBe("");
    await archiver.stop();
  });

  it.skipIf(!isRoot)("a read-only file system: cause unwritable (needs root)", async () => {
    const dir = tmpfs("1m", true);
    const store = createArchiveStore({ dir });
    const { reader } = memoryReader([build(8)]);
    const metrics = new Registry();
    const logs = captureLogs();
    const archiver = createArchiver({ store, reader, log: logs.log, metrics, settleMs: 0 });
    archiver.onBuild(build(8));
    await archiver.idle();
    expect(logs.text()).toMatch(/EROFS/);
    expect(await failuresMetric(metrics)).toMatch(/cause="unwritable"\} 1/);
    await archiver.stop();
  });

  /** An archiver over `reader` pacing itself by `pace` (the process's own loop, unless a test says otherwise). */
  const paced = (reader: BuildReader, pace: Partial<Pace>) => {
    const store = createArchiveStore({ dir: tempDir() });
    const archiver = createArchiver({ store, reader, log: captureLogs().log, metrics: new Registry(), settleMs: 0, pace });
    return { store, archiver };
  };

  it("yields to a busy event loop: no build is archived while other work keeps the loop busy, all of them once it is quiet", async () => {
    const done = [build(11), build(12), build(13)];
    const { reader, reads } = memoryReader(done);
    // Real foreground work that leaves the loop no idle moment: 5 ms slices of CPU, one per turn of the loop
    // (setImmediate: the loop never waits for I/O in between), so any window the archiver looks at is busy.
    let spinning = true;
    const slice = () => {
      const until = performance.now() + 5;
      while (spinning && performance.now() < until);
      if (spinning) setImmediate(slice);
    };
    setImmediate(slice);
    // The process's own loop, measured as the archiver measures it; the looks that found it busy are counted.
    let busyLooks = 0;
    let seen = () => {};
    const { store, archiver } = paced(reader, {
      maxDeferMs: 60_000,
      utilization: (since) => {
        const u = LOOP_PACE.utilization(since);
        if (u > LOOP_PACE.busyAbove) busyLooks += 1;
        if (busyLooks >= 20) seen();
        return u;
      },
    });
    try {
      const all = archiver.archive(done.map((b) => b.id));
      // Twenty looks at the loop, each finding it busy: the archiver waited and read nothing meanwhile.
      await new Promise<void>((r) => {
        seen = r;
      });
      expect(reads.builds).toBe(0);
      for (const b of done) expect(await store.has(b.id)).toBe(false);
      spinning = false;
      const t0 = performance.now();
      await all;
      expect(performance.now() - t0).toBeLessThan(5000);
      for (const b of done) expect(await store.has(b.id)).toBe(true);
    } finally {
      spinning = false;
      await archiver.stop();
    }
  });

  it("a loop that stays busy still archives, one build per maxDeferMs", async () => {
    const done = [build(21), build(22), build(23)];
    const { reader } = memoryReader(done);
    let looks = 0;
    const { store, archiver } = paced(reader, {
      maxDeferMs: 150,
      checkMs: 10,
      mark: () => undefined,
      utilization: () => {
        looks++;
        return 1;
      },
    });
    const t0 = performance.now();
    await archiver.archive(done.map((b) => b.id));
    const took = performance.now() - t0;
    for (const b of done) expect(await store.has(b.id)).toBe(true);
    // Each build waited its full deferral, looking at the loop again and again meanwhile.
    expect(took).toBeGreaterThanOrEqual(3 * 150 - 10);
    expect(looks).toBeGreaterThanOrEqual(3 * 5);
    await archiver.stop();
  });

  it("does not wait on a quiet loop", async () => {
    const store = createArchiveStore({ dir: tempDir() });
    const done = Array.from({ length: 20 }, (_, i) => build(30 + i));
    const { reader } = memoryReader(done);
    const archiver = createArchiver({ store, reader, log: captureLogs().log, metrics: new Registry(), settleMs: 0 });
    const t0 = performance.now();
    await archiver.archive(done.map((b) => b.id));
    for (const b of done) expect(await store.has(b.id)).toBe(true);
    // 20 builds in far less than 20 of the default 1 s deferrals.
    expect(performance.now() - t0).toBeLessThan(5000);
    await archiver.stop();
  });
});
