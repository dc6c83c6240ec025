import { spawn } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { closeSync, openSync } from "node:fs";
import { type FileHandle, mkdir, open, readFile, rm, stat } from "node:fs/promises";
import { hostname } from "node:os";
import { dirname, join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import type {
  Build,
  BuildBackend,
  BuildDispatch,
  BuilderParams,
  BuildFilter,
  BuildListener,
  BuildPage,
  BuildReader,
  DispatchedBuild,
  LogRequest,
  StopReason,
} from "../builds/backend.js";
import { isTerminal } from "../builds/backend.js";
import { buildFromMeta, matchesFilter } from "../builds/model.js";
import { createNewestFirstIndex } from "../builds/sorted.js";
import { type DispatchPayload, dispatchId, OPTIONAL_META, REQUIRED_META } from "../contract/dispatch.js";
import { AppError } from "../errors.js";
import type { Logger } from "../log.js";
import { childrenOf, killByEnv, namespaceArgv, namespaceProblem } from "./isolate.js";
import type { BuildRecord, BuildStore } from "./store.js";
import { createBuildStore } from "./store.js";

/** The executor, run as Nomad would run it: `petrel executor` with a task environment. */
const DEFAULT_EXECUTOR = [fileURLToPath(new URL("../../bin/petrel.js", import.meta.url)), "executor"];
const JOB_ID = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
const POLL_MS = 100;
const LOG_CHUNK = 64 * 1024;
/** The merged log (`type=all`) under a build's directory. */
const MERGED_LOG = "merged/all.log";
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
  /**
   * Time from SIGTERM to the end of every process of a cancelled build. The executor gets most of it as its
   * own grace (PETREL_KILL_GRACE) to stop the script and clean up; then petrel kills what is left.
   */
  killTimeoutMs?: number;
  /** petrel.yaml: hidden from builds with the data directory. */
  configPath?: string;
  /** Run builds in their own PID and mount namespaces; default: when petrel is root and the kernel allows it. */
  namespaces?: boolean;
  onTransition?: BuildListener;
  /** The environment petrel was started with; only PASSED_ENV reaches builds. */
  env?: NodeJS.ProcessEnv;
}

export type LocalBackend = BuildBackend & BuildReader & { close(): Promise<void> };

interface Running {
  /** The executor's process group leader: `setpriv`/`unshare` with namespaces, else the executor. */
  pid: number;
  /** Every process of the build inherits NOMAD_ALLOC_ID=alloc. */
  alloc: string;
  namespaced: boolean;
  cancelled: boolean;
  /** Set when a policy stopped it (superseded, timed out). */
  why?: StopReason;
  exited: Promise<void>;
}

/** Single-machine mode: builds run as child processes of petrel, one queue, records and logs on disk. */
export async function createLocalBackend(options: LocalBackendOptions): Promise<LocalBackend> {
  const { log } = options;
  // Absolute: the build's mount namespace is set up from these paths, with another working directory.
  const dataDir = resolve(options.dataDir);
  const store: BuildStore = createBuildStore(dataDir);
  const cacheDir = join(dataDir, "cache");
  const keep = options.keep ?? 500;
  const maxAgeMs = options.maxAgeMs ?? 30 * 24 * 3600 * 1000;
  const killTimeoutMs = options.killTimeoutMs ?? 10_000;
  // Well inside petrel's deadline, so the executor's own SIGKILL of the script never races petrel's.
  const executorGraceMs = Math.max(Math.floor(killTimeoutMs / 2), killTimeoutMs - 3000);
  const executor = options.executor ?? [process.execPath, ...DEFAULT_EXECUTOR];
  const node = hostname();
  const probeEnv = { PATH: options.env?.PATH ?? "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin" };
  const problem = options.namespaces === false ? "switched off" : namespaceProblem(process.getuid?.(), probeEnv);
  const namespaced = problem === undefined;
  if (!namespaced) {
    log.warn(
      { reason: problem },
      "single-machine builds run without their own PID and mount namespaces: a build can see other builds' processes and petrel's data directory; run petrel as root for isolation",
    );
  }
  // Payloads (secrets, deploy keys) of queued builds: in memory only, handed to the executor over a pipe.
  const payloads = new Map<string, DispatchPayload | string>();

  const records = new Map<string, BuildRecord>();
  // The same builds in listing order, so a page costs its size, not a sort of every build kept.
  const listed = createNewestFirstIndex();
  const rank = (r: BuildRecord) => ({ time: Date.parse(r.createdAt), id: r.id });
  const setRecord = (r: BuildRecord) => {
    if (!records.has(r.id)) listed.add(rank(r));
    records.set(r.id, r);
  };
  const deleteRecord = (id: string) => {
    const r = records.get(id);
    if (r === undefined) return;
    records.delete(id);
    listed.delete(rank(r));
  };
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
    setRecord(record);
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
    if (record === undefined) throw new AppError("not_found", `no build ${id}`);
    return record;
  };

  // Recover what the last run left: a build that was running when petrel died is over, and says so.
  await mkdir(cacheDir, { recursive: true });
  const loaded = await store.loadAll();
  for (const name of loaded.broken) log.warn({ dir: name }, "ignoring a build directory without a readable build.json");
  listed.addAll(loaded.records.map(rank));
  for (const record of loaded.records.sort((a, b) => a.createdAt.localeCompare(b.createdAt))) {
    records.set(record.id, record);
    byToken.set(record.idempotencyToken, record.id);
    if (record.state === "running") {
      await killLeftovers(record);
      const { pid: _pid, ...rest } = record;
      await update({ ...rest, state: "error", reason: "petrel stopped while the build was running", finishedAt: new Date().toISOString() });
      await removeTaskFiles(record.id);
    } else if (record.state === "queued" && record.secret) {
      await update({
        ...record,
        state: "error",
        reason: "petrel restarted before the build started; its secrets were kept in memory only: redeliver the webhook",
        finishedAt: new Date().toISOString(),
      });
      await removeTaskFiles(record.id);
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
      const payload = payloads.get(record.id);
      payloads.delete(record.id);
      void start(record, payload).catch(async (err: unknown) => {
        log.error({ err, build: record.id }, "could not start the build");
        active--;
        running.delete(record.id);
        await update({
          ...record,
          state: "error",
          reason: `could not start the executor: ${(err as Error).message}`,
          finishedAt: new Date().toISOString(),
        });
        pump();
      });
    }
  }

  async function start(record: BuildRecord, payload: DispatchPayload | string | undefined): Promise<void> {
    const dir = store.dirOf(record.id);
    const taskDir = join(dir, "local");
    const secretsDir = join(dir, "secrets");
    await mkdir(taskDir, { recursive: true, mode: 0o700 });
    await mkdir(dirname(join(dir, MERGED_LOG)), { recursive: true, mode: 0o700 });
    await mkdir(secretsDir, { recursive: true, mode: 0o700 });
    const alloc = randomUUID();
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
      NOMAD_ALLOC_ID: alloc,
      NOMAD_TASK_DIR: taskDir,
      NOMAD_SECRETS_DIR: secretsDir,
      PETREL_CACHE_DIR: cacheDir,
      // `type=all`: stdout, stderr and step lines merged. In a directory of its own, so the build's mount
      // namespace can keep it visible while the rest of the build's record is hidden.
      PETREL_MERGED_LOG: join(dir, MERGED_LOG),
      PETREL_KILL_GRACE: `${executorGraceMs}ms`,
    });
    if (payload !== undefined) env.PETREL_PAYLOAD_FD = "3";
    const argv = namespaced
      ? namespaceArgv({
          dataDir,
          keep: [cacheDir, taskDir, dirname(join(dir, MERGED_LOG))],
          tmpfs: [secretsDir],
          hideFiles: options.configPath === undefined ? [] : [resolve(options.configPath)],
          cwd: taskDir,
          command: executor,
        })
      : executor;
    const out = openSync(join(dir, "stdout.log"), "a");
    const err = openSync(join(dir, "stderr.log"), "a");
    const [command, ...args] = argv as [string, ...string[]];
    // Its own process group; with namespaces the executor is the init of the build's PID namespace.
    const child = spawn(command, args, {
      cwd: taskDir,
      env,
      detached: true,
      stdio: ["ignore", out, err, ...(payload === undefined ? [] : (["pipe"] as const))],
    });
    closeSync(out);
    closeSync(err);
    const pipe = child.stdio[3] as NodeJS.WritableStream | null | undefined;
    if (payload !== undefined && pipe) {
      pipe.on("error", (e: Error) => log.warn({ err: e.message, build: record.id }, "could not hand the payload to the executor"));
      pipe.end(typeof payload === "string" ? payload : JSON.stringify(payload));
    }
    let exited!: () => void;
    const entry: Running = { pid: child.pid ?? -1, alloc, namespaced, cancelled: false, exited: new Promise((r) => (exited = r)) };
    running.set(record.id, entry);
    child.once("error", (e) => {
      log.error({ err: e, build: record.id }, "executor failed to start");
    });
    child.once("close", (code, signal) => {
      void finish(record.id, entry, code, signal)
        .catch((e: unknown) => log.error({ err: e, build: record.id }, "could not record the end of a build"))
        .finally(exited);
    });
    await update({ ...record, state: "running", startedAt: new Date().toISOString(), pid: entry.pid, alloc });
  }

  async function finish(id: string, entry: Running, code: number | null, signal: NodeJS.Signals | null): Promise<void> {
    running.delete(id);
    active--;
    const record = known(id);
    const finishedAt = new Date().toISOString();
    const { pid: _pid, ...rest } = record;
    // Without namespaces, processes that left the executor's group (setsid, double forks) end here.
    const leftovers = await killByEnv("NOMAD_ALLOC_ID", entry.alloc).catch(() => 0);
    if (leftovers > 0) log.warn({ build: id, processes: leftovers }, "killed processes the build left running");
    let next: BuildRecord;
    if (entry.cancelled) next = { ...rest, state: entry.why?.state ?? "cancelled", reason: entry.why?.reason ?? "cancelled", finishedAt };
    else if (closed) next = { ...rest, state: "error", reason: "petrel stopped while the build was running", finishedAt };
    else if (code === 0) next = { ...rest, state: "success", exitCode: 0, finishedAt };
    else if (code !== null) next = { ...rest, state: "failure", exitCode: code, reason: `exit code ${code}`, finishedAt };
    else next = { ...rest, state: "error", reason: `executor killed by ${signal ?? "a signal"}`, finishedAt };
    await removeTaskFiles(id);
    // Retention first, so whoever sees this build end sees the list it leaves.
    setRecord(next);
    await prune();
    await update(next);
    log.info({ build: id, state: next.state, exitCode: next.exitCode }, "build finished");
    pump();
  }

  async function prune(): Promise<void> {
    const done = [...records.values()]
      .filter((r) => isTerminal(r.state))
      .sort((a, b) => (b.finishedAt ?? b.createdAt).localeCompare(a.finishedAt ?? a.createdAt));
    const cutoff = Date.now() - maxAgeMs;
    for (const [i, r] of done.entries()) {
      if (i < keep && Date.parse(r.finishedAt ?? r.createdAt) >= cutoff) continue;
      deleteRecord(r.id);
      byToken.delete(r.idempotencyToken);
      await store.remove(r.id);
    }
  }

  /** The build's secrets file and task directory live only as long as the build. */
  async function removeTaskFiles(id: string): Promise<void> {
    await rm(join(store.dirOf(id), "local"), { recursive: true, force: true });
    await rm(join(store.dirOf(id), "secrets"), { recursive: true, force: true });
  }

  /** Ends whatever a build that was running when petrel died left: by its marker, or its recorded pid. */
  async function killLeftovers(record: BuildRecord): Promise<void> {
    let killed = 0;
    if (record.alloc !== undefined) killed = await killByEnv("NOMAD_ALLOC_ID", record.alloc).catch(() => 0);
    if (record.pid !== undefined) {
      // Only if that pid is still this build's: pids get reused.
      try {
        const environ = await readFile(`/proc/${record.pid}/environ`, "utf8");
        if (environ.split("\0").includes(`NOMAD_JOB_ID=${record.id}`)) {
          process.kill(-record.pid, "SIGKILL");
          killed++;
        }
      } catch {
        // gone already, or not ours to read
      }
    }
    if (killed > 0) log.warn({ build: record.id, processes: killed }, "killed processes left over from petrel's last run");
  }

  /**
   * SIGTERM to the executor, which stops the script within its grace; at the deadline SIGKILL to all that is
   * left. With namespaces that is exact: killing the PID namespace's init kills every process in it.
   */
  async function stop(entry: Running): Promise<void> {
    const init = entry.namespaced ? await childrenOf(entry.pid).catch(() => []) : [];
    if (init.length > 0) for (const pid of init) signal(pid, "SIGTERM");
    else signalGroup(entry.pid, "SIGTERM");
    const timer = setTimeout(() => {
      signalGroup(entry.pid, "SIGKILL");
      for (const pid of init) signal(pid, "SIGKILL");
      void killByEnv("NOMAD_ALLOC_ID", entry.alloc).catch(() => 0);
    }, killTimeoutMs);
    timer.unref();
    try {
      await entry.exited;
    } finally {
      clearTimeout(timer);
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
      if (!JOB_ID.test(builder)) throw new AppError("bad_request", `${JSON.stringify(builder)} is not a builder name`);
      return { payload: "optional", metaRequired: [...REQUIRED_META], metaOptional: [...OPTIONAL_META] };
    },

    async dispatch(request: BuildDispatch): Promise<DispatchedBuild> {
      if (closed) throw new AppError("nomad_unavailable", "petrel is shutting down; redeliver the webhook");
      const existing = byToken.get(request.idempotencyToken);
      if (existing !== undefined) return { id: existing, duplicate: true };
      const id = dispatchId(request.builder, randomBytes(4).toString("hex"));
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
          record.secret = true;
          payloads.set(id, request.payload);
        }
        await update(record);
      } catch (err) {
        byToken.delete(request.idempotencyToken);
        payloads.delete(id);
        deleteRecord(id);
        await store.remove(id).catch(() => undefined);
        const code = (err as NodeJS.ErrnoException).code;
        throw new AppError(
          code === "ENOSPC" ? "insufficient_storage" : "internal",
          `cannot record the build in ${store.root}: ${code ?? (err as Error).message}`,
        );
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
      const page: BuildPage = { builds: [], hidden: 0 };
      let last: { time: number; id: string } | undefined;
      let more = false;
      for (const entry of listed.from(filter.after)) {
        const record = records.get(entry.id);
        if (record === undefined) continue;
        const build = toBuild(record);
        if (!matchesFilter(build, filter)) continue;
        // A cursor only when a build that matches is left, so the next page is never empty.
        if (page.builds.length >= filter.limit) {
          more = true;
          break;
        }
        last = entry;
        if (filter.visible !== undefined && !(await filter.visible(build))) page.hidden += 1;
        else page.builds.push(build);
      }
      if (more && last !== undefined) page.next = { time: last.time, id: last.id };
      return page;
    },

    async getBuild(id) {
      const record = records.get(id);
      return record === undefined ? undefined : toBuild(record);
    },

    async *logs(id: string, request: LogRequest): AsyncIterable<Uint8Array> {
      known(id);
      const path = join(store.dirOf(id), request.type === "all" ? MERGED_LOG : `${request.type}.log`);
      let position = Math.max(0, request.offset);
      const buffer = Buffer.alloc(LOG_CHUNK);
      for (;;) {
        // Read the state before the bytes: bytes written before the build ended are all there once it has.
        const ended = isTerminal(known(id).state);
        let handle: FileHandle | undefined;
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
          if (!records.has(id)) throw new AppError("gone", `build ${id} was removed by retention while its log was read`);
          return;
        }
        await waitFor(id, request.signal, POLL_MS);
      }
    },

    async cancel(id, _signal, why) {
      const record = known(id);
      if (record.state === "queued") {
        const at = queue.indexOf(id);
        if (at >= 0) queue.splice(at, 1);
        payloads.delete(id);
        await removeTaskFiles(id);
        await update({
          ...record,
          state: why?.state ?? "cancelled",
          reason: why?.reason ?? "cancelled before it started",
          finishedAt: new Date().toISOString(),
        });
        return;
      }
      const entry = running.get(id);
      if (entry === undefined) return;
      // The first reason stands: an admin's cancel after a timeout does not rename it.
      if (!entry.cancelled && why !== undefined) entry.why = why;
      entry.cancelled = true;
      await stop(entry);
    },

    async close() {
      closed = true;
      payloads.clear();
      await Promise.all([...running.values()].map(stop));
    },
  };
}

function signalGroup(pid: number, sig: NodeJS.Signals): void {
  signal(-pid, sig);
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}
