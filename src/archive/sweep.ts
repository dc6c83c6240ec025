import type { BuildReader } from "../builds/backend.js";
import { isTerminal } from "../builds/backend.js";
import type { Leadership } from "../cluster/leadership.js";
import { errorMessage } from "../errors.js";
import type { Logger } from "../log.js";
import { untilAborted } from "../util/abort.js";
import type { Archiver } from "./archiver.js";
import type { ArchiveStore } from "./store.js";

/** Pages of IDs of builds the backend still has that may be final; read lazily, one page at a time. */
export type FinishedBuilds = (signal: AbortSignal) => AsyncIterable<readonly string[]>;

export interface ArchiveSweepOptions {
  store: ArchiveStore;
  archiver: Archiver;
  finished: FinishedBuilds;
  leadership: Leadership;
  log: Logger;
}

/** The start-up pass: runs whenever a term of leadership starts, stopped when it ends. */
export interface ArchiveSweep {
  /** Resolves when the pass in progress (if any) has ended: tests, shutdown. */
  settled(): Promise<void>;
  stop(): Promise<void>;
}

/**
 * Archives every final build the backend still has and the archive lacks: builds that ended while petrel was
 * down, or whose archiving was still queued when it stopped (the queue lives in memory). Runs in the
 * background whenever this replica starts leading; one page of the backend's listing is in flight at a time
 * and the archiver bounds how many builds are written at once, so webhooks never wait for it.
 */
export function createArchiveSweep(options: ArchiveSweepOptions): ArchiveSweep {
  const { store, archiver, finished, leadership, log } = options;
  let current: { controller: AbortController; done: Promise<void> } | undefined;
  let stopped = false;

  async function pass(signal: AbortSignal): Promise<void> {
    await store.ready();
    let checked = 0;
    let missing = 0;
    for await (const page of finished(signal)) {
      signal.throwIfAborted();
      const todo: string[] = [];
      for (const id of page) if ((await store.lookup(id)) === undefined) todo.push(id);
      checked += page.length;
      missing += todo.length;
      // One page at a time: the next is listed once this one is archived, so memory stays bounded by the page.
      if (todo.length > 0) await untilAborted(archiver.archive(todo), signal);
    }
    log.info({ checked, archived: missing }, "archived the finished builds the archive lacked");
  }

  function start(): void {
    if (stopped || current !== undefined) return;
    const controller = new AbortController();
    const term = leadership.term();
    const onEnd = () => controller.abort();
    term?.addEventListener("abort", onEnd, { once: true });
    const done = new Promise<void>((resolve) => setImmediate(resolve))
      .then(() => pass(controller.signal))
      .catch((err: unknown) => {
        if (!controller.signal.aborted)
          log.warn({ err: errorMessage(err) }, "could not check the backend for builds to archive; the next term checks again");
      })
      .finally(() => {
        term?.removeEventListener("abort", onEnd);
        if (current?.controller === controller) current = undefined;
      });
    current = { controller, done };
  }

  const unsubscribe = leadership.onChange((leader) => {
    if (leader) start();
    else current?.controller.abort();
  });
  if (leadership.isLeader()) start();

  return {
    async settled() {
      await current?.done;
    },
    async stop() {
      stopped = true;
      unsubscribe();
      current?.controller.abort();
      await current?.done;
    },
  };
}

/** The finished builds of a reader that keeps every build it has in order (the single-machine backend). */
export function finishedOfReader(reader: BuildReader, pageSize = 200): FinishedBuilds {
  return async function* (signal) {
    let after: Parameters<BuildReader["listBuilds"]>[0]["after"];
    for (;;) {
      const page = await reader.listBuilds({ limit: pageSize, ...(after === undefined ? {} : { after }) }, signal);
      yield page.builds.filter((b) => isTerminal(b.state)).map((b) => b.id);
      if (page.next === undefined) return;
      after = page.next;
    }
  };
}
