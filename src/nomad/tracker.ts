import { setTimeout as sleep } from "node:timers/promises";
import type { Build, BuildState } from "../builds/backend.js";
import { isTerminal } from "../builds/backend.js";
import { isBuildOf } from "../contract/dispatch.js";
import { errorMessage } from "../errors.js";
import type { Logger } from "../log.js";
import { createNomadBuildReader } from "./builds.js";
import type { NomadClient } from "./client.js";
import { type EventStreamBatch, followEvents } from "./events.js";

/** What the tracker reports to Prometheus; prom-client counters and gauges fit. */
export interface TrackerMetrics {
  /** Event-stream reconnects. */
  reconnects?: { inc(): void };
  /** Seconds between an allocation change in Nomad and the tracker seeing it. */
  lagSeconds?: { set(value: number): void };
}

/** The tracker's collaborators, the reconciliation bounds and the event-stream timings. */
export interface NomadTrackerOptions {
  nomad: NomadClient;
  /** The builder jobs whose children are petrel's builds; read on every event. */
  builders: () => ReadonlySet<string>;
  log: Logger;
  /** Receives every build whose state changed (the commit-status notifier). */
  onBuild: (build: Build) => void;
  metrics?: TrackerMetrics;
  /** Newest builds per builder checked at start and after a gap in the event stream. */
  reconcileLimit?: number;
  /** Only builds dispatched this recently are checked at start and after a gap. */
  reconcileWindowMs?: number;
  /** Builds read from Nomad at once. */
  concurrency?: number;
  /** Event-stream timings (tests shorten them). */
  retryMinMs?: number;
  retryMaxMs?: number;
  idleTimeoutMs?: number;
  /** Clock, for the reconcile window. */
  now?: () => number;
}

/** Follows Nomad for build transitions; `start` once, `stop` at shutdown. */
export interface NomadTracker {
  /** Reconciles recent builds, then follows the event stream. Resolves after the first reconciliation. */
  start(): Promise<void>;
  /** Stops following and waits for reads in flight. */
  stop(): Promise<void>;
}

// Evaluation events matter only for placement failures: a stop or a placement also changes the job or alloc.
const TOPICS = ["Job:*", "Allocation:*", "Evaluation:*"];
const REMEMBERED = 10_000;

/**
 * Commit statuses from Nomad's event stream. An event only says which build changed: the build is then read
 * back with GET queries, so a replayed, reordered or re-delivered event can never report a stale state, and a
 * gap or a restart is healed by reading the recent builds again (a build that ended while petrel was down
 * gets its final status). A state is reported once per build and never goes back from finished to running.
 */
export function createNomadTracker(options: NomadTrackerOptions): NomadTracker {
  const { nomad, log } = options;
  const reconcileLimit = options.reconcileLimit ?? 50;
  const reconcileWindowMs = options.reconcileWindowMs ?? 24 * 3600 * 1000;
  const concurrency = options.concurrency ?? 8;
  const now = options.now ?? Date.now;
  const reader = createNomadBuildReader({ nomad, builders: options.builders, log });
  // The state, and for a queued build why it waits: a blocked evaluation is news even though the state is not.
  const reported = new Map<string, string>();
  const inflight = new Map<string, { again: boolean; done: Promise<void> }>();
  const queue: (() => void)[] = [];
  let active = 0;
  let controller: AbortController | undefined;
  let loop: Promise<void> | undefined;

  const report = (build: Build) => {
    const before = reported.get(build.id);
    const now = build.state === "queued" && build.reason !== undefined ? `queued\0${build.reason}` : build.state;
    if (before === now) return;
    const beforeState = before?.split("\0")[0] as BuildState | undefined;
    if (beforeState !== undefined && isTerminal(beforeState) && !isTerminal(build.state)) return;
    if (beforeState !== undefined && beforeState !== "queued" && build.state === "queued") return;
    reported.delete(build.id);
    reported.set(build.id, now);
    if (reported.size > REMEMBERED) reported.delete(reported.keys().next().value as string);
    try {
      options.onBuild(build);
    } catch (err) {
      log.error({ err, build: build.id }, "build listener failed");
    }
  };

  async function slot<T>(fn: () => Promise<T>): Promise<T> {
    if (active >= concurrency) await new Promise<void>((resolve) => queue.push(resolve));
    active++;
    try {
      return await fn();
    } finally {
      active--;
      queue.shift()?.();
    }
  }

  /** Reads the build and reports it; a change during the read triggers one more read. */
  function refresh(id: string, signal: AbortSignal): Promise<void> {
    const running = inflight.get(id);
    if (running !== undefined) {
      running.again = true;
      return running.done;
    }
    const entry = { again: false, done: Promise.resolve() };
    entry.done = (async () => {
      try {
        do {
          entry.again = false;
          const build = await slot(() => reader.readBuild(id, signal));
          if (build !== undefined) report(build);
        } while (entry.again && !signal.aborted);
      } catch (err) {
        if (!signal.aborted) log.warn({ build: id, err: errorMessage(err) }, "could not read a build after a Nomad event");
      } finally {
        inflight.delete(id);
      }
    })();
    inflight.set(id, entry);
    return entry.done;
  }

  /**
   * Reads the recent builds of every builder (and those seen running) and reports them. Returns the index
   * to follow events from: any change after the first listing has a higher index.
   */
  async function reconcile(signal: AbortSignal): Promise<number> {
    const builders = [...options.builders()];
    const lists = await Promise.all(builders.map((b) => nomad.listJobsIndexed({ prefix: `${b}/dispatch-`, signal })));
    const since = (now() - reconcileWindowMs) * 1e6;
    const ids = new Set<string>();
    lists.forEach((list, i) => {
      const builder = builders[i] as string;
      list.jobs
        .filter((j) => j.ParentID === builder && isBuildOf(j.ID, new Set([builder])) && j.SubmitTime >= since)
        .sort((a, b) => b.SubmitTime - a.SubmitTime)
        .slice(0, reconcileLimit)
        .forEach((j) => {
          ids.add(j.ID);
        });
    });
    for (const [id, state] of reported) if (!isTerminal(state.split("\0")[0] as BuildState)) ids.add(id);
    await Promise.all([...ids].map((id) => refresh(id, signal)));
    log.info({ builds: ids.size }, "reconciled recent builds with Nomad");
    return Math.min(...lists.map((l) => l.index), Number.MAX_SAFE_INTEGER);
  }

  function onBatch(batch: EventStreamBatch, signal: AbortSignal): void {
    const builders = options.builders();
    const changed = new Set<string>();
    for (const event of batch.events) {
      const id = jobOf(event.Topic, event.Key, event.FilterKeys, event.Payload);
      if (id === undefined || !isBuildOf(id, builders)) continue;
      if (event.Topic === "Evaluation" && !isPlacementFailure(event.Payload)) continue;
      if (event.Topic === "Allocation") {
        const modified = (event.Payload.Allocation as { ModifyTime?: unknown } | undefined)?.ModifyTime;
        if (typeof modified === "number" && modified > 0) {
          options.metrics?.lagSeconds?.set(Math.max(0, (now() - modified / 1e6) / 1000));
        }
      }
      changed.add(id);
    }
    for (const id of changed) void refresh(id, signal);
  }

  async function run(signal: AbortSignal, firstDone: () => void): Promise<void> {
    let index: number | undefined;
    let delay = options.retryMinMs ?? 250;
    while (index === undefined) {
      try {
        index = await reconcile(signal);
      } catch (err) {
        if (signal.aborted) return;
        log.warn({ err: errorMessage(err), retryInMs: delay }, "could not reconcile builds with Nomad; retrying");
        firstDone();
        try {
          await sleep(delay, undefined, { signal });
        } catch {
          return;
        }
        delay = Math.min(delay * 2, options.retryMaxMs ?? 30_000);
      }
    }
    firstDone();
    await followEvents({
      nomad,
      log,
      topics: TOPICS,
      index: index + 1,
      signal,
      onBatch: (batch) => onBatch(batch, signal),
      onGap: async ({ requested, received }) => {
        log.info({ requested, received }, "nomad event stream may have skipped events; reconciling");
        await reconcile(signal).catch((err: unknown) => {
          if (!signal.aborted) log.warn({ err: errorMessage(err) }, "could not reconcile builds after a gap");
        });
      },
      onReconnect: () => options.metrics?.reconnects?.inc(),
      ...(options.retryMinMs === undefined ? {} : { retryMinMs: options.retryMinMs }),
      ...(options.retryMaxMs === undefined ? {} : { retryMaxMs: options.retryMaxMs }),
      ...(options.idleTimeoutMs === undefined ? {} : { idleTimeoutMs: options.idleTimeoutMs }),
    });
  }

  return {
    start() {
      if (controller !== undefined) return Promise.resolve();
      controller = new AbortController();
      const signal = controller.signal;
      return new Promise<void>((resolve) => {
        loop = run(signal, resolve).catch((err: unknown) => {
          log.error({ err: errorMessage(err) }, "build tracker stopped unexpectedly");
          resolve();
        });
      });
    },

    async stop() {
      controller?.abort();
      await loop;
      await Promise.allSettled([...inflight.values()].map((e) => e.done));
      controller = undefined;
      loop = undefined;
    },
  };
}

/** The job an event is about: the Job topic's key, an allocation's or evaluation's JobID. */
function jobOf(topic: string, key: string, filterKeys: string[], payload: Record<string, unknown>): string | undefined {
  if (topic === "Job") return key;
  const inner = (topic === "Allocation" ? payload.Allocation : topic === "Evaluation" ? payload.Evaluation : undefined) as
    | { JobID?: unknown }
    | undefined;
  if (typeof inner?.JobID === "string") return inner.JobID;
  return topic === "Allocation" || topic === "Evaluation" ? filterKeys[0] : undefined;
}

function isPlacementFailure(payload: Record<string, unknown>): boolean {
  const ev = payload.Evaluation as { Status?: unknown; FailedTGAllocs?: unknown } | undefined;
  const failed = ev?.FailedTGAllocs;
  return (
    ev?.Status === "blocked" || ev?.Status === "failed" || (typeof failed === "object" && failed !== null && Object.keys(failed).length > 0)
  );
}
