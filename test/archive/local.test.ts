import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { Registry } from "prom-client";
import { afterAll, describe, expect, it } from "vitest";
import { createArchiver } from "../../src/archive/archiver.js";
import { createArchivedReader } from "../../src/archive/reader.js";
import { createArchiveStore } from "../../src/archive/store.js";
import type { Build, BuildReader, LogType } from "../../src/builds/backend.js";
import { createLocalBackend } from "../../src/local/backend.js";
import { captureLogs } from "../helpers/log-capture.js";

const META = {
  REPO_URL: "file:///srv/acme/widgets.git",
  COMMIT: "4c1d7e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d",
  BRANCH: "main",
  FLAVOR: "default",
  REPO: "acme/widgets",
};

async function collect(iterable: AsyncIterable<Uint8Array>): Promise<string> {
  const parts: Buffer[] = [];
  for await (const chunk of iterable) parts.push(Buffer.from(chunk));
  return Buffer.concat(parts).toString("base64");
}

async function snapshot(reader: BuildReader, id: string): Promise<Record<string, string>> {
  const out: Record<string, string> = { build: JSON.stringify(await reader.getBuild(id)) };
  const signal = new AbortController().signal;
  for (const type of ["stdout", "stderr", "all"] as LogType[]) {
    for (const offset of [0, 3]) {
      for (const follow of [false, true])
        out[`${type}/${offset}/${follow}`] = await collect(reader.logs(id, { type, offset, follow, signal }));
    }
  }
  return out;
}

describe("archive in single-machine mode", () => {
  const dir = mkdtempSync(join(tmpdir(), "petrel-archive-local-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("serves a build its retention removed from the archive, the same as it served it before", async () => {
    const executor = join(dir, "executor.sh");
    writeFileSync(executor, "#!/bin/sh\necho 'built ✓'\necho 'careful' >&2\n");
    chmodSync(executor, 0o755);
    const store = createArchiveStore({ dir: join(dir, "data", "archive") });
    let archive: (b: Build) => void = () => undefined;
    const backend = await createLocalBackend({
      dataDir: join(dir, "data"),
      concurrency: 1,
      keep: 1,
      log: captureLogs().log,
      executor: [executor],
      killTimeoutMs: 2000,
      env: { PATH: process.env.PATH, HOME: process.env.HOME },
      onTransition: (b) => archive(b),
    });
    try {
      const archiver = createArchiver({ store, reader: backend, log: captureLogs().log, metrics: new Registry(), settleMs: 0 });
      archive = (b) => archiver.onBuild(b);
      const reader = createArchivedReader(backend, store, captureLogs().log);

      const { id } = await backend.dispatch({ builder: "builder", meta: META, idempotencyToken: "first" });
      for (let i = 0; i < 400 && !(await store.has(id)); i++) await sleep(25);
      expect(await store.has(id)).toBe(true);
      const before = await snapshot(reader, id);
      expect(JSON.parse(before.build ?? "{}")).toMatchObject({ state: "success" });
      expect(Buffer.from(before["stdout/0/false"] ?? "", "base64").toString()).toBe("built ✓\n");

      // A second build makes retention (keep 1) remove the first from the local runner.
      const second = await backend.dispatch({ builder: "builder", meta: META, idempotencyToken: "second" });
      for (let i = 0; i < 400 && (await backend.getBuild(id)) !== undefined; i++) await sleep(25);
      expect(await backend.getBuild(id)).toBeUndefined();
      expect(await snapshot(reader, id)).toEqual(before);
      // The listing has both: the live second build and the first, from the archive alone now.
      expect((await backend.listBuilds({ limit: 10 })).builds.map((b) => b.id)).toEqual([second.id]);
      const listed = await reader.listBuilds({ limit: 1 });
      expect(listed.builds.map((b) => b.id)).toEqual([second.id]);
      expect(listed.next).toBeDefined();
      const rest = await reader.listBuilds({ limit: 1, ...(listed.next === undefined ? {} : { after: listed.next }) });
      expect(rest.builds.map((b) => b.id)).toEqual([id]);
      expect(rest.next).toBeUndefined();
      for (let i = 0; i < 400 && !(await store.has(second.id)); i++) await sleep(25);
      await archiver.stop();
    } finally {
      await backend.close();
    }
  });
});
