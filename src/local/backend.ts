import { spawn } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { closeSync, openSync } from "node:fs";
import { chmod, mkdir, open, readFile, rm, stat, writeFile } from "node:fs/promises";
import { hostname } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import type {
  BuildPage,
  Build,
  BuildBackend,
  BuildFilter,
  BuildListener,
  BuildReader,
  BuilderParams,
  DispatchRequest,
  DispatchResult,
  LogRequest,
} from "../builds/backend.js";
import { isAfterCursor, isTerminal, newestFirst } from "../builds/backend.js";
import { OPTIONAL_META, REQUIRED_META } from "../builds/dispatch.js";
import { buildFromMeta, matchesFilter } from "../builds/model.js";
import { AppError } from "../errors.js";
import type { Logger } from "../log.js";
import { createBuildStore } from "./store.js";
import type { BuildRecord, BuildStore } from "./store.js";

/** The executor, run as Nomad would run it: `petrel executor` with a task environment. */
const DEFAULT_EXECUTOR = [fileURLToPath(new URL("../../bin/petrel.js", import.meta.url)), "executor"];
const JOB_ID = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
const POLL_MS = 100;
const LOG_CHUNK = 64 * 1024;
/** Variables a build may see from petrel's own environment; tokens and petrel's settings stay behind. */
const PASSED_ENV = ["PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TMPDIR", "SHELL", "TZ"];

export interface LocalBackendOptions {
  dataDir: string;
  concurrency: number;
  log: Logger;
  /** Terminal builds kept; older ones are deleted with their logs. */
  keep?: number;
  /** Terminal builds older than this are deleted. */
  maxAgeMs?: number;
  /** Command and arguments of the executor; default `node bin/petrel.js executor`. */
  executor?: string[];
  /** Grace between SIGTERM and SIGKILL when a build is cancelled. */
  killTimeoutMs?: number;
  onTransition?: BuildListener;
  /** The environment petrel was started with; only PASSED_ENV reaches builds. */
  env?: NodeJS.ProcessEnv;
}

export type LocalBackend = BuildBackend & BuildReader & { close(): Promise<void> };

interface Running {
  pid: number;
  cancelled: boolean;
  exited: Promise<void>;
}

/** Single-machine mode: builds run as child processes of petrel, one queue, records and logs on disk. */
export async function createLocalBackend(options: LocalBackendOptions): Promise<LocalBackend> {
  const { log } = options;
  const store: BuildStore = createBuildStore(options.dataDir);
  const cacheDir = join(options.dataDir, "cache");
  const keep = options.keep ?? 500;
  const maxAgeMs = options.maxAgeMs ?? 30 * 24 * 3600 * 1000;
  const killTimeoutMs = options.killTimeoutMs ?? 10_000;
  const executor = options.executor ?? [process.execPath, ...DEFAULT_EXECUTOR];
  const node = hostname();

  const records = new Map<string, BuildRecord>();
  const byToken = new Map<string, string>();
  const queue: string[] = [];
  const running = new Map<string, Running>();
  // Slots are taken synchronously in pump(): start() awaits before it registers the process.
  let active = 0;
  const wakers = new Map<string, Set<() => void>>();
  let closed = false;

  const toBuild = (r: BuildRecord): Build => {
    const b: Build = { ...buildFromMeta(r.id, r.builder, r.meta), state: r.state, createdAt: r.createdAt };
    if (r.reason !== undefined) b.reason = r.reason;
    if (r.exitCode !== undefined) b.exitCode = r.exitCode;
    if (r.startedAt !== undefined) b.startedAt = r.startedAt;
    if (r.finishedAt !== undefined) b.finishedAt = r.finishedAt;
    if (r.state !== "queued") b.node = node;
    return b;
  };

  const wake = (id: string) => {
    for (const w of wakers.get(id) ?? []) w();
  };

  const update = async (record: BuildRecord) => {
    records.set(record.id, record);
    await store.save(record);
    wake(record.id);
    try {
      options.onTransition?.(toBuild(record));
    } catch (err) {
      log.error({ err, build: record.id }, "build listener failed");
    }
  };

  const known = (id: string): BuildRecord => {
    const record = records.get(id);
    if (record === undefined) throw new AppError("not_found", 404, `no build ${id}`);
    return record;
  };

  // Recover what the last run left: a build that was running when petrel died is over, and says so.
  await mkdir(cacheDir, { recursive: true });
  const loaded = await store.loadAll();
  for (const name of loaded.broken) log.warn({ dir: name }, "ignoring a build directory without a readable build.json");
  for (const record of loaded.records.sort((a, b) => a.createdAt.localeCompare(b.createdAt))) {
    records.set(record.id, record);
    byToken.set(record.idempotencyToken, record.id);
    if (record.state === "running") {
      if (record.pid !== undefined) await killOrphan(record.pid, record.id);
      await update({
        ...record,
        state: "error",
        reason: "petrel stopped while the build was running",
        finishedAt: new Date().toISOString(),
      });
      await rm(join(store.dirOf(record.id), "local"), { recursive: true, force: true });
    } else if (record.state === "queued") {
      queue.push(record.id);
    }
  }
  await prune();
  pump();

  function pump(): void {
    while (!closed && active < options.concurrency && queue.length > 0) {
      const id = queue.shift();
      const record = id === undefined ? undefined : records.get(id);
      if (record === undefined || record.state !== "queued") continue;
      active++;
      void start(record).catch(async (err: unknown) => {
        log.error({ err, build: record.id }, "could not start the build");
        active--;
        running.delete(record.id);
        await update({ ...record, state: "error", reason: `could not start the executor: ${(err as Error).message}`, finishedAt: new Date().toISOString() });
        pump();
      });
    }
  }

  async function start(record: BuildRecord): Promise<void> {
    const dir = store.dirOf(record.id);
    const taskDir = join(dir, "local");
    const secretsDir = join(dir, "secrets");
    await mkdir(taskDir, { recursive: true });
    await mkdir(secretsDir, { recursive: true, mode: 0o700 });
    const env: NodeJS.ProcessEnv = {};
    for (const name of PASSED_ENV) if (options.env?.[name] !== undefined) env[name] = options.env[name];
    env.PATH ??= "/usr/local/bin:/usr/bin:/bin";
    for (const key of [...REQUIRED_META, ...OPTIONAL_META]) env[`NOMAD_META_${key}`] = record.meta[key] ?? "";
    Object.assign(env, {
      NOMAD_JOB_ID: record.id,
      NOMAD_JOB_PARENT_ID: record.builder,
      NOMAD_JOB_NAME: record.id,
      NOMAD_TASK_NAME: "executor",
      NOMAD_GROUP_NAME: "runner",
      NOMAD_ALLOC_ID: randomUUID(),
      NOMAD_TASK_DIR: taskDir,
      NOMAD_SECRETS_DIR: secretsDir,
      PETREL_CACHE_DIR: cacheDir,
      // `type=all`: stdout, stderr and step lines merged, next to stdout.log and stderr.log (read as all.log).
      PETREL_MERGED_LOG: join(dir, "all.log"),
    });
    const out = openSync(join(dir, "stdout.log"), "a");
    const err = openSync(join(dir, "stderr.log"), "a");
    const [command, ...args] = executor as [string, ...string[]];
    // Its own process group, so cancelling reaches the build script's children too.
    const child = spawn(command, args, { cwd: dir, env, detached: true, stdio: ["ignore", out, err] });
    closeSync(out);
    closeSync(err);
    let exited!: () => void;
    const entry: Running = { pid: child.pid ?? -1, cancelled: false, exited: new Promise((r) => (exited = r)) };
    running.set(record.id, entry);
    child.once("error", (e) => {
      log.error({ err: e, build: record.id }, "executor failed to start");
    });
    child.once("close", (code, signal) => {
      void finish(record.id, entry, code, signal)
        .catch((e: unknown) => log.error({ err: e, build: record.id }, "could not record the end of a build"))
        .finally(exited);
    });
    await update({ ...record, state: "running", startedAt: new Date().toISOString(), pid: entry.pid });
  }

  async function finish(id: string, entry: Running, code: number | null, signal: NodeJS.Signals | null): Promise<void> {
    running.delete(id);
    active--;
    const record = known(id);
    const finishedAt = new Date().toISOString();
    const { pid: _pid, ...rest } = record;
    let next: BuildRecord;
    if (entry.cancelled) next = { ...rest, state: "cancelled", reason: "cancelled", finishedAt };
    else if (closed) next = { ...rest, state: "error", reason: "petrel stopped while the build was running", finishedAt };
    else if (code === 0) next = { ...rest, state: "success", exitCode: 0, finishedAt };
    else if (code !== null) next = { ...rest, state: "failure", exitCode: code, reason: `exit code ${code}`, finishedAt };
    else next = { ...rest, state: "error", reason: `executor killed by ${signal ?? "a signal"}`, finishedAt };
    // The payload holds the build's secrets: it lives only as long as the build.
    await rm(join(store.dirOf(id), "local"), { recursive: true, force: true });
    await rm(join(store.dirOf(id), "secrets"), { recursive: true, force: true });
    await update(next);
    log.info({ build: id, state: next.state, exitCode: next.exitCode }, "build finished");
    await prune();
    pump();
  }

  async function prune(): Promise<void> {
    const done = [...records.values()]
      .filter((r) => isTerminal(r.state))
      .sort((a, b) => (b.finishedAt ?? b.createdAt).localeCompare(a.finishedAt ?? a.createdAt));
    const cutoff = Date.now() - maxAgeMs;
    for (const [i, r] of done.entries()) {
      if (i < keep && Date.parse(r.finishedAt ?? r.createdAt) >= cutoff) continue;
      records.delete(r.id);
      byToken.delete(r.idempotencyToken);
      await store.remove(r.id);
    }
  }

  async function killOrphan(pid: number, id: string): Promise<void> {
    // Only if that pid is still this build's executor: pids get reused.
    try {
      const environ = await readFile(`/proc/${pid}/environ`, "utf8");
      if (!environ.split("\0").includes(`NOMAD_JOB_ID=${id}`)) return;
      process.kill(-pid, "SIGKILL");
      log.warn({ build: id, pid }, "killed an executor left over from petrel's last run");
    } catch {
      // gone already, or not ours to read
    }
  }

  async function waitFor(id: string, signal: AbortSignal, ms: number): Promise<void> {
    let wakeUp!: () => void;
    const woken = new Promise<void>((r) => (wakeUp = r));
    const set = wakers.get(id) ?? new Set();
    set.add(wakeUp);
    wakers.set(id, set);
    try {
      await Promise.race([woken, sleep(ms, undefined, { signal })]);
    } finally {
      set.delete(wakeUp);
      if (set.size === 0) wakers.delete(id);
    }
  }

  return {
    kind: "local",
    async parameterized(builder): Promise<BuilderParams> {
      if (!JOB_ID.test(builder)) throw new AppError("bad_request", 400, `${JSON.stringify(builder)} is not a builder name`);
      return { payload: "optional", metaRequired: [...REQUIRED_META], metaOptional: [...OPTIONAL_META] };
    },

    async dispatch(request: DispatchRequest): Promise<DispatchResult> {
      if (closed) throw new AppError("nomad_unavailable", 503, "petrel is shutting down; redeliver the webhook");
      const existing = byToken.get(request.idempotencyToken);
      if (existing !== undefined) return { id: existing, duplicate: true };
      const id = `${request.builder}/dispatch-${Math.floor(Date.now() / 1000)}-${randomBytes(4).toString("hex")}`;
      const record: BuildRecord = {
        id,
        builder: request.builder,
        meta: request.meta,
        idempotencyToken: request.idempotencyToken,
        state: "queued",
        createdAt: new Date().toISOString(),
      };
      // Claimed before the first await, so a concurrent identical delivery sees it.
      byToken.set(request.idempotencyToken, id);
      try {
        if (request.payload !== undefined) {
          const taskDir = join(store.dirOf(id), "local");
          await mkdir(taskDir, { recursive: true, mode: 0o700 });
          await writeFile(join(taskDir, "payload.json"), JSON.stringify(request.payload), { mode: 0o600 });
          await chmod(join(taskDir, "payload.json"), 0o600);
        }
        await update(record);
      } catch (err) {
        byToken.delete(request.idempotencyToken);
        records.delete(id);
        await store.remove(id).catch(() => undefined);
        const code = (err as NodeJS.ErrnoException).code;
        throw new AppError("internal", code === "ENOSPC" ? 507 : 500, `cannot record the build in ${store.root}: ${code ?? (err as Error).message}`);
      }
      queue.push(id);
      pump();
      return { id, duplicate: false };
    },

    async health() {
      try {
        await stat(store.root);
        return { ok: true };
      } catch (err) {
        return { ok: false, error: `data directory ${store.root}: ${(err as NodeJS.ErrnoException).code ?? "unreadable"}` };
      }
    },

    async listBuilds(filter: BuildFilter): Promise<BuildPage> {
      const sorted = [...records.values()]
        .map((record) => ({ build: toBuild(record), time: Date.parse(record.createdAt), id: record.id }))
        .filter((c) => isAfterCursor(c.time, c.id, filter.after) && matchesFilter(c.build, filter))
        .sort(newestFirst);
      const page: BuildPage = { builds: [], hidden: 0 };
      let at = 0;
      for (; at < sorted.length && page.builds.length < filter.limit; at += 1) {
        const { build } = sorted[at] as { build: Build };
        if (filter.visible !== undefined && !(await filter.visible(build))) page.hidden += 1;
        else page.builds.push(build);
      }
      const last = sorted[at - 1];
      if (at < sorted.length && last !== undefined) page.next = { time: last.time, id: last.id };
      return page;
    },

    async getBuild(id) {
      const record = records.get(id);
      return record === undefined ? undefined : toBuild(record);
    },

    async *logs(id: string, request: LogRequest): AsyncIterable<Uint8Array> {
      known(id);
      const path = join(store.dirOf(id), `${request.type}.log`);
      let position = Math.max(0, request.offset);
      const buffer = Buffer.alloc(LOG_CHUNK);
      for (;;) {
        // Read the state before the bytes: bytes written before the build ended are all there once it has.
        const ended = isTerminal(known(id).state);
        let handle;
        try {
          handle = await open(path, "r");
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
        }
        if (handle !== undefined) {
          try {
            for (;;) {
              const { bytesRead } = await handle.read(buffer, 0, LOG_CHUNK, position);
              if (bytesRead === 0) break;
              position += bytesRead;
              yield Buffer.from(buffer.subarray(0, bytesRead));
            }
          } finally {
            await handle.close();
          }
        }
        if (ended || !request.follow) {
          if (!records.has(id)) throw new AppError("gone", 410, `build ${id} was removed by retention while its log was read`);
          return;
        }
        await waitFor(id, request.signal, POLL_MS);
      }
    },

    async cancel(id) {
      const record = known(id);
      if (record.state === "queued") {
        const at = queue.indexOf(id);
        if (at >= 0) queue.splice(at, 1);
        await rm(join(store.dirOf(id), "local"), { recursive: true, force: true });
        await update({ ...record, state: "cancelled", reason: "cancelled before it started", finishedAt: new Date().toISOString() });
        return;
      }
      const entry = running.get(id);
      if (entry === undefined) return;
      entry.cancelled = true;
      signalGroup(entry.pid, "SIGTERM");
      const timer = setTimeout(() => signalGroup(entry.pid, "SIGKILL"), killTimeoutMs);
      timer.unref();
      await entry.exited;
      clearTimeout(timer);
    },

    async close() {
      closed = true;
      const exits = [...running.values()].map((entry) => {
        signalGroup(entry.pid, "SIGTERM");
        const timer = setTimeout(() => signalGroup(entry.pid, "SIGKILL"), killTimeoutMs);
        timer.unref();
        return entry.exited.finally(() => clearTimeout(timer));
      });
      await Promise.all(exits);
    },
  };
}

function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // already gone
  }
}
