import { errorMessage } from "../errors.js";
import type { Logger } from "../log.js";
import { createSharedCalls } from "../util/abort.js";
import type { Build, BuildReader, LogType } from "./backend.js";
import { isTerminal } from "./backend.js";

/** The watch's collaborators and bounds. */
export interface BuildWatchOptions {
  reader: BuildReader;
  log: Logger;
  /** Bytes of a running build's log held in memory per log type for the viewers sharing its stream. */
  bufferBytes?: number;
  /** How often a watched build is read again, besides the transitions `onBuild` reports. */
  pollMs?: number;
  /** How long a log stream stays open after its last viewer left, so a reload finds it still there. */
  lingerMs?: number;
}

/** What a viewer of a running build's log asks for: like a following {@link BuildReader.logs} request. */
export interface WatchRequest {
  type: LogType;
  offset: number;
  signal: AbortSignal;
}

/** One log stream and one state watch per running build, shared by every viewer of it. */
export interface BuildWatch {
  /**
   * The build's `type` log from `offset`, following, with the contract of `reader.logs(id, {follow: true})`:
   * every byte once, in order, ending after the build's last byte, throwing what the upstream threw. A viewer
   * that falls more than the buffer behind the live stream gets an error (and resumes with an offset).
   */
  follow(id: string, request: WatchRequest): AsyncIterable<Uint8Array>;
  /**
   * Calls `listener` with the build on every shared read of it and every reported transition, until `signal`
   * aborts or the returned function is called.
   */
  states(id: string, listener: (build: Build) => void, signal: AbortSignal): () => void;
  /** The build as it is now; concurrent callers share one read. */
  current(id: string, signal: AbortSignal): Promise<Build | undefined>;
  /** A transition the backend or the tracker saw: sent to the build's viewers at once. */
  onBuild(build: Build): void;
  /** Upstream log streams open now. */
  streams(): number;
  /** Ends every upstream stream and poll. */
  close(): Promise<void>;
}

/** A viewer the live log outran by more than the buffer: it was cut off, and resumes from `offset`. */
export class FellBehindError extends Error {
  readonly offset: number;

  constructor(id: string, offset: number, bufferBytes: number) {
    super(`this viewer fell more than ${bufferBytes} bytes behind the live log of build ${id}; resume from offset ${offset}`);
    this.name = "FellBehindError";
    this.offset = offset;
  }
}

/** How long a late joiner waits before reading again when the log has not reached the shared stream yet. */
const CATCH_UP_RETRY_MS = 250;

/** Most bytes a viewer takes from the buffer at once (joined from several upstream chunks). */
const MAX_BATCH = 64 * 1024;

const DEFAULTS = { bufferBytes: 1024 * 1024, pollMs: 1000, lingerMs: 2000 };

interface Chunk {
  /** Offset of the chunk's first byte in the log. */
  at: number;
  bytes: Uint8Array;
}

interface LogStream {
  key: string;
  chunks: Chunk[];
  /** The first byte still held; bytes before it come from a reader of their own. */
  start: number;
  /** The offset the upstream reached. */
  end: number;
  held: number;
  done: boolean;
  failure?: { err: unknown };
  viewers: number;
  /** Where each viewer is: the upstream is read no further ahead of the furthest one than half the buffer. */
  cursors: Set<{ position: number }>;
  wakers: Set<() => void>;
  /** Set while the upstream waits for a viewer to take bytes. */
  resume?: (() => void) | undefined;
  controller: AbortController;
  linger?: NodeJS.Timeout | undefined;
  pump?: Promise<void>;
  /** The latest batch `takeFrom` joined, for the next viewer asking for the same bytes. */
  batch?: Chunk | undefined;
}

interface StateWatch {
  listeners: Set<(build: Build) => void>;
  controller: AbortController;
  timer: NodeJS.Timeout;
  polling: boolean;
  /** Bumped by every reported transition, so a poll that started before one cannot undo it. */
  generation: number;
  last?: Build;
}

/**
 * Creates the watch. Memory: a stream holds the latest `bufferBytes` of its log (the views it holds may pin
 * the upstream's frames, about a third more); a viewer holds only its position in it, so the buffer is every
 * viewer's queue at once. A viewer joining at an offset the buffer no longer holds first reads those bytes
 * with a non-following read of its own, up to where the buffer starts, then continues from the buffer: the
 * whole log is not kept (a long build's log can be far larger than memory should hold for it), and only late
 * joiners of long logs pay one extra read. The upstream is read at the pace of the furthest viewer (so a
 * lone viewer on a slow link holds the upstream back as a direct read would, and is never cut off); a viewer
 * that many others outrun by the whole buffer is cut off rather than fed from upstream again: a viewer that
 * cannot keep up would otherwise re-read again and again, one stream each, the cost this watch exists to
 * remove. It resumes with its offset (EventSource does so by itself with Last-Event-ID).
 */
export function createBuildWatch(options: BuildWatchOptions): BuildWatch {
  const { reader, log } = options;
  const bufferBytes = options.bufferBytes ?? DEFAULTS.bufferBytes;
  const pollMs = options.pollMs ?? DEFAULTS.pollMs;
  const lingerMs = options.lingerMs ?? DEFAULTS.lingerMs;
  const logStreams = new Map<string, LogStream>();
  const stateWatches = new Map<string, StateWatch>();
  const reads = createSharedCalls<Build | undefined>();

  const wake = (s: LogStream) => {
    const wakers = [...s.wakers];
    s.wakers.clear();
    for (const w of wakers) w();
  };

  const append = (s: LogStream, bytes: Uint8Array) => {
    if (bytes.byteLength === 0) return;
    s.chunks.push({ at: s.end, bytes });
    s.end += bytes.byteLength;
    s.held += bytes.byteLength;
    // The newest chunk stays whatever its size, so a viewer at the live edge always finds its bytes.
    while (s.held > bufferBytes && s.chunks.length > 1) {
      const dropped = s.chunks.shift() as Chunk;
      s.held -= dropped.bytes.byteLength;
      s.start = (s.chunks[0] as Chunk).at;
    }
    wake(s);
  };

  const open = (id: string, type: LogType, offset: number): LogStream => {
    const key = `${type}\0${id}`;
    const existing = logStreams.get(key);
    if (existing !== undefined) {
      clearTimeout(existing.linger);
      existing.linger = undefined;
      existing.viewers++;
      return existing;
    }
    // The first viewer's offset starts the stream: a resuming viewer does not make it read the whole log again.
    const s: LogStream = {
      key,
      chunks: [],
      start: offset,
      end: offset,
      held: 0,
      done: false,
      viewers: 1,
      cursors: new Set(),
      wakers: new Set(),
      controller: new AbortController(),
    };
    logStreams.set(key, s);
    s.pump = (async () => {
      try {
        for await (const chunk of reader.logs(id, { type, follow: true, offset, signal: s.controller.signal })) {
          append(s, chunk);
          while (aheadOfViewers(s) && !s.controller.signal.aborted) {
            await new Promise<void>((resolve) => {
              s.resume = resolve;
            });
          }
        }
      } catch (err) {
        s.failure = { err };
      } finally {
        // Stopped while viewers remain (close at shutdown): they must not read the stop as the build's end.
        if (s.controller.signal.aborted && s.viewers > 0 && s.failure === undefined) {
          s.failure = { err: new Error("petrel stopped following this build's log") };
        }
        s.done = true;
        if (logStreams.get(key) === s) logStreams.delete(key);
        wake(s);
      }
    })();
    return s;
  };

  const aheadOfViewers = (s: LogStream): boolean => {
    if (s.cursors.size === 0) return false;
    let furthest = 0;
    for (const c of s.cursors) furthest = Math.max(furthest, c.position);
    return s.end - furthest >= bufferBytes / 2;
  };

  const resume = (s: LogStream) => {
    const r = s.resume;
    s.resume = undefined;
    r?.();
  };

  const leave = (s: LogStream, cursor: { position: number }) => {
    s.cursors.delete(cursor);
    resume(s);
    s.viewers--;
    if (s.viewers > 0 || s.done) return;
    const stop = () => {
      if (logStreams.get(s.key) === s) logStreams.delete(s.key);
      s.controller.abort();
      resume(s);
    };
    if (lingerMs <= 0) stop();
    else s.linger = setTimeout(stop, lingerMs).unref();
  };

  /** The index of the chunk holding byte `position` (start <= position < end). */
  const chunkAt = (s: LogStream, position: number): number => {
    let lo = 0;
    let hi = s.chunks.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if ((s.chunks[mid] as Chunk).at <= position) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  };

  /**
   * The bytes held from `position` on, up to {@link MAX_BATCH}: a viewer that is behind takes what waits in one
   * piece, so when petrel is busy each viewer costs one write per turn rather than one per upstream frame, and
   * the backlog shrinks instead of growing.
   */
  const takeFrom = (s: LogStream, position: number): Uint8Array => {
    const i = chunkAt(s, position);
    const first = s.chunks[i] as Chunk;
    // The chunk itself (not a view of it) for a viewer at its start: viewers at the live edge then hold the same
    // object, which lets the SSE route encode its frame once for all of them.
    const head = position === first.at ? first.bytes : first.bytes.subarray(position - first.at);
    if (i === s.chunks.length - 1 || head.byteLength >= MAX_BATCH) return head;
    let size = head.byteLength;
    let j = i;
    while (++j < s.chunks.length && size < MAX_BATCH) size += (s.chunks[j] as Chunk).bytes.byteLength;
    // Viewers that fell behind together take the same batch, one object again (a log's bytes never change).
    if (s.batch !== undefined && s.batch.at === position && s.batch.bytes.byteLength === size) return s.batch.bytes;
    const parts = [head];
    for (let k = i + 1; k < j; k++) parts.push((s.chunks[k] as Chunk).bytes);
    const bytes = Buffer.concat(parts, size);
    s.batch = { at: position, bytes };
    return bytes;
  };

  async function* follow(id: string, request: WatchRequest): AsyncGenerator<Uint8Array> {
    const { type, signal } = request;
    if (signal.aborted) return;
    let position = request.offset;
    const s = open(id, type, position);
    const cursor = { position };
    s.cursors.add(cursor);
    let wakeMe: (() => void) | undefined;
    // A flag rather than `signal.aborted` in the loop: the getter costs a check per call, per viewer per chunk.
    let aborted = false;
    const onAbort = () => {
      aborted = true;
      wakeMe?.();
    };
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      // A late joiner's bytes from before the buffer: a read of its own, until the buffer holds the rest.
      while (position < s.start) {
        const before = position;
        for await (const chunk of reader.logs(id, { type, follow: false, offset: position, signal })) {
          if (aborted) return;
          position += chunk.byteLength;
          yield chunk;
          if (position >= s.start) break;
        }
        if (aborted) return;
        if (position === before) {
          // The log ends before where the stream began (its first viewer asked for an offset not yet written):
          // nothing more until the build writes more, or ends.
          if (s.done) {
            if (s.failure !== undefined) throw s.failure.err;
            return;
          }
          await new Promise<void>((resolve) => {
            const timer = setTimeout(resolve, CATCH_UP_RETRY_MS);
            wakeMe = () => {
              clearTimeout(timer);
              resolve();
            };
            s.wakers.add(wakeMe);
          });
          if (wakeMe !== undefined) s.wakers.delete(wakeMe);
          wakeMe = undefined;
        }
      }
      for (;;) {
        if (aborted) return;
        if (position < s.start) {
          throw new FellBehindError(id, position, bufferBytes);
        }
        if (position < s.end) {
          const bytes = takeFrom(s, position);
          position += bytes.byteLength;
          yield bytes;
          cursor.position = position;
          resume(s);
          continue;
        }
        if (s.done) {
          if (s.failure !== undefined) throw s.failure.err;
          return;
        }
        await new Promise<void>((resolve) => {
          wakeMe = resolve;
          s.wakers.add(resolve);
        });
        wakeMe = undefined;
      }
    } finally {
      signal.removeEventListener("abort", onAbort);
      if (wakeMe !== undefined) s.wakers.delete(wakeMe);
      leave(s, cursor);
    }
  }

  const deliver = (w: StateWatch, build: Build) => {
    // A read that raced a transition may bring an older state; a finished build never runs again.
    if (w.last !== undefined && isTerminal(w.last.state) && !isTerminal(build.state)) return;
    w.last = build;
    for (const listener of [...w.listeners]) {
      try {
        listener(build);
      } catch (err) {
        log.error({ err, build: build.id }, "build state listener failed");
      }
    }
  };

  const poll = (id: string, w: StateWatch) => {
    if (w.polling) return;
    w.polling = true;
    const generation = w.generation;
    void reader
      .getBuild(id, w.controller.signal)
      .then(
        (build) => {
          if (build !== undefined && generation === w.generation) deliver(w, build);
        },
        (err: unknown) => {
          if (!w.controller.signal.aborted) log.debug({ build: id, err: errorMessage(err) }, "reading a watched build failed");
        },
      )
      .finally(() => {
        w.polling = false;
      });
  };

  return {
    follow,

    states(id, listener, signal) {
      if (signal.aborted) return () => undefined;
      let w = stateWatches.get(id);
      if (w === undefined) {
        const created: StateWatch = {
          listeners: new Set(),
          controller: new AbortController(),
          timer: setInterval(() => poll(id, created), pollMs),
          polling: false,
          generation: 0,
        };
        stateWatches.set(id, created);
        w = created;
      }
      const watch = w;
      // A listener of its own per viewer, so one function registered twice still leaves cleanly.
      const own = (build: Build) => listener(build);
      watch.listeners.add(own);
      const stop = () => {
        signal.removeEventListener("abort", stop);
        if (!watch.listeners.delete(own) || watch.listeners.size > 0) return;
        clearInterval(watch.timer);
        watch.controller.abort();
        if (stateWatches.get(id) === watch) stateWatches.delete(id);
      };
      signal.addEventListener("abort", stop, { once: true });
      return stop;
    },

    current: (id, signal) => reads.join(id, signal, (s) => reader.getBuild(id, s)),

    onBuild(build) {
      const w = stateWatches.get(build.id);
      if (w === undefined) return;
      w.generation++;
      deliver(w, build);
    },

    streams: () => [...logStreams.values()].filter((s) => !s.controller.signal.aborted).length,

    async close() {
      for (const w of stateWatches.values()) {
        clearInterval(w.timer);
        w.controller.abort();
      }
      stateWatches.clear();
      const open = [...logStreams.values()];
      logStreams.clear();
      for (const s of open) {
        clearTimeout(s.linger);
        s.controller.abort();
        resume(s);
      }
      await Promise.allSettled(open.map((s) => s.pump));
    },
  };
}
