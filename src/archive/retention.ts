import { errorMessage } from "../errors.js";
import type { Logger } from "../log.js";
import type { ArchiveStore } from "./store.js";

export interface ArchiveRetentionOptions {
  store: ArchiveStore;
  /** Finished builds kept per repository (PETREL_ARCHIVE_KEEP). */
  keep: number;
  /** Builds that finished longer ago than this are removed (PETREL_ARCHIVE_MAX_AGE_DAYS). */
  maxAgeMs: number;
  log: Logger;
  /** Time between prunes; the first runs once the index is loaded. */
  intervalMs?: number;
  now?: () => number;
}

export interface ArchiveRetention {
  /** Prunes now; resolves to the number of builds removed. Runs one at a time. */
  prune(): Promise<number>;
  stop(): void;
}

const DEFAULT_INTERVAL_MS = 3600_000;

/**
 * Removes archived builds beyond `keep` per repository (newest kept) or older than `maxAgeMs`, on a timer in
 * the background: listings and reads never wait for it. Decided from the in-memory index alone.
 */
export function createArchiveRetention(options: ArchiveRetentionOptions): ArchiveRetention {
  const { store, keep, maxAgeMs, log } = options;
  const now = options.now ?? Date.now;
  let running: Promise<number> | undefined;
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;

  async function pruneOnce(): Promise<number> {
    await store.ready();
    const cutoff = now() - maxAgeMs;
    const perRepo = new Map<string, number>();
    const doomed: string[] = [];
    for (const entry of store.all()) {
      const repo = entry.repo.toLowerCase();
      const rank = (perRepo.get(repo) ?? 0) + 1;
      perRepo.set(repo, rank);
      if (rank > keep || Date.parse(entry.finishedAt ?? entry.createdAt) < cutoff) doomed.push(entry.id);
    }
    if (doomed.length > 0) {
      await store.remove(doomed);
      log.info({ removed: doomed.length, keep, maxAgeDays: maxAgeMs / 86_400_000 }, "archive retention removed old builds");
    }
    return doomed.length;
  }

  const prune = (): Promise<number> => {
    running ??= pruneOnce().finally(() => {
      running = undefined;
    });
    return running;
  };

  const schedule = (ms: number) => {
    if (stopped) return;
    timer = setTimeout(() => {
      prune()
        .catch((err: unknown) => log.error({ dir: store.dir, err: errorMessage(err) }, "archive retention failed; it runs again later"))
        .finally(() => schedule(options.intervalMs ?? DEFAULT_INTERVAL_MS));
    }, ms);
    timer.unref();
  };
  schedule(0);

  return {
    prune,
    stop() {
      stopped = true;
      if (timer !== undefined) clearTimeout(timer);
    },
  };
}
