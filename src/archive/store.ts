import { createWriteStream } from "node:fs";
import { appendFile, mkdir, mkdtemp, open, readdir, readFile, rename, rm } from "node:fs/promises";
import { dirname, join } from "node:path";
import { Readable, Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createGunzip, createGzip } from "node:zlib";
import type { Build, LogType } from "../builds/backend.js";

export const ARCHIVED_LOGS: readonly LogType[] = ["stdout", "stderr", "all"];

/** What the index keeps of an archived build: enough to find it and, later, to list without reading entries. */
export interface ArchiveIndexEntry {
  id: string;
  repo: string;
  createdAt: string;
  state: string;
}

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
  /** The index entry of an archived build. */
  lookup(id: string): Promise<ArchiveIndexEntry | undefined>;
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

  const entryDir = (id: string) => join(buildsDir, encodeURIComponent(id));

  /** Reads the index, then adds entries a crash left out of it (renamed into place, not yet appended). */
  async function loadIndex(): Promise<Map<string, ArchiveIndexEntry>> {
    const map = new Map<string, ArchiveIndexEntry>();
    let text = "";
    try {
      text = await readFile(indexPath, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    }
    for (const line of text.split("\n")) {
      if (line === "") continue;
      try {
        const entry = JSON.parse(line) as ArchiveIndexEntry;
        if (typeof entry.id === "string") map.set(entry.id, entry);
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
    if (missing.length > 0) {
      await appendFile(indexPath, missing.map((e) => `${JSON.stringify(e)}\n`).join(""));
      for (const e of missing) map.set(e.id, e);
    }
    return map;
  }

  const indexOf = () => {
    index ??= loadIndex().catch((err: unknown) => {
      index = undefined;
      throw err;
    });
    return index;
  };

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
        await appendFile(indexPath, `${JSON.stringify(entry)}\n`);
      }
      return "written";
    },

    get: readRecord,

    async log(id, type, offset = 0) {
      let handle: Awaited<ReturnType<typeof open>>;
      try {
        handle = await open(join(entryDir(id), `${type}.gz`), "r");
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
        throw err;
      }
      const file = handle.createReadStream({ highWaterMark: 256 * 1024 });
      const gunzip = createGunzip({ chunkSize: 256 * 1024 });
      const out = file.pipe(gunzip).pipe(skipBytes(offset));
      file.on("error", (err) => gunzip.destroy(err));
      gunzip.on("error", (err) => out.destroy(err));
      return out;
    },

    async lookup(id) {
      return (await indexOf()).get(id);
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
  return { id: build.id, repo: build.repo, createdAt: build.createdAt, state: build.state };
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
