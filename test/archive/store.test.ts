import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";
import { afterEach, describe, expect, it } from "vitest";
import { createArchiveStore } from "../../src/archive/store.js";
import type { Build } from "../../src/builds/backend.js";

const ID = "builder/dispatch-1700000000-1a2b3c4d";

function build(id = ID, extra: Partial<Build> = {}): Build {
  return {
    id,
    builder: "builder",
    repo: "acme/widgets",
    repoUrl: "https://git.example.test/acme/widgets.git",
    commit: "a".repeat(40),
    ref: "main",
    flavor: "default",
    event: "push",
    trusted: true,
    state: "failure",
    reason: "build failed with exit code 3",
    exitCode: 3,
    createdAt: "2026-12-07T03:00:00.000Z",
    ...extra,
  };
}

async function text(iter: AsyncIterable<Uint8Array> | undefined): Promise<string> {
  if (iter === undefined) throw new Error("not archived");
  const parts: Buffer[] = [];
  for await (const chunk of iter) parts.push(Buffer.from(chunk));
  return Buffer.concat(parts).toString("utf8");
}

async function* chunks(...parts: string[]): AsyncIterable<Uint8Array> {
  for (const p of parts) yield Buffer.from(p);
}

const dirs: string[] = [];
function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "petrel-archive-"));
  dirs.push(dir);
  return dir;
}
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

describe("archive store", () => {
  it("keeps the record as given and the three logs gzip-compressed, read back from any offset", async () => {
    const dir = tempDir();
    const store = createArchiveStore({ dir: join(dir, "archive") });
    const record = build();
    expect(await store.has(ID)).toBe(false);
    expect(await store.get(ID)).toBeUndefined();
    expect(await store.log(ID, "stdout")).toBeUndefined();
    const all = "step 1\nout ✓\nerr\n";
    expect(await store.put(record, { stdout: chunks("out ", "✓\n"), stderr: Buffer.from("err\n"), all: chunks(all) })).toBe("written");

    expect(JSON.stringify(await store.get(ID))).toBe(JSON.stringify(record));
    expect(await text(await store.log(ID, "stdout"))).toBe("out ✓\n");
    expect(await text(await store.log(ID, "stderr"))).toBe("err\n");
    expect(await text(await store.log(ID, "all"))).toBe(all);
    // Offsets count bytes, so one may fall inside a character.
    expect(Buffer.from(await text(await store.log(ID, "stdout", 4)), "utf8")).toEqual(Buffer.from("✓\n"));
    expect(await text(await store.log(ID, "all", 1000))).toBe("");

    const entry = join(dir, "archive", "builds", encodeURIComponent(ID));
    expect(readdirSync(entry).sort()).toEqual(["all.gz", "build.json", "stderr.gz", "stdout.gz"]);
    expect(gunzipSync(readFileSync(join(entry, "stdout.gz"))).toString()).toBe("out ✓\n");
    // Nothing is left behind in the temporary directory.
    expect(readdirSync(join(dir, "archive", "tmp"))).toEqual([]);
    expect(await store.lookup(ID)).toMatchObject({
      id: ID,
      repo: "acme/widgets",
      ref: record.ref,
      createdAt: record.createdAt,
      state: "failure",
    });
  });

  it("compresses: a repetitive 4 MiB log takes a small fraction of that on disk", async () => {
    const dir = tempDir();
    const store = createArchiveStore({ dir });
    const line = "compiling module 42 of 9000 ... ok\n";
    const big = line.repeat(Math.ceil((4 << 20) / line.length));
    await store.put(build(), { stdout: Buffer.from(big), stderr: Buffer.alloc(0), all: Buffer.from(big) });
    const size = readFileSync(join(dir, "builds", encodeURIComponent(ID), "stdout.gz")).length;
    expect(size).toBeLessThan(big.length / 20);
    expect(await text(await store.log(ID, "stdout"))).toBe(big);
  });

  it("leaves a finished entry's bytes alone when a second writer archives the same build", async () => {
    const dir = tempDir();
    const store = createArchiveStore({ dir });
    const logs = () => ({ stdout: chunks("same\n"), stderr: chunks(""), all: chunks("same\n") });
    expect(await store.put(build(), logs())).toBe("written");
    const entry = join(dir, "builds", encodeURIComponent(ID));
    const before = readdirSync(entry).map((f) => readFileSync(join(entry, f)));
    // A second store on the same directory (a second replica, or a restart) writes the same build.
    const other = createArchiveStore({ dir });
    expect(await other.put(build(), logs())).toBe("exists");
    expect(readdirSync(entry).map((f) => readFileSync(join(entry, f)))).toEqual(before);
    const both = await Promise.all([
      store.put(build("builder/dispatch-1700000001-00000000"), logs()),
      other.put(build("builder/dispatch-1700000001-00000000"), logs()),
    ]);
    expect(both.sort()).toEqual(["exists", "written"]);
    expect(readdirSync(join(dir, "tmp"))).toEqual([]);
    // One index line per build, whoever wrote it.
    const lines = readFileSync(join(dir, "records.jsonl"), "utf8").trim().split("\n");
    expect(lines.map((l) => (JSON.parse(l) as { id: string }).id).sort()).toEqual([ID, "builder/dispatch-1700000001-00000000"]);
  });

  it("never shows half an entry: a write that fails midway leaves nothing, and the build can be archived again", async () => {
    const dir = tempDir();
    const store = createArchiveStore({ dir });
    async function* failing(): AsyncIterable<Uint8Array> {
      yield Buffer.from("partial");
      throw new Error("log read failed");
    }
    await expect(store.put(build(), { stdout: Buffer.from("x"), stderr: failing(), all: Buffer.from("x") })).rejects.toThrow(
      "log read failed",
    );
    expect(await store.has(ID)).toBe(false);
    expect(await store.get(ID)).toBeUndefined();
    expect(readdirSync(join(dir, "tmp"))).toEqual([]);
    expect(await store.put(build(), { stdout: Buffer.from("x"), stderr: Buffer.from("y"), all: Buffer.from("xy") })).toBe("written");
    expect(await text(await store.log(ID, "stderr"))).toBe("y");
  });

  it("indexes an entry a crash kept out of the index, and skips a torn index line", async () => {
    const dir = tempDir();
    await createArchiveStore({ dir }).put(build(), { stdout: Buffer.from(""), stderr: Buffer.from(""), all: Buffer.from("") });
    // As if the process died after the rename, during the index append.
    writeFileSync(join(dir, "records.jsonl"), '{"id":"builder/disp');
    const reopened = createArchiveStore({ dir });
    expect(await reopened.lookup(ID)).toMatchObject({ id: ID, state: "failure" });
    expect(await reopened.lookup("builder/dispatch-1700000009-ffffffff")).toBeUndefined();
  });

  it("sees what another store sharing the directory archived or pruned (replicas on a shared filesystem)", async () => {
    const dir = join(tempDir(), "archive");
    const a = createArchiveStore({ dir });
    const b = createArchiveStore({ dir });
    const logs = () => ({ stdout: Buffer.from("o\n"), stderr: Buffer.from("e\n"), all: Buffer.from("o\ne\n") });
    await a.put(build(ID), logs());
    await b.ready();
    expect([...b.newest()].map((e) => e.id)).toEqual([ID]);
    // B has its index in memory now; A's later writes reach it through the index file alone.
    const second = "builder/dispatch-1700000001-2b3c4d5e";
    await a.put(build(second, { createdAt: "2026-12-07T03:00:01.000Z" }), logs());
    expect(await b.lookup(second)).toMatchObject({ id: second });
    await b.ready();
    expect([...b.newest()].map((e) => e.id)).toEqual([second, ID]);
    // A's retention rewrites the index (a new file): B reloads it whole.
    await a.remove([ID]);
    await b.ready();
    expect([...b.newest()].map((e) => e.id)).toEqual([second]);
    expect(await b.lookup(ID)).toBeUndefined();
  });

  it("answers nothing for a build another store pruned, though this store's index still holds it", async () => {
    const dir = join(tempDir(), "archive");
    const a = createArchiveStore({ dir });
    const b = createArchiveStore({ dir });
    await a.put(build(ID), { stdout: Buffer.from("o\n"), stderr: Buffer.from(""), all: Buffer.from("o\n") });
    await b.ready();
    expect(await b.get(ID)).toEqual(build(ID));
    await a.remove([ID]);
    // B has not refreshed: its index still lists the build, but the entry is gone, and so is the record.
    expect([...b.newest()].map((e) => e.id)).toEqual([ID]);
    expect(await b.get(ID)).toBeUndefined();
  });

  it("keeps in its index what a failed prune left on disk, for the next prune to try again", async () => {
    const dir = tempDir();
    const store = createArchiveStore({ dir });
    const ids = ["builder/dispatch-1700000001-00000001", "builder/dispatch-1700000002-00000002"];
    for (const id of ids) await store.put(build(id), { stdout: Buffer.from(""), stderr: Buffer.from(""), all: Buffer.from("") });
    // Where removals are moved before deletion, a file: the prune cannot move anything.
    rmSync(join(dir, "tmp"), { recursive: true, force: true });
    writeFileSync(join(dir, "tmp"), "");
    await expect(store.remove(ids)).rejects.toMatchObject({ code: expect.stringMatching(/^(EEXIST|ENOTDIR)$/) });
    expect(store.all().map((e) => e.id)).toEqual([...ids].reverse());
    expect(await store.get(ids[0] as string)).toEqual(build(ids[0]));
    rmSync(join(dir, "tmp"));
    await store.remove(ids);
    expect(store.all()).toEqual([]);
    expect(readdirSync(join(dir, "builds"))).toEqual([]);
  });

  it("builds one whole index when stores sharing an old archive start together (a fleet upgrading at once)", async () => {
    const dir = tempDir();
    // 300 entries as an earlier version left them (records, no records.jsonl), each with a 2 KB reason: 0.6 MB
    // of index, more than one write of an append, so appends from several stores at once tore lines (and each
    // added every line).
    const expected: string[] = [];
    for (let n = 0; n < 300; n++) {
      const b = build(`builder/dispatch-${1700000000 + n}-${n.toString(16).padStart(8, "0")}`, {
        createdAt: new Date(Date.parse("2026-12-07T03:00:00Z") + n * 1000).toISOString(),
        reason: `build ${n} failed: ${"x".repeat(2000)}`,
      });
      const entry = join(dir, "builds", encodeURIComponent(b.id));
      mkdirSync(entry, { recursive: true });
      const line = JSON.stringify(b);
      writeFileSync(join(entry, "build.json"), `${line}\n`);
      expected.push(line);
    }
    writeFileSync(join(dir, "index.jsonl"), "");
    const stores = [0, 1, 2].map(() => createArchiveStore({ dir }));
    await Promise.all(stores.map((s) => s.ready()));
    const lines = readFileSync(join(dir, "records.jsonl"), "utf8").split("\n");
    expect(lines.pop()).toBe("");
    expect(lines.sort()).toEqual(expected.sort());
    const again = createArchiveStore({ dir });
    await again.ready();
    expect(again.all()).toHaveLength(300);
    expect(await again.get(expected[7] ? (JSON.parse(expected[7]) as Build).id : "")).toEqual(JSON.parse(expected[7] as string));
  });

  it("fails with the file system's error code when the directory cannot be written", async () => {
    const dir = tempDir();
    writeFileSync(join(dir, "file"), "");
    const store = createArchiveStore({ dir: join(dir, "file", "archive") });
    await expect(store.put(build(), { stdout: Buffer.from(""), stderr: Buffer.from(""), all: Buffer.from("") })).rejects.toMatchObject({
      code: "ENOTDIR",
    });
  });
});
