import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, describe, expect, it } from "vitest";
import { createArchivedReader } from "../../src/archive/reader.js";
import { createArchiveRetention } from "../../src/archive/retention.js";
import { createArchiveStore } from "../../src/archive/store.js";
import type { Build, BuildFilter, BuildPage, BuildReader } from "../../src/builds/backend.js";
import { isAfterCursor, newestFirst } from "../../src/builds/backend.js";
import { matchesFilter } from "../../src/builds/model.js";
import { captureLogs } from "../helpers/log-capture.js";

const T0 = Date.parse("2026-01-01T00:00:00Z");

function build(n: number, extra: Partial<Build> = {}): Build {
  return {
    id: `builder/dispatch-${1767225600 + n}-${n.toString(16).padStart(8, "0")}`,
    builder: "builder",
    repo: n % 3 === 0 ? "acme/secret" : "acme/widgets",
    repoUrl: "https://git.example.test/acme/widgets.git",
    commit: "4c1d7e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d",
    ref: n % 2 === 0 ? "main" : "dev",
    flavor: "default",
    event: "push",
    trusted: true,
    state: n % 4 === 0 ? "failure" : "success",
    // Some builds share a creation time, so ties are broken by ID across live and archive alike.
    createdAt: new Date(T0 + Math.floor(n / 2) * 1000).toISOString(),
    finishedAt: new Date(T0 + Math.floor(n / 2) * 1000 + 500).toISOString(),
    ...extra,
  };
}

/** A live reader over a fixed set of builds, paging like the local runner (visibility checked per build). */
function liveReader(builds: Build[]): BuildReader & { listings: number } {
  const reader = {
    listings: 0,
    async listBuilds(filter: BuildFilter): Promise<BuildPage> {
      reader.listings += 1;
      const sorted = builds
        .map((b) => ({ build: b, time: Date.parse(b.createdAt), id: b.id }))
        .filter((c) => isAfterCursor(c.time, c.id, filter.after) && matchesFilter(c.build, filter))
        .sort(newestFirst);
      const page: BuildPage = { builds: [], hidden: 0 };
      let at = 0;
      for (; at < sorted.length && page.builds.length < filter.limit; at += 1) {
        const { build: b } = sorted[at] as { build: Build };
        if (filter.visible !== undefined && !(await filter.visible(b))) page.hidden += 1;
        else page.builds.push(b);
      }
      const last = sorted[at - 1];
      if (at < sorted.length && last !== undefined) page.next = { time: last.time, id: last.id };
      return page;
    },
    getBuild: async (id: string) => builds.find((b) => b.id === id),
    logs: () => (async function* () {})(),
    cancel: async () => undefined,
  };
  return reader;
}

async function listAll(reader: BuildReader, filter: Omit<BuildFilter, "limit" | "after">, limit: number) {
  const ids: string[] = [];
  const shown: Build[] = [];
  let hidden = 0;
  let pages = 0;
  let after: BuildFilter["after"];
  do {
    const page = await reader.listBuilds({ ...filter, limit, ...(after === undefined ? {} : { after }) });
    expect(page.builds.length).toBeLessThanOrEqual(limit);
    pages += 1;
    hidden += page.hidden;
    for (const b of page.builds) {
      ids.push(b.id);
      shown.push(b);
    }
    after = page.next;
  } while (after !== undefined && pages < 100);
  return { ids, shown, hidden, pages };
}

const empty = () => (async function* () {})();

describe("listing live and archived builds together", () => {
  const dirs: string[] = [];
  const tempDir = () => {
    const d = mkdtempSync(join(tmpdir(), "petrel-archive-list-"));
    dirs.push(d);
    return d;
  };
  afterAll(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  // Builds 0..29 finished and were archived; 20..29 are still live too (Nomad has not GC'd them), 30..34 run.
  const archived = Array.from({ length: 30 }, (_, n) => build(n));
  const live = [
    ...archived.slice(20).map((b) => ({ ...b, node: "live-copy" })),
    ...Array.from({ length: 5 }, (_, i) => build(30 + i, { state: "running" })),
  ];
  const expectedAll = [...Array.from({ length: 35 }, (_, n) => build(n))]
    .map((b) => ({ time: Date.parse(b.createdAt), id: b.id }))
    .sort(newestFirst)
    .map((b) => b.id);

  const setUp = async () => {
    const store = createArchiveStore({ dir: tempDir() });
    for (const b of archived) await store.put(b, { stdout: empty(), stderr: empty(), all: empty() });
    const liveSide = liveReader(live);
    return { store, liveSide, reader: createArchivedReader(liveSide, store, captureLogs().log) };
  };

  it.each([1, 2, 3, 7, 50])("pages of %i: every build once, newest first, the live copy when both have it", async (limit) => {
    const { reader } = await setUp();
    const { ids, shown, hidden } = await listAll(reader, {}, limit);
    expect(ids).toEqual(expectedAll);
    expect(hidden).toBe(0);
    for (const b of shown) {
      const n = Number.parseInt(b.id.slice(-8), 16);
      expect(b.node).toBe(n >= 20 && n < 30 ? "live-copy" : undefined);
    }
  });

  it("applies repo, ref and state filters to archived builds", async () => {
    const { reader } = await setUp();
    const failures = await listAll(reader, { state: "failure" }, 3);
    expect(failures.ids).toEqual(
      expectedAll.filter((id) => Number.parseInt(id.slice(-8), 16) % 4 === 0 && Number.parseInt(id.slice(-8), 16) < 30),
    );
    const devWidgets = await listAll(reader, { repo: "acme/widgets", ref: "refs/heads/dev" }, 4);
    expect(devWidgets.ids).toEqual(
      expectedAll.filter((id) => {
        const n = Number.parseInt(id.slice(-8), 16);
        return n % 2 === 1 && n % 3 !== 0;
      }),
    );
  });

  it("hides builds the caller may not read, archived ones included, each counted once over all pages", async () => {
    const { reader } = await setUp();
    const visible = (b: { repo: string }) => b.repo !== "acme/secret";
    for (const limit of [1, 4, 50]) {
      const { ids, hidden } = await listAll(reader, { visible }, limit);
      expect(ids).toEqual(expectedAll.filter((id) => Number.parseInt(id.slice(-8), 16) % 3 !== 0));
      expect(hidden).toBe(expectedAll.length - ids.length);
    }
  });

  it("lists from the index in memory, reading no entry; an entry removed by hand leaves it at the next start", async () => {
    const { store, reader } = await setUp();
    await store.ready();
    const before = await listAll(reader, {}, 5);
    // Every record file made unreadable (a directory where the file was): the pages are the same, record for
    // record, so none of them was read.
    const records = archived.map((b) => join(store.dir, "builds", encodeURIComponent(b.id), "build.json"));
    const saved = records.map((path) => readFileSync(path));
    for (const path of records) {
      rmSync(path);
      mkdirSync(path);
    }
    try {
      const { shown } = await listAll(reader, {}, 5);
      expect(shown).toEqual(before.shown);
      expect(shown.find((b) => b.id === build(3).id)).toEqual(build(3));
    } finally {
      records.forEach((path, i) => {
        rmSync(path, { recursive: true });
        writeFileSync(path, saved[i] as Buffer);
      });
    }
    rmSync(join(store.dir, "builds", encodeURIComponent(build(3).id)), { recursive: true });
    const reopened = createArchivedReader(liveReader(live), createArchiveStore({ dir: store.dir }), captureLogs().log);
    expect((await listAll(reopened, {}, 5)).ids).toEqual(expectedAll.filter((id) => id !== build(3).id));
  });

  it("rebuilds the index of an earlier version (summaries only) from the entries, then removes it", async () => {
    const dir = tempDir();
    const first = createArchiveStore({ dir });
    for (const b of archived.slice(0, 4)) await first.put(b, { stdout: empty(), stderr: empty(), all: empty() });
    // The index as the first archive version wrote it (one torn line), and none of this version.
    rmSync(join(dir, "records.jsonl"));
    writeFileSync(
      join(dir, "index.jsonl"),
      archived
        .slice(0, 3)
        .map((b) => `${JSON.stringify({ id: b.id, repo: b.repo, createdAt: b.createdAt, state: b.state })}\n`)
        .join(""),
    );
    appendFileSync(join(dir, "index.jsonl"), '{"id":"cut sho');
    const reader = createArchivedReader(liveReader([]), createArchiveStore({ dir }), captureLogs().log);
    const { ids } = await listAll(reader, { ref: "main" }, 10);
    expect(ids).toEqual([build(2).id, build(0).id]);
    expect(existsSync(join(dir, "index.jsonl"))).toBe(false);
    // Each line of the new index is the entry's record, byte for byte.
    const lines = readFileSync(join(dir, "records.jsonl"), "utf8")
      .split("\n")
      .filter((l) => l !== "");
    expect(lines.sort()).toEqual(
      archived
        .slice(0, 4)
        .map((b) => readFileSync(join(dir, "builds", encodeURIComponent(b.id), "build.json"), "utf8").trimEnd())
        .sort(),
    );
    expect(await createArchiveStore({ dir }).lookup(build(3).id)).toEqual(build(3));
  });

  it("removes entries: gone from listings, the disk and the index of the next start", async () => {
    const { store, reader } = await setUp();
    await store.remove([build(0).id, build(1).id]);
    expect((await listAll(reader, {}, 50)).ids).toEqual(expectedAll.filter((id) => id !== build(0).id && id !== build(1).id));
    expect(await store.get(build(0).id)).toBeUndefined();
    const reopened = createArchiveStore({ dir: store.dir });
    expect(await reopened.lookup(build(0).id)).toBeUndefined();
    expect(await reopened.lookup(build(2).id)).toBeDefined();
  });
});

describe("archive retention", () => {
  const dir = mkdtempSync(join(tmpdir(), "petrel-archive-retention-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("keeps the newest N per repository and nothing older than the age limit, in the background", async () => {
    const store = createArchiveStore({ dir });
    // Builds n = 0..11 finished n half-seconds after T0 (two per second); repo acme/secret is every third.
    const builds = Array.from({ length: 12 }, (_, n) => build(n));
    for (const b of builds) await store.put(b, { stdout: empty(), stderr: empty(), all: empty() });
    const logs = captureLogs();
    // "Now" is 30 s after T0, the age limit 26 s: builds finished before T0 + 4 s go (n < 8 by finish time).
    const retention = createArchiveRetention({
      store,
      keep: 2,
      maxAgeMs: 26_000,
      log: logs.log,
      now: () => T0 + 30_000,
      intervalMs: 60_000,
    });
    try {
      for (let i = 0; i < 200 && store.all().length === 12; i++) await sleep(10);
      await retention.prune();
      const left = store.all().map((e) => Number.parseInt(e.id.slice(-8), 16));
      // acme/widgets: 11 and 10 (the newest two; 8 is young enough but beyond keep); acme/secret: 9 (6 is too old).
      expect(left).toEqual([11, 10, 9]);
      const reopened = createArchiveStore({ dir });
      await reopened.ready();
      expect(reopened.all().map((e) => e.id)).toEqual(store.all().map((e) => e.id));
      expect(await store.get(build(7).id)).toBeUndefined();
      expect(logs.text()).toContain("archive retention removed old builds");
    } finally {
      retention.stop();
    }
  });
});
