import type { BuildCursor } from "./backend.js";
import { indexAfterCursor, newestFirst } from "./backend.js";

/** A build's place in a listing: creation time (ms) and ID. */
export interface Ranked {
  time: number;
  id: string;
}

/** Builds kept in listing order (newest first), so a page starts with a binary search instead of a sort. */
export interface NewestFirstIndex {
  /** Adds the build; a build already there is left where it is (its creation time never changes). */
  add(entry: Ranked): void;
  /** Adds many at once (a start-up load): one sort instead of one insertion each. */
  addAll(entries: Iterable<Ranked>): void;
  delete(entry: Ranked): void;
  /** Builds from just after `after`, newest first; a snapshot, unaffected by later changes. */
  from(after?: BuildCursor): Iterable<Ranked>;
  readonly size: number;
}

export function createNewestFirstIndex(): NewestFirstIndex {
  let sorted: Ranked[] = [];

  /** Where `entry` is or would go. */
  const position = (entry: Ranked): number => {
    let lo = 0;
    let hi = sorted.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (newestFirst(sorted[mid] as Ranked, entry) < 0) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  };

  const firstAfter = (cursor: BuildCursor): number => indexAfterCursor(sorted, cursor);

  return {
    add(entry) {
      const at = position(entry);
      const there = sorted[at];
      if (there !== undefined && there.id === entry.id && there.time === entry.time) return;
      // Copy on write: a page being walked keeps the array it started with.
      sorted = [...sorted.slice(0, at), { time: entry.time, id: entry.id }, ...sorted.slice(at)];
    },
    addAll(entries) {
      const known = new Set(sorted.map((e) => e.id));
      const fresh = [...entries].filter((e) => !known.has(e.id)).map((e) => ({ time: e.time, id: e.id }));
      sorted = [...sorted, ...fresh].sort(newestFirst);
    },
    delete(entry) {
      const at = position(entry);
      const there = sorted[at];
      if (there === undefined || there.id !== entry.id) return;
      sorted = [...sorted.slice(0, at), ...sorted.slice(at + 1)];
    },
    *from(after) {
      const view = sorted;
      for (let i = after === undefined ? 0 : firstAfter(after); i < view.length; i++) yield view[i] as Ranked;
    },
    get size() {
      return sorted.length;
    },
  };
}
