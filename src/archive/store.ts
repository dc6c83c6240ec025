import { randomBytes } from "node:crypto";
import { createWriteStream } from "node:fs";
import { access, appendFile, type FileHandle, mkdir, mkdtemp, open, readdir, readFile, rename, rm, stat } from "node:fs/promises";
import { dirname, join } from "node:path";
import { Readable, Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createGunzip, createGzip } from "node:zlib";
import type { Build, BuildCursor, LogType } from "../builds/backend.js";
import { indexAfterCursor, newestFirst } from "../builds/backend.js";

export const ARCHIVED_LOGS: readonly LogType[] = ["stdout", "stderr", "all"];

/**
 * An archived build's record with its sort key (creation time in ms), as listings and retention walk them. The
 * index holds each record whole, so a page of any size is served from memory: no entry is read per request.
 */
export type ArchiveListed = Build & { time: number };

/** Finished builds on disk: one directory per build (its record and gzip-compressed logs) and an index. */
export interface ArchiveStore {
  readonly dir: string;
  /** True when the build's entry is complete on disk. */
  has(id: string): Promise<boolean>;
  /**
   * Writes the build's entry: the record and the three logs, compressed, all or nothing. `exists` when the
   * entry was already there (another writer finished first); what is on disk is then left as it was.
   */
  put(build: Build, logs: Readonly<Record<LogType, AsyncIterable<Uint8Array> | Uint8Array>>): Promise<"written" | "exists">;
  /** The archived record, exactly as `put` received it; undefined when not archived. */
  get(id: string): Promise<Build | undefined>;
  /** The decompressed log from `offset`; undefined when not archived. */
  log(id: string, type: LogType, offset?: number): Promise<AsyncIterable<Uint8Array> | undefined>;
  /** The log's gzip file as stored (one gzip member of the whole log); undefined when not archived. */
  gzipped(id: string, type: LogType): Promise<AsyncIterable<Uint8Array> | undefined>;
  /** The record of an archived build as the index holds it (read anew when this store has not seen it yet). */
  lookup(id: string): Promise<Build | undefined>;
  /** Loads the index (once: later calls share it); listings and retention wait for it. */
  ready(): Promise<void>;
  /**
   * The index in memory, newest first, from just after `after`: no disk access. Call after `ready()`; an
   * entry removed while iterating may still be yielded.
   */
  newest(after?: BuildCursor): Iterable<ArchiveListed>;
  /** Every indexed entry, newest first (retention). */
  all(): readonly ArchiveListed[];
  /** Deletes entries (each directory goes in one rename) and rewrites the index without them. */
  remove(ids: readonly string[]): Promise<void>;
}

const RECORD = "build.json";
/**
 * One line per archived build: its record, as `build.json` holds it. Named apart from `index.jsonl`, the index
 * of earlier versions (summaries only), which is rebuilt from the entries once and then removed.
 */
const INDEX = "records.jsonl";
const OLD_INDEX = "index.jsonl";

/**
 * Creates the store on `dir` (created on first write). Each entry is written into a temporary directory,
 * every file fsynced, then renamed into place in one step, so a crash never leaves half an entry and a second
 * writer of the same build leaves the first one's bytes untouched (rename onto a full directory fails).
 */
export function createArchiveStore(options: { dir: string }): ArchiveStore {
  const dir = options.dir;
  const buildsDir = join(dir, "builds");
  const tmpDir = join(dir, "tmp");
  const indexPath = join(dir, INDEX);
  let index: Promise<Map<string, ArchiveListed>> | undefined;
  // The same map once loaded (undefined while a load is under way): reads of one record never wait for a load.
  let loaded: Map<string, ArchiveListed> | undefined;
  // How much of records.jsonl (which file: its inode) the map holds, so entries other writers sharing the
  // directory appended (replicas on a shared filesystem) are picked up by reading only what is new.
  let seen: { ino: number; size: number } | undefined;
  let refreshing: Promise<void> | undefined;
  // The same entries as the map, newest first, so a page starts with a binary search instead of a sort.
  let sorted: ArchiveListed[] = [];
  // Appends and rewrites of records.jsonl, one at a time, so a rewrite never drops a line appended meanwhile.
  let indexWrites: Promise<void> = Promise.resolve();
  const writeIndex = (op: () => Promise<void>): Promise<void> => {
    const next = indexWrites.then(op);
    indexWrites = next.catch(() => undefined);
    return next;
  };

  const insertSorted = (item: ArchiveListed): void => {
    let lo = 0;
    let hi = sorted.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (newestFirst(sorted[mid] as ArchiveListed, item) < 0) lo = mid + 1;
      else hi = mid;
    }
    sorted.splice(lo, 0, item);
  };

  /** Index of the first entry after `cursor` (older than it). */
  const firstAfter = (cursor: BuildCursor | undefined): number => indexAfterCursor(sorted, cursor);

  const entryDir = (id: string) => join(buildsDir, encodeURIComponent(id));

  /** Reads the index, then adds entries a crash left out of it (renamed into place, not yet appended). */
  async function loadIndex(): Promise<Map<string, ArchiveListed>> {
    const map = new Map<string, ArchiveListed>();
    let text = "";
    const file = await statIndex();
    // No records.jsonl: a new archive, or one an earlier version indexed in index.jsonl.
    const first = file.ino === 0;
    try {
      const bytes = await readFile(indexPath);
      // Up to the last complete line: a line another writer is still appending is read by a later refresh.
      const end = bytes.lastIndexOf(10) + 1;
      text = bytes.subarray(0, end).toString("utf8");
      seen = { ino: file.ino, size: end };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
      seen = { ino: 0, size: 0 };
    }
    for (const line of text.split("\n")) {
      if (line === "") continue;
      try {
        const entry = JSON.parse(line) as Build;
        if (isRecord(entry)) map.set(entry.id, listed(entry));
      } catch {
        // A line cut short by a crash during append; the directory scan below restores its entry.
      }
    }
    let names: string[] = [];
    try {
      names = await readdir(buildsDir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    }
    // The entries on disk are the truth. One removed by hand (or by another store between its renames and its
    // rewrite) leaves the index in memory; the file is left to the store that prunes. One a crash kept out of the
    // file (renamed into place, not yet appended), or an earlier version indexed elsewhere, joins it.
    const onDisk = new Set(names.map((name) => decodeURIComponent(name)));
    for (const id of map.keys()) if (!onDisk.has(id)) map.delete(id);
    const missing: ArchiveListed[] = [];
    const unread = [...onDisk].filter((id) => !map.has(id));
    // Read 32 at a time: an archive an earlier version indexed has every record to read once.
    for (let at = 0; at < unread.length; at += 32) {
      const builds = await Promise.all(unread.slice(at, at + 32).map((id) => readRecord(id).catch(() => undefined)));
      for (const build of builds) if (build !== undefined && isRecord(build)) missing.push(listed(build));
    }
    for (const e of missing) map.set(e.id, e);
    if (first && map.size > 0) {
      // Written whole and renamed into place: stores sharing the directory may all be upgrading at once, and
      // appends of a whole archive from each would interleave into torn lines.
      await writeIndex(() => rewriteIndex(map));
      const now = await statIndex();
      seen = { ino: now.ino, size: now.size };
      await rm(join(dir, OLD_INDEX), { force: true });
    } else if (missing.length > 0) {
      await writeIndex(() => appendFile(indexPath, missing.map((e) => `${JSON.stringify(recordOf(e))}\n`).join("")));
    }
    sorted = [...map.values()].sort(newestFirst);
    loaded = map;
    return map;
  }

  /** Replaces records.jsonl with the entries of `map`, atomically (temporary file, fsync, rename). */
  async function rewriteIndex(map: Map<string, ArchiveListed>): Promise<void> {
    await ensureDir(tmpDir);
    const tmp = join(tmpDir, `index-${randomBytes(8).toString("hex")}.jsonl`);
    try {
      await writeSynced(tmp, Buffer.from([...map.values()].map((e) => `${JSON.stringify(recordOf(e))}\n`).join("")), false);
      await rename(tmp, indexPath);
    } finally {
      await rm(tmp, { force: true });
    }
  }

  async function statIndex(): Promise<{ ino: number; size: number }> {
    try {
      const st = await stat(indexPath);
      return { ino: st.ino, size: st.size };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return { ino: 0, size: 0 };
      throw err;
    }
  }

  /**
   * Adds what other writers appended to records.jsonl since it was read; reloads it whole when it was replaced
   * (another store's retention rewrote it). One stat when nothing changed.
   */
  function refresh(): Promise<void> {
    refreshing ??= (async () => {
      const map = await indexOf();
      const now = await statIndex();
      if (seen === undefined || (now.size === seen.size && now.ino === seen.ino)) return;
      if (now.ino !== seen.ino || now.size < seen.size) {
        index = undefined;
        await indexOf();
        return;
      }
      const handle = await open(indexPath, "r");
      let bytes: Buffer;
      try {
        bytes = Buffer.alloc(now.size - seen.size);
        const { bytesRead } = await handle.read(bytes, 0, bytes.length, seen.size);
        bytes = bytes.subarray(0, bytesRead);
      } finally {
        await handle.close();
      }
      const end = bytes.lastIndexOf(10) + 1;
      for (const line of bytes.subarray(0, end).toString("utf8").split("\n")) {
        if (line === "") continue;
        try {
          const entry = JSON.parse(line) as Build;
          if (!isRecord(entry) || map.has(entry.id)) continue;
          const item = listed(entry);
          map.set(entry.id, item);
          insertSorted(item);
        } catch {
          // A torn line; a full load's directory scan restores its entry.
        }
      }
      seen = { ino: seen.ino, size: seen.size + end };
    })().finally(() => {
      refreshing = undefined;
    });
    return refreshing;
  }

  const indexOf = () => {
    index ??= loadIndex().catch((err: unknown) => {
      index = undefined;
      throw err;
    });
    return index;
  };

  /**
   * A log's file, opened; undefined when the build has none. Anything but a regular file is an error here, at
   * the open, where a caller can still answer otherwise, rather than at the first read of a body under way.
   */
  async function openLog(id: string, type: LogType): Promise<FileHandle | undefined> {
    let handle: FileHandle;
    try {
      handle = await open(join(entryDir(id), `${type}.gz`), "r");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw err;
    }
    if (!(await handle.stat()).isFile()) {
      await handle.close();
      throw new Error(`archived ${type} log of ${id} is not a file`);
    }
    return handle;
  }

  async function readRecord(id: string): Promise<Build | undefined> {
    try {
      return JSON.parse(await readFile(join(entryDir(id), RECORD), "utf8")) as Build;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw err;
    }
  }

  async function writeSynced(path: string, source: AsyncIterable<Uint8Array> | Uint8Array, gzip: boolean): Promise<void> {
    const input = source instanceof Uint8Array ? Readable.from([source]) : Readable.from(source);
    const out = createWriteStream(path, { flags: "wx" });
    if (gzip) await pipeline(input, createGzip(), out);
    else await pipeline(input, out);
    const handle = await open(path, "r");
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  }

  async function syncDir(path: string): Promise<void> {
    const handle = await open(path, "r");
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  }

  return {
    dir,

    async has(id) {
      return (await readRecord(id)) !== undefined;
    },

    async put(build, logs) {
      await ensureDir(buildsDir);
      await ensureDir(tmpDir);
      // Unique across processes and stores sharing the directory (replicas on a shared filesystem).
      const tmp = await mkdtemp(join(tmpDir, "entry-"));
      try {
        for (const type of ARCHIVED_LOGS) await writeSynced(join(tmp, `${type}.gz`), logs[type], true);
        await writeSynced(join(tmp, RECORD), Buffer.from(`${JSON.stringify(build)}\n`), false);
        await syncDir(tmp);
        try {
          await rename(tmp, entryDir(build.id));
        } catch (err) {
          const code = (err as NodeJS.ErrnoException).code;
          if (code === "ENOTEMPTY" || code === "EEXIST") return "exists";
          throw err;
        }
        await syncDir(buildsDir);
      } finally {
        await rm(tmp, { recursive: true, force: true });
      }
      const entry = listed(build);
      const map = await indexOf();
      if (!map.has(build.id)) {
        map.set(build.id, entry);
        insertSorted(entry);
        await writeIndex(() => appendFile(indexPath, `${JSON.stringify(build)}\n`));
      }
      return "written";
    },

    async get(id) {
      // Not indexed (or the index still loading): from its entry, which another writer sharing the directory
      // may have added since the index was read.
      const known = loaded?.get(id);
      if (known === undefined) return readRecord(id);
      // Indexed: from memory (a copy: callers may change what they get), once the entry is seen to be still
      // there; another store sharing the directory may have pruned it since this index was read.
      try {
        await access(join(entryDir(id), RECORD));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      }
      return recordOf(known);
    },

    async log(id, type, offset = 0) {
      const handle = await openLog(id, type);
      if (handle === undefined) return undefined;
      const file = handle.createReadStream({ highWaterMark: 256 * 1024 });
      const gunzip = createGunzip({ chunkSize: 512 * 1024 });
      // From the start (the common read) the decompressed bytes go out as they are, with no stream in between.
      const out = offset > 0 ? file.pipe(gunzip).pipe(skipBytes(offset)) : file.pipe(gunzip);
      file.on("error", (err) => gunzip.destroy(err));
      gunzip.on("error", (err) => out.destroy(err));
      // A reader that stops early (a client gone, a HEAD) destroys what it holds; pipe() would leave the file
      // open until garbage collection.
      out.once("close", () => {
        file.destroy();
        gunzip.destroy();
      });
      return out;
    },

    async gzipped(id, type) {
      return (await openLog(id, type))?.createReadStream({ highWaterMark: 256 * 1024 });
    },

    async lookup(id) {
      let known = (await indexOf()).get(id);
      if (known === undefined) {
        await refresh();
        known = (await indexOf()).get(id);
      }
      return known === undefined ? undefined : recordOf(known);
    },

    async ready() {
      await indexOf();
      await refresh();
    },

    *newest(after) {
      const from = firstAfter(after);
      // A snapshot of the array: inserts and removals during the walk do not shift it.
      const view = sorted;
      for (let i = from; i < view.length; i++) yield view[i] as ArchiveListed;
    },

    all: () => sorted,

    async remove(ids) {
      const map = await indexOf();
      const gone = new Set(ids.filter((id) => map.has(id)));
      if (gone.size === 0) return;
      // Out of the index before the files go: a read that misses the index reads the disk, never the reverse.
      const entries = [...gone].map((id) => map.get(id) as ArchiveListed);
      for (const id of gone) map.delete(id);
      sorted = sorted.filter((e) => !gone.has(e.id));
      let removed = 0;
      try {
        await ensureDir(tmpDir);
        for (const { id } of entries) {
          // Renamed out of builds/ first, so a reader never sees half a directory; under a name no other
          // removal (another store, or one a crash left behind) can hold.
          const doomed = join(tmpDir, `removed-${randomBytes(8).toString("hex")}`);
          try {
            await rename(entryDir(id), doomed);
          } catch (err) {
            if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
          }
          removed += 1;
          await rm(doomed, { recursive: true, force: true });
        }
      } catch (err) {
        // Those still on disk go back into the index, and the next prune tries them again.
        for (const entry of entries.slice(removed)) {
          map.set(entry.id, entry);
          insertSorted(entry);
        }
        throw err;
      }
      await writeIndex(async () => {
        await rewriteIndex(map);
        const now = await statIndex();
        seen = { ino: now.ino, size: now.size };
      });
    },
  };
}

/**
 * mkdir -p that keeps the real cause: Node's recursive mkdir reports a read-only file system as ENOENT, and
 * the archiver tells an unwritable directory from other failures by the code.
 */
async function ensureDir(path: string): Promise<void> {
  try {
    await mkdir(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "EEXIST") return;
    if (code !== "ENOENT") throw err;
    await ensureDir(dirname(path));
    await ensureDir(path);
  }
}

/** A record as listings walk it: with its sort key. */
function listed(build: Build): ArchiveListed {
  return { ...build, time: Date.parse(build.createdAt) };
}

/** The record of a listed entry, as `build.json` holds it (a copy without the sort key). */
export function recordOf(entry: ArchiveListed): Build {
  const { time: _time, ...build } = entry;
  return build;
}

/** Whether a parsed index line or record file is a build record (a listing can show it as it is). */
function isRecord(entry: Build): boolean {
  return (
    typeof entry === "object" &&
    entry !== null &&
    typeof entry.id === "string" &&
    typeof entry.createdAt === "string" &&
    typeof entry.ref === "string"
  );
}

/** Drops the first `n` bytes of a byte stream. */
function skipBytes(n: number): Transform {
  let left = n;
  return new Transform({
    transform(chunk: Buffer, _encoding, done) {
      if (left === 0) return done(null, chunk);
      if (chunk.length <= left) {
        left -= chunk.length;
        return done();
      }
      const rest = chunk.subarray(left);
      left = 0;
      done(null, rest);
    },
  });
}
