import { createWriteStream } from "node:fs";
import { appendFile, type FileHandle, mkdir, mkdtemp, open, readdir, readFile, rename, rm, stat } from "node:fs/promises";
import { dirname, join } from "node:path";
import { Readable, Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createGunzip, createGzip } from "node:zlib";
import type { Build, BuildCursor, BuildSummary, LogType } from "../builds/backend.js";
import { indexAfterCursor, newestFirst } from "../builds/backend.js";

export const ARCHIVED_LOGS: readonly LogType[] = ["stdout", "stderr", "all"];

/**
 * What the index keeps of an archived build: enough to filter, check visibility, sort and prune a listing
 * without reading entries (the record itself is read only for builds a page shows).
 */
export type ArchiveIndexEntry = BuildSummary & Pick<Build, "state" | "createdAt" | "finishedAt">;

/** An index entry with its sort key (creation time in ms), as listings and retention walk them. */
export type ArchiveListed = ArchiveIndexEntry & { time: number };

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
  /** The index entry of an archived build. */
  lookup(id: string): Promise<ArchiveIndexEntry | undefined>;
  /** Loads the index (once: later calls share it); listings and retention wait for it. */
  ready(): Promise<void>;
  /**
   * The index in memory, newest first, from just after `after`: no disk access. Call after `ready()`; an
   * entry removed while iterating may still be yielded (its record then reads as undefined).
   */
  newest(after?: BuildCursor): Iterable<ArchiveListed>;
  /** Every indexed entry, newest first (retention). */
  all(): readonly ArchiveListed[];
  /** Deletes entries (each directory goes in one rename) and rewrites the index without them. */
  remove(ids: readonly string[]): Promise<void>;
}

const RECORD = "build.json";
const INDEX = "index.jsonl";

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
  let index: Promise<Map<string, ArchiveIndexEntry>> | undefined;
  // How much of index.jsonl (which file: its inode) the map holds, so entries other writers sharing the
  // directory appended (replicas on a shared filesystem) are picked up by reading only what is new.
  let seen: { ino: number; size: number } | undefined;
  let refreshing: Promise<void> | undefined;
  // The same entries as the map, newest first, so a page starts with a binary search instead of a sort.
  let sorted: ArchiveListed[] = [];
  // Appends and rewrites of index.jsonl, one at a time, so a rewrite never drops a line appended meanwhile.
  let indexWrites: Promise<void> = Promise.resolve();
  const writeIndex = (op: () => Promise<void>): Promise<void> => {
    const next = indexWrites.then(op);
    indexWrites = next.catch(() => undefined);
    return next;
  };

  const insertSorted = (entry: ArchiveIndexEntry): void => {
    const item: ArchiveListed = { ...entry, time: Date.parse(entry.createdAt) };
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
  async function loadIndex(): Promise<Map<string, ArchiveIndexEntry>> {
    const map = new Map<string, ArchiveIndexEntry>();
    let text = "";
    const file = await statIndex();
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
    let stale = false;
    for (const line of text.split("\n")) {
      if (line === "") continue;
      try {
        const entry = JSON.parse(line) as ArchiveIndexEntry;
        if (typeof entry.id !== "string") continue;
        if (typeof entry.ref === "string" && typeof entry.createdAt === "string") {
          map.set(entry.id, entry);
          continue;
        }
        // A line from before the index carried what listings need: upgraded once from the record.
        stale = true;
        const build = await readRecord(entry.id);
        if (build !== undefined) map.set(entry.id, indexEntry(build));
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
    const missing: ArchiveIndexEntry[] = [];
    for (const name of names) {
      const id = decodeURIComponent(name);
      if (map.has(id)) continue;
      const build = await readRecord(id);
      if (build !== undefined) missing.push(indexEntry(build));
    }
    for (const e of missing) map.set(e.id, e);
    if (stale) {
      await writeIndex(() => rewriteIndex(map));
      const now = await statIndex();
      seen = { ino: now.ino, size: now.size };
    } else if (missing.length > 0) await writeIndex(() => appendFile(indexPath, missing.map((e) => `${JSON.stringify(e)}\n`).join("")));
    sorted = [...map.values()].map((e) => ({ ...e, time: Date.parse(e.createdAt) })).sort(newestFirst);
    return map;
  }

  /** Replaces index.jsonl with the entries of `map`, atomically (temporary file, fsync, rename). */
  async function rewriteIndex(map: Map<string, ArchiveIndexEntry>): Promise<void> {
    await ensureDir(tmpDir);
    const tmp = join(tmpDir, `index-${process.pid}-${Date.now()}.jsonl`);
    try {
      await writeSynced(tmp, Buffer.from([...map.values()].map((e) => `${JSON.stringify(e)}\n`).join("")), false);
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
   * Adds what other writers appended to index.jsonl since it was read; reloads it whole when it was replaced
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
          const entry = JSON.parse(line) as ArchiveIndexEntry;
          if (typeof entry.id !== "string" || typeof entry.createdAt !== "string" || map.has(entry.id)) continue;
          map.set(entry.id, entry);
          insertSorted(entry);
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
      const entry = indexEntry(build);
      const map = await indexOf();
      if (!map.has(build.id)) {
        map.set(build.id, entry);
        insertSorted(entry);
        await writeIndex(() => appendFile(indexPath, `${JSON.stringify(entry)}\n`));
      }
      return "written";
    },

    get: readRecord,

    async log(id, type, offset = 0) {
      const handle = await openLog(id, type);
      if (handle === undefined) return undefined;
      const file = handle.createReadStream({ highWaterMark: 256 * 1024 });
      const gunzip = createGunzip({ chunkSize: 256 * 1024 });
      // From the start (the common read) the decompressed bytes go out as they are, with no stream in between.
      const out = offset > 0 ? file.pipe(gunzip).pipe(skipBytes(offset)) : file.pipe(gunzip);
      file.on("error", (err) => gunzip.destroy(err));
      gunzip.on("error", (err) => out.destroy(err));
      return out;
    },

    async gzipped(id, type) {
      return (await openLog(id, type))?.createReadStream({ highWaterMark: 256 * 1024 });
    },

    async lookup(id) {
      const known = (await indexOf()).get(id);
      if (known !== undefined) return known;
      await refresh();
      return (await indexOf()).get(id);
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
      await ensureDir(tmpDir);
      for (const id of gone) {
        // Renamed out of builds/ first, so a reader never sees half a directory.
        const doomed = join(tmpDir, `removed-${process.pid}-${encodeURIComponent(id)}`);
        try {
          await rename(entryDir(id), doomed);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
        }
        await rm(doomed, { recursive: true, force: true });
        map.delete(id);
      }
      sorted = sorted.filter((e) => !gone.has(e.id));
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

function indexEntry(build: Build): ArchiveIndexEntry {
  const { id, builder, repo, repoUrl, commit, ref, flavor, event, trusted, state, createdAt } = build;
  const entry: ArchiveIndexEntry = { id, builder, repo, repoUrl, commit, ref, flavor, event, trusted, state, createdAt };
  if (build.private !== undefined) entry.private = build.private;
  if (build.pr !== undefined) entry.pr = build.pr;
  if (build.tag !== undefined) entry.tag = build.tag;
  if (build.finishedAt !== undefined) entry.finishedAt = build.finishedAt;
  return entry;
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
