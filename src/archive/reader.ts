import type { BuildReader } from "../builds/backend.js";
import type { ArchiveStore } from "./store.js";

/**
 * The live reader, falling back to the archive for builds the backend forgot. A build's record comes from the
 * backend while it has it; an archived build's logs come from the archive (they no longer change, and this
 * spares the backend the reads), served the same whether or not the request follows.
 */
export function createArchivedReader(live: BuildReader, store: ArchiveStore): BuildReader {
  return {
    // Merging archived builds into listings (with an index-based cursor) is not done yet.
    listBuilds: (filter, signal) => live.listBuilds(filter, signal),

    async getBuild(id, signal) {
      return (await live.getBuild(id, signal)) ?? (await store.get(id));
    },

    async *logs(id, request) {
      const archived = await store.log(id, request.type, request.offset);
      if (archived === undefined) {
        yield* live.logs(id, request);
        return;
      }
      yield* archived;
    },

    cancel: (id, signal) => live.cancel(id, signal),
  };
}
