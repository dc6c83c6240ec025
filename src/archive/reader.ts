import type { BuildCursor, BuildFilter, BuildPage, BuildReader, BuildSummary } from "../builds/backend.js";
import { isAfterCursor, newestFirst } from "../builds/backend.js";
import { matchesFilter } from "../builds/model.js";
import { errorMessage } from "../errors.js";
import type { Logger } from "../log.js";
import { type ArchiveListed, type ArchiveStore, recordOf } from "./store.js";

/**
 * The live reader, with the archive for finished builds. An archived build's record and logs come from the
 * archive (they no longer change, and this spares the backend the reads), served the same whether or not the
 * request follows; anything else is the backend's.
 */
export function createArchivedReader(live: BuildReader, store: ArchiveStore, log: Logger): BuildReader {
  const said = new Set<string>();
  /**
   * An archive read that failed (an entry that cannot be read, not a missing one) as no archived copy: the
   * backend answers instead, so a damaged or unreadable archive never stops the reads of builds Nomad still
   * has. Said once per cause, not once per request.
   */
  const orLive = async <T>(id: string, read: Promise<T | undefined>): Promise<T | undefined> => {
    try {
      return await read;
    } catch (err) {
      const cause = (err as NodeJS.ErrnoException).code ?? "unreadable";
      if (!said.has(cause)) {
        said.add(cause);
        log.warn({ build: id, cause, err: errorMessage(err) }, "an archive entry cannot be read; the backend answers for it");
      }
      return undefined;
    }
  };
  return {
    listBuilds: (filter, signal) => listMerged(live, store, filter, signal),

    async getBuild(id, signal) {
      // An archived build is final and its record is what the live one showed: no backend round trip, and it
      // is served the same while the backend is down.
      return (await orLive(id, store.get(id))) ?? (await live.getBuild(id, signal));
    },

    async *logs(id, request) {
      const archived = await orLive(id, store.log(id, request.type, request.offset));
      if (archived === undefined) {
        yield* live.logs(id, request);
        return;
      }
      yield* archived;
    },

    gzipLog: (id, type) => orLive(id, store.gzipped(id, type)),

    cancel: (id, signal, why) => live.cancel(id, signal, why),
  };
}

type Ranked = { time: number; id: string };

/**
 * One page of live and archived builds, newest first. The live page comes first; it covers everything from
 * the cursor down to where it stopped (its `next`), so archived builds are taken from that same stretch only
 * (all of the rest when the live side is exhausted), from the in-memory index. Every build the live side
 * looked at (its visibility check sees each one) is the live side's to show or hide: the archive skips it,
 * so a build both live and archived appears once, as the live one, and is counted hidden once. Cost: the
 * live page, plus a walk of the in-memory index (which holds the records whole): no archive file is read.
 */
async function listMerged(live: BuildReader, store: ArchiveStore, filter: BuildFilter, signal?: AbortSignal): Promise<BuildPage> {
  const seen = new Set<string>();
  const visible = filter.visible;
  const livePage = await live.listBuilds(
    {
      ...filter,
      visible: (summary: BuildSummary) => {
        seen.add(summary.id);
        return visible === undefined ? true : visible(summary);
      },
    },
    signal,
  );
  for (const build of livePage.builds) seen.add(build.id);
  await store.ready();

  // The archived side of this page: builds of the live stretch (or beyond it when live has nothing more).
  const bound = livePage.next;
  const picked: ArchiveListed[] = [];
  const hiddenAt: Ranked[] = [];
  let scanEnd: Ranked | undefined;
  let more = false;
  for (const entry of store.newest(filter.after)) {
    if (bound !== undefined && isAfterCursor(entry.time, entry.id, bound)) break;
    if (picked.length >= filter.limit) {
      more = true;
      break;
    }
    scanEnd = entry;
    if (seen.has(entry.id) || !matchesFilter(entry, filter)) continue;
    if (visible !== undefined && !(await visible(entry))) {
      hiddenAt.push(entry);
      continue;
    }
    picked.push(entry);
  }
  signal?.throwIfAborted();
  const archived = picked.map((entry) => ({ build: recordOf(entry), time: entry.time, id: entry.id }));

  const merged = [...livePage.builds.map((b) => ({ build: b, time: Date.parse(b.createdAt), id: b.id })), ...archived].sort(newestFirst);
  const shown = merged.slice(0, filter.limit);
  const page: BuildPage = { builds: shown.map((m) => m.build), hidden: livePage.hidden };
  let next: BuildCursor | undefined;
  if (merged.length > filter.limit) {
    const last = shown[shown.length - 1] as Ranked;
    next = { time: last.time, id: last.id };
  } else if (bound !== undefined) {
    next = bound;
  } else if (more && scanEnd !== undefined) {
    next = { time: scanEnd.time, id: scanEnd.id };
  }
  // Archived builds hidden beyond where this page ends are counted by the page that shows their stretch.
  page.hidden += hiddenAt.filter((h) => next === undefined || !isAfterCursor(h.time, h.id, next)).length;
  if (next !== undefined) page.next = next;
  return page;
}
