import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import { Counter, type Registry } from "prom-client";
import type { Build, BuildReader, LogType } from "../builds/backend.js";
import { isTerminal } from "../builds/backend.js";
import { AppError, errorMessage } from "../errors.js";
import type { Logger } from "../log.js";
import type { ArchiveStore } from "./store.js";

/** Why an archive write failed, as the metric's `cause` label says it. */
export type ArchiveFailureCause = "disk_full" | "unwritable" | "io" | "source";

export interface ArchiverOptions {
  store: ArchiveStore;
  /** The live reader (Nomad's or the local runner's), never the archive-backed one. */
  reader: BuildReader;
  log: Logger;
  /** Where `petrel_archive_failures_total` is registered. */
  metrics: Registry;
  /** Wait before builds whose archiving failed are tried again. */
  retryMs?: number;
  /** Builds archived at once. */
  concurrency?: number;
  /**
   * Yielding to foreground work (webhooks, log streams): before each build, archiving waits while the event
   * loop was busier than `busyAbove` (its utilization, 0 to 1), looking again every `checkMs`, but never more
   * than `maxDeferMs` for one build, so a loop that stays busy still archives one build per `maxDeferMs`.
   * `utilization(since)` measures the loop over the time since an earlier mark (tests inject their own).
   */
  pace?: Partial<Pace>;
  /**
   * Wait between a build turning final and reading its logs, so the last bytes the log shipper (Nomad's
   * logmon) was still writing when the task died are in the archive.
   */
  settleMs?: number;
  /** Clock, for how long ago a build finished (the settle wait is only for builds that just did). */
  now?: () => number;
}

export interface Pace {
  busyAbove: number;
  checkMs: number;
  maxDeferMs: number;
  /** A mark now, and the loop's utilization since an earlier mark. */
  mark(): unknown;
  utilization(since: unknown): number;
}

/** The process's own event loop, by `performance.eventLoopUtilization()`. */
export const LOOP_PACE: Pace = {
  busyAbove: 0.5,
  checkMs: 10,
  maxDeferMs: 1000,
  mark: () => performance.eventLoopUtilization(),
  utilization: (since) => {
    const delta = performance.eventLoopUtilization(since as ReturnType<typeof performance.eventLoopUtilization>);
    return Number.isFinite(delta.utilization) ? delta.utilization : 0;
  },
};

/** Archives builds that reached a final state, in the background. */
export interface Archiver {
  /** A BuildListener: returns at once; terminal builds are queued for archiving. */
  onBuild(build: Build): void;
  /**
   * Archives these builds (those not archived yet and final by the time they are read), alongside the
   * listener's; resolves once each was written, found archived, or failed (a failure is retried later).
   */
  archive(ids: readonly string[]): Promise<void>;
  /** Resolves when nothing is queued or being written (tests, shutdown). */
  idle(): Promise<void>;
  /** Stops retries and waits for writes in flight. */
  stop(): Promise<void>;
}

const DEFAULT_RETRY_MS = 60_000;
const DEFAULT_SETTLE_MS = 1000;
/** Failed builds remembered for a retry; beyond this the oldest are left to the next start-up reconciliation. */
const MAX_FAILED = 10_000;

/**
 * Archives each build once it is final, reading it back through the live reader (the record exactly as
 * `GET /builds/<id>` shows it, and its logs), so a listener call never waits on the disk. Failures of the
 * archive directory are logged once per cause until archiving works again, counted, and retried while the
 * backend still has the build.
 */
export function createArchiver(options: ArchiverOptions): Archiver {
  const { store, reader, log } = options;
  const retryMs = options.retryMs ?? DEFAULT_RETRY_MS;
  // One at a time: archiving is background work, and a second writer would only take more from the foreground.
  const concurrency = options.concurrency ?? 1;
  const pace: Pace = { ...LOOP_PACE, ...options.pace };
  // The loop's utilization is measured from here: the previous build's start, the last look, or when work
  // arrived on an idle archiver (an hour of quiet before it would hide a loop busy now).
  let mark = pace.mark();
  let markedAt = performance.now();
  const remark = () => {
    mark = pace.mark();
    markedAt = performance.now();
  };
  const settleMs = options.settleMs ?? DEFAULT_SETTLE_MS;
  const now = options.now ?? Date.now;
  const failures = new Counter({
    name: "petrel_archive_failures_total",
    help: "Builds that could not be archived, by cause (disk_full, unwritable, io, source); each is retried.",
    labelNames: ["cause"] as const,
    registers: [options.metrics],
  });
  const queue: string[] = [];
  const queued = new Set<string>();
  const failed = new Set<string>();
  const logged = new Set<ArchiveFailureCause>();
  const controller = new AbortController();
  let active = 0;
  let retryTimer: NodeJS.Timeout | undefined;
  let idleWaiters: (() => void)[] = [];
  // Callers of archive(ids) waiting for one build to be processed.
  const waiting = new Map<string, (() => void)[]>();
  const processed = (id: string) => {
    const waiters = waiting.get(id);
    waiting.delete(id);
    for (const w of waiters ?? []) w();
  };

  const settleIdle = () => {
    if (active > 0 || queue.length > 0) return;
    const waiters = idleWaiters;
    idleWaiters = [];
    for (const w of waiters) w();
  };

  function enqueue(id: string): void {
    if (controller.signal.aborted || queued.has(id)) return;
    if (active === 0 && queue.length === 0) remark();
    queued.add(id);
    queue.push(id);
    pump();
  }

  function pump(): void {
    while (active < concurrency && queue.length > 0) {
      const id = queue.shift() as string;
      active++;
      // Off the caller's stack: the listener is called from the event handler or a build's transition.
      setImmediate(() => {
        void calm()
          .then(() => (controller.signal.aborted ? undefined : archive(id)))
          .finally(() => {
            queued.delete(id);
            processed(id);
            active--;
            pump();
            settleIdle();
          });
      });
    }
  }

  /**
   * Waits while the event loop is busy with other work, at most `maxDeferMs`. Each look covers at least
   * `checkMs` (a utilization over a millisecond says nothing): the first one the time since the previous build
   * started (its own work included), every later one only a pause of archiving's.
   */
  async function calm(): Promise<void> {
    const started = performance.now();
    const signal = controller.signal;
    while (!signal.aborted) {
      const short = pace.checkMs - (performance.now() - markedAt);
      if (short > 0) await sleep(short, undefined, { signal }).catch(() => undefined);
      const busy = pace.utilization(mark) > pace.busyAbove;
      remark();
      if (!busy || performance.now() - started >= pace.maxDeferMs) return;
    }
  }

  async function archive(id: string): Promise<void> {
    const signal = controller.signal;
    try {
      if (await store.has(id)) return;
      let build = await reader.getBuild(id, signal);
      if (build !== undefined && !isTerminal(build.state) && settleMs > 0) {
        // The event that announced the end can be ahead of the reads: give the backend a moment.
        await sleep(settleMs, undefined, { signal });
        build = await reader.getBuild(id, signal);
      }
      if (build === undefined) {
        failed.delete(id);
        log.warn({ build: id }, "build gone from the backend before it could be archived");
        return;
      }
      if (!isTerminal(build.state)) {
        // The backend's view lags the event that announced the end: try again later rather than drop it.
        failed.add(id);
        scheduleRetry();
        return;
      }
      // A build that ended long ago (found at start-up) has all its bytes already; one that just ended waits.
      const since = build.finishedAt === undefined ? 0 : now() - Date.parse(build.finishedAt);
      const wait = Number.isFinite(since) ? settleMs - Math.max(0, since) : settleMs;
      if (wait > 0) await sleep(wait, undefined, { signal });
      const logs = (type: LogType) => reader.logs(id, { type, follow: false, offset: 0, signal });
      const result = await store.put(build, { stdout: logs("stdout"), stderr: logs("stderr"), all: logs("all") });
      failed.delete(id);
      if (logged.size > 0) {
        log.info({ causes: [...logged] }, "archiving builds works again");
        logged.clear();
      }
      log.debug({ build: id, result }, "build archived");
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof AppError && err.code === "gone") {
        // The backend lost the logs already: an archive without them would serve different bytes than live.
        failed.delete(id);
        log.warn({ build: id, err: err.message }, "build's logs were gone before it could be archived");
        return;
      }
      const cause = causeOf(err);
      failures.inc({ cause });
      failed.add(id);
      if (failed.size > MAX_FAILED) failed.delete(failed.values().next().value as string);
      if (!logged.has(cause)) {
        logged.add(cause);
        log.error(
          { cause, build: id, dir: store.dir, err: errorMessage(err), retryInMs: retryMs },
          "could not archive a build; statuses and live logs are unaffected, archiving retries later",
        );
      }
      scheduleRetry();
    }
  }

  function scheduleRetry(): void {
    if (retryTimer !== undefined || controller.signal.aborted) return;
    retryTimer = setTimeout(() => {
      retryTimer = undefined;
      for (const id of failed) enqueue(id);
    }, retryMs);
    retryTimer.unref();
  }

  return {
    onBuild(build) {
      if (isTerminal(build.state)) enqueue(build.id);
    },
    archive(ids) {
      const pending: Promise<void>[] = [];
      for (const id of ids) {
        if (controller.signal.aborted) break;
        pending.push(
          new Promise<void>((resolve) => {
            const list = waiting.get(id) ?? [];
            list.push(resolve);
            waiting.set(id, list);
          }),
        );
        if (queued.has(id)) continue;
        enqueue(id);
      }
      return Promise.all(pending).then(() => undefined);
    },
    idle() {
      if (active === 0 && queue.length === 0) return Promise.resolve();
      return new Promise((resolve) => idleWaiters.push(resolve));
    },
    async stop() {
      controller.abort();
      if (retryTimer !== undefined) clearTimeout(retryTimer);
      for (const id of queue) {
        queued.delete(id);
        processed(id);
      }
      queue.length = 0;
      if (active > 0) await new Promise<void>((resolve) => idleWaiters.push(resolve));
    },
  };
}

function causeOf(err: unknown): ArchiveFailureCause {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (code === "ENOSPC" || code === "EDQUOT") return "disk_full";
  if (code === "EACCES" || code === "EPERM" || code === "EROFS" || code === "ENOTDIR") return "unwritable";
  if (typeof code === "string" && code.startsWith("E") && !(err instanceof AppError)) return "io";
  return "source";
}
