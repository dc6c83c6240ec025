import { setTimeout as sleep } from "node:timers/promises";
import type { Build, LogRequest } from "../builds/backend.js";
import { isTerminal } from "../builds/backend.js";
import { AppError, errorMessage, UpstreamError } from "../errors.js";
import type { Logger } from "../log.js";
import { createSharedCalls } from "../util/abort.js";
import type { NomadClient } from "./client.js";
import { createFrameDecoder } from "./frames.js";
import { BUILD_TASK, buildAllocation, isAllocationGone, isSetTime } from "./outcome.js";
import type { Allocation, AllocationStub } from "./schema.js";

/** What the log follower needs: the Nomad client, a way to read a build, and timings. */
export interface NomadLogsOptions {
  nomad: NomadClient;
  log: Logger;
  /** The build as Nomad shows it; consulted while the build has no allocation yet. */
  readBuild: (id: string, signal?: AbortSignal) => Promise<Build | undefined>;
  /** Task whose logs are read (petrel's builder contract: `executor`). */
  task?: string;
  /** How long one blocking query may wait for a change. */
  waitMs?: number;
  /** Back-off between attempts after an upstream failure. */
  retryMinMs?: number;
  retryMaxMs?: number;
  /** How long upstream may keep failing, with no frame in between, before the follow gives up. */
  giveUpMs?: number;
  /** Silence on a log stream after which it counts as dropped (Nomad sends a heartbeat every second). */
  idleTimeoutMs?: number;
  /** Shortest time between two looks at a queued build, however often Nomad's evaluation index moves. */
  minPollMs?: number;
}

/** Follows build logs on Nomad. */
export interface NomadLogs {
  /**
   * The raw bytes of the build's `type` log from `offset`, each byte once. Waits while the build is queued or
   * its task has not started; with `follow`, ends within about a second of the task's end, after its last
   * bytes; resumes from the last byte after an upstream drop. Throws AppError `gone` (410) once Nomad no longer
   * has the allocation.
   */
  follow(id: string, request: LogRequest): AsyncIterable<Uint8Array>;
}

const DEFAULTS = {
  task: BUILD_TASK,
  waitMs: 60_000,
  retryMinMs: 100,
  retryMaxMs: 2000,
  giveUpMs: 60_000,
  idleTimeoutMs: 30_000,
  minPollMs: 200,
};

type Ending = "eof" | "dropped" | "terminal";

/** The executor's merged log (stdout, stderr, step lines), relative to the allocation directory. */
export const MERGED_LOG_PATH = "alloc/petrel/all.log";

/** `/v1/client/fs/stream` answers a file that does not exist with 400 and the failed stat's text. */
function isMissingFile(err: UpstreamError): boolean {
  return err.upstreamStatus === 400 && /no such file or directory/i.test(err.upstreamBody);
}

function noMergedLog(id: string): AppError {
  return new AppError(
    "not_found",
    `build ${id} has no merged log (its builder does not run petrel's executor); read ?type=stdout or ?type=stderr`,
  );
}

/**
 * Creates the log follower. Concurrent follows of one build share their reads and their watch of its
 * allocation, so a thousand browsers on one build cost Nomad one blocking query instead of a thousand.
 */
export function createNomadLogs(options: NomadLogsOptions): NomadLogs {
  const { nomad, log } = options;
  const o = {
    task: options.task ?? DEFAULTS.task,
    waitMs: options.waitMs ?? DEFAULTS.waitMs,
    retryMinMs: options.retryMinMs ?? DEFAULTS.retryMinMs,
    retryMaxMs: options.retryMaxMs ?? DEFAULTS.retryMaxMs,
    giveUpMs: options.giveUpMs ?? DEFAULTS.giveUpMs,
    idleTimeoutMs: options.idleTimeoutMs ?? DEFAULTS.idleTimeoutMs,
    minPollMs: options.minPollMs ?? DEFAULTS.minPollMs,
  };

  const gone = (id: string, allocId?: string) =>
    new AppError(
      "gone",
      allocId === undefined
        ? `the logs of build ${id} are gone: Nomad garbage-collected its allocation or the job`
        : `the logs of build ${id} are gone: Nomad garbage-collected its allocation ${allocId}`,
    );

  // The key's prefix names what is read, so one run's result type never meets another's.
  const calls = createSharedCalls<unknown>();
  const shared = <T>(key: string, signal: AbortSignal, fn: (signal: AbortSignal) => Promise<T>): Promise<T> =>
    calls.join(key, signal, fn) as Promise<T>;

  /** Retries `fn` on upstream outages with back-off until `giveUpMs` of failures in a row. */
  async function patiently<T>(signal: AbortSignal, what: string, fn: () => Promise<T>): Promise<T> {
    let delay = o.retryMinMs;
    const since = Date.now();
    for (;;) {
      try {
        return await fn();
      } catch (err) {
        if (signal.aborted) throw signal.reason;
        if (!(err instanceof UpstreamError) || !err.unavailable || Date.now() - since > o.giveUpMs) throw err;
        log.debug({ err: err.message, what }, "nomad unavailable while following logs; retrying");
        await sleep(delay, undefined, { signal });
        delay = Math.min(delay * 2, o.retryMaxMs);
      }
    }
  }

  /**
   * Waits until the build has an allocation; undefined when it ended (or, without follow, has none yet).
   * The allocation list alone answers for a placed build; the whole build is read only while there is none.
   */
  async function placed(id: string, follow: boolean, signal: AbortSignal): Promise<Placed | undefined> {
    const allocations = await patiently(signal, "allocations", () =>
      shared(`allocs\0${id}`, signal, (s) => nomad.jobAllocations(id, { signal: s })),
    );
    const stub = buildAllocation(allocations.allocations);
    if (stub !== undefined) return placedOf(stub);
    const read = () => patiently(signal, "build", () => shared(`build\0${id}`, signal, (s) => options.readBuild(id, s)));
    const evaluations = (at: number) =>
      patiently(signal, "evaluations", () =>
        shared(`evals\0${id}\0${at}`, signal, (s) =>
          nomad.jobEvaluations(id, at === 0 ? { signal: s } : { index: at, wait: o.waitMs, signal: s }),
        ),
      );
    let build = await read();
    let index = 0;
    for (;;) {
      if (build === undefined || isAllocationGone(build)) throw gone(id);
      if (build.allocId !== undefined) {
        return { allocId: build.allocId, started: build.startedAt !== undefined, done: build.finishedAt !== undefined, index: 0 };
      }
      if (!follow || isTerminal(build.state)) return undefined;
      // Placement, a placement failure and a stop all write an evaluation
      // (https://developer.hashicorp.com/nomad/api-docs/evaluations).
      // The index is taken before the build is read again, so a change in between ends the wait at once.
      const started = Date.now();
      index = (await evaluations(index)).index;
      if (index !== 0) {
        const spent = Date.now() - started;
        if (spent < o.minPollMs) await sleep(o.minPollMs - spent, undefined, { signal });
      }
      build = await read();
    }
  }

  /** The allocation once the task has started; undefined when it ended without starting. */
  async function started(id: string, allocId: string, follow: boolean, signal: AbortSignal): Promise<Allocation | undefined> {
    let index = 0;
    for (;;) {
      const at = index;
      const answer = await patiently(signal, "allocation", () =>
        shared(`alloc\0${allocId}\0${at}`, signal, (s) =>
          nomad.allocation(allocId, at === 0 ? { signal: s } : { index: at, wait: o.waitMs, signal: s }),
        ),
      );
      if (answer === undefined) throw gone(id, allocId);
      const alloc = answer.allocation;
      const task = alloc.TaskStates[o.task];
      if (isSetTime(task?.StartedAt)) return alloc;
      if (!follow || isDone(alloc, o.task)) return undefined;
      index = Math.max(answer.index, at + 1);
    }
  }

  /**
   * Resolves once the allocation is finished for logging purposes (the task is dead or the alloc is over).
   * One watch per allocation, whatever the number of followers.
   */
  function watchEnd(allocId: string, from: number, signal: AbortSignal): Promise<void> {
    return shared(`end\0${allocId}`, signal, (s) => watchLoop(allocId, from, s));
  }

  function watchLoop(allocId: string, from: number, signal: AbortSignal): Promise<void> {
    return (async () => {
      let index = from;
      let delay = o.retryMinMs;
      for (;;) {
        try {
          const answer = await nomad.allocation(allocId, index === 0 ? { signal } : { index, wait: o.waitMs, signal });
          if (answer === undefined || isDone(answer.allocation, o.task)) return;
          index = Math.max(answer.index, index);
          delay = o.retryMinMs;
        } catch (err) {
          if (signal.aborted) throw signal.reason;
          log.debug({ err: errorMessage(err), alloc: allocId }, "watching an allocation failed; retrying");
          await sleep(delay, undefined, { signal });
          delay = Math.min(delay * 2, o.retryMaxMs);
        }
      }
    })();
  }

  async function* follow(id: string, request: LogRequest): AsyncGenerator<Uint8Array> {
    const { signal } = request;
    const build = await placed(id, request.follow, signal);
    if (build === undefined) return;
    const { allocId } = build;
    let from = build.index;
    let ended = !request.follow || build.done;
    if (!build.started) {
      const alloc = await started(id, allocId, request.follow, signal);
      if (alloc === undefined) return;
      from = alloc.ModifyIndex;
      ended ||= isDone(alloc, o.task);
    }

    const watcher = new AbortController();
    const watchSignal = AbortSignal.any([signal, watcher.signal]);
    let upstream: AbortController | undefined;
    let following = false;
    const end = (ended ? Promise.resolve() : watchEnd(allocId, from, watchSignal)).then(
      () => {
        ended = true;
        // Nomad's follow never closes, even after the task died (hashicorp/nomad#18369): cut it and read the
        // rest without follow, which ends at the end of the last file.
        if (following) upstream?.abort();
      },
      () => undefined,
    );

    let delivered = 0;
    let delay = o.retryMinMs;
    let failingSince: number | undefined;
    try {
      for (;;) {
        following = !ended;
        upstream = new AbortController();
        const streamSignal = AbortSignal.any([signal, upstream.signal]);
        let ending: Ending;
        let failure: unknown;
        let framesSeen = false;
        try {
          const offset = request.offset + delivered;
          const body =
            request.type === "all"
              ? await nomad.streamFile(allocId, {
                  path: MERGED_LOG_PATH,
                  follow: following,
                  offset,
                  signal: streamSignal,
                  idleTimeoutMs: o.idleTimeoutMs,
                })
              : await nomad.streamLogs(allocId, {
                  task: o.task,
                  type: request.type,
                  follow: following,
                  // origin=start skips this many bytes across the rotated files that still exist
                  // (https://github.com/hashicorp/nomad/blob/main/client/fs_endpoint.go `findClosest`): exact unless logmon deleted the oldest file (max_files) in between.
                  offset,
                  signal: streamSignal,
                  idleTimeoutMs: o.idleTimeoutMs,
                });
          const decoder = createFrameDecoder();
          for await (const chunk of body) {
            for (const frame of decoder.push(chunk)) {
              framesSeen = true;
              if (frame.fileEvent !== "") log.debug({ build: id, file: frame.file, event: frame.fileEvent }, "log file event");
              for (const piece of frame.data) {
                delivered += piece.length;
                yield piece;
              }
            }
            if (framesSeen) {
              failingSince = undefined;
              delay = o.retryMinMs;
            }
          }
          decoder.end();
          ending = following ? "dropped" : "eof";
        } catch (err) {
          if (signal.aborted) return;
          if (upstream.signal.aborted && ended) {
            ending = "terminal";
          } else {
            ending = "dropped";
            failure = err;
            if (err instanceof UpstreamError && request.type === "all" && isMissingFile(err)) {
              // The executor creates the merged log as it starts; a finished task without one never had it.
              if (await finished(id, allocId, signal)) throw noMergedLog(id);
            } else if (err instanceof UpstreamError && err.upstreamStatus === 404) {
              if ((await explain404(id, allocId, err, signal)) === "none") return;
            } else if (err instanceof UpstreamError && err.upstreamStatus >= 400 && err.upstreamStatus < 500 && err.upstreamStatus !== 429)
              throw err;
          }
        }
        if (ending === "eof") return;
        if (ending === "terminal" || (ended && failure === undefined)) continue;
        failingSince ??= Date.now();
        if (Date.now() - failingSince > o.giveUpMs) {
          throw failure instanceof Error ? failure : new UpstreamError("nomad", 0, "log stream keeps dropping", { action: "stream logs" });
        }
        log.debug(
          { build: id, alloc: allocId, delivered, err: failure === undefined ? undefined : errorMessage(failure) },
          "log stream dropped; resuming",
        );
        await sleep(delay, undefined, { signal });
        delay = Math.min(delay * 2, o.retryMaxMs);
      }
    } finally {
      watcher.abort();
      upstream?.abort();
      await end;
    }
  }

  /** True once no more bytes can come from the allocation's task; throws `gone` once Nomad forgot it. */
  async function finished(id: string, allocId: string, signal: AbortSignal): Promise<boolean> {
    const answer = await patiently(signal, "allocation", () => nomad.allocation(allocId, { signal }));
    if (answer === undefined) throw gone(id, allocId);
    return isDone(answer.allocation, o.task);
  }

  /**
   * A 404 from the log endpoint: the allocation was garbage-collected (410), or a passing state — the client
   * has not caught up, or the log file is not created yet — worth another try.
   */
  async function explain404(id: string, allocId: string, err: UpstreamError, signal: AbortSignal): Promise<"retry" | "none"> {
    const answer = await patiently(signal, "allocation", () => nomad.allocation(allocId, { signal }));
    if (answer === undefined) throw gone(id, allocId);
    const done = isDone(answer.allocation, o.task);
    const body = err.upstreamBody;
    if (body.startsWith("Unknown allocation") || body.includes("not found on client")) {
      if (done) throw gone(id, allocId);
    }
    // A finished task that never wrote this log type (or runs with `logs { disabled = true }`) has none.
    if (body.startsWith("log entry for task") && done) return "none";
    return "retry";
  }

  /** What following needs to know of a placed build's allocation. */
  function placedOf(alloc: AllocationStub): Placed {
    return {
      allocId: alloc.ID,
      started: isSetTime(alloc.TaskStates[o.task]?.StartedAt),
      done: isDone(alloc, o.task),
      index: alloc.ModifyIndex,
    };
  }

  return {
    follow: (id, request) => follow(id, request),
  };
}

interface Placed {
  allocId: string;
  started: boolean;
  /** No more bytes can come. */
  done: boolean;
  /** The allocation's ModifyIndex when known, else 0. */
  index: number;
}

/** No more log bytes can come: the task is dead, or the allocation is over on its node. */
function isDone(alloc: AllocationStub, task: string): boolean {
  if (alloc.TaskStates[task]?.State === "dead") return true;
  return alloc.ClientStatus === "complete" || alloc.ClientStatus === "failed" || alloc.ClientStatus === "lost";
}
