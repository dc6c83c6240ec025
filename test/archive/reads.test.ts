import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { gunzipSync } from "node:zlib";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildsCommand, logsCommand } from "../../src/cli/builds.js";
import { readConfig } from "../../src/config.js";
import { sign } from "../../src/gitea/signature.js";
import type { RunningPetrel } from "../../src/main.js";
import { startPetrel } from "../../src/main.js";
import { MERGED_LOG_PATH } from "../../src/nomad/logs.js";
import { captureIo } from "../cli/harness.js";
import type { ConsulFake } from "../fakes/consul.js";
import { startConsulFake } from "../fakes/consul.js";
import type { GiteaFake } from "../fakes/gitea.js";
import { startGiteaFake } from "../fakes/gitea.js";
import type { NomadFake } from "../fakes/nomad.js";
import { startNomadFake } from "../fakes/nomad.js";
import { fixtureBytes } from "../gitea/fixtures.js";
import { clusterEnv, GITEA_TOKEN, HOOK_SECRET, seedFakes } from "../helpers/cluster.js";
import { captureLogs } from "../helpers/log-capture.js";
import { eventually } from "../helpers/wait.js";

const PUSH = fixtureBytes("push.json");
const COMMIT = "4c1d7e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d";
const ADMIN = { authorization: "Bearer admin-token-0123456789abcdef" };

/** What a client sees of one read: status, content type and the exact body bytes. */
interface Answer {
  status: number;
  type: string | null;
  body: string;
}

async function read(url: string): Promise<Answer> {
  // `#sse`: the same path, as a browser's EventSource asks for it.
  const sse = url.endsWith("#sse");
  const res = await fetch(url.replace(/#sse$/, ""), { headers: sse ? { ...ADMIN, accept: "text/event-stream" } : ADMIN });
  const body = Buffer.from(await res.arrayBuffer()).toString("base64");
  return { status: res.status, type: res.headers.get("content-type"), body };
}

function reads(id: string): string[] {
  const b = `/builds/${encodeURIComponent(id)}`;
  const logs = ["stdout", "stderr", "all"].flatMap((type) => [
    `${b}/logs?type=${type}`,
    `${b}/logs?type=${type}&follow=false`,
    `${b}/logs?type=${type}&offset=7`,
    `${b}/logs?type=${type}&offset=7&follow=false`,
    `${b}/logs?type=${type}&offset=100000`,
  ]);
  return [
    b,
    `${b}/logs`,
    `${b}/logs?type=all#sse`,
    `${b}/logs?type=stdout&offset=7#sse`,
    ...logs,
    `/build?job=${encodeURIComponent(id)}&log=stdout`,
    `/build?job=${encodeURIComponent(id)}&log=stderr`,
  ];
}

/** What the CLI prints for the build: `petrel builds --json` and `petrel logs` of each type, exit codes included. */
async function cliReads(base: string, id: string): Promise<Record<string, { code: number; out: string }>> {
  const env = { PETREL_URL: base, PETREL_ADMIN_TOKEN: ADMIN.authorization.slice("Bearer ".length) };
  const out: Record<string, { code: number; out: string }> = {};
  const runs: [string, (io: ReturnType<typeof captureIo>["io"]) => Promise<number>][] = [
    ["builds --json", (io) => buildsCommand(["--json", "-q", "--limit", "50"], env, io)],
    ["logs", (io) => logsCommand([id], env, io)],
    ["logs --stdout", (io) => logsCommand(["--stdout", id], env, io)],
    ["logs --all -f", (io) => logsCommand(["--all", "-f", id], env, io)],
  ];
  for (const [name, run] of runs) {
    const c = captureIo();
    const code = await run(c.io);
    out[name] = { code, out: c.stdout() };
  }
  return out;
}

async function readAll(base: string, id: string): Promise<Record<string, Answer>> {
  const out: Record<string, Answer> = {};
  for (const path of reads(id)) out[path] = await read(`${base}${path}`);
  // The listing, newest first, with this build in it: the same whether it comes from Nomad or the archive.
  for (const path of [
    "/builds?limit=50",
    "/builds?limit=1",
    "/builds?state=failure&limit=50",
    "/builds?repo=acme/widgets&ref=main&limit=50",
  ]) {
    out[path] = await read(`${base}${path}`);
  }
  return out;
}

// Each test waits for builds to be archived in the background (a settle delay each): room for a loaded machine.
describe("archived builds read the same after Nomad garbage-collects them (cluster mode, Nomad fake)", { timeout: 60_000 }, () => {
  let consul: ConsulFake;
  let nomad: NomadFake;
  let gitea: GiteaFake;
  let petrel: RunningPetrel;
  let dir: string;
  let env: Record<string, string>;
  const logs = captureLogs("info");

  const start = async () => {
    // The fake's logs are whole when a task ends: no settle needed for its last bytes.
    petrel = await startPetrel(readConfig(env), logs.log, env, { archiveSettleMs: 50 });
  };
  const entry = (id: string) => join(dir, "builds", encodeURIComponent(id), "build.json");
  const archived = async (id: string) => {
    // Archiving runs after a settle delay and in the background; a loaded machine can take a while.
    for (let i = 0; i < 800 && !existsSync(entry(id)); i++) await sleep(25);
    expect(existsSync(entry(id))).toBe(true);
  };
  const push = async (sha: string): Promise<string> => {
    const body = Buffer.from(PUSH.toString("utf8").replaceAll(COMMIT, sha));
    const res = await fetch(`${petrel.url}/hook`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-gitea-event": "push", "x-gitea-signature": sign(HOOK_SECRET, body) },
      body: new Uint8Array(body),
    });
    expect(res.status).toBe(201);
    return ((await res.json()) as { build: string }).build;
  };
  const run = (id: string, exitCode: number) => {
    nomad.placeAlloc(id, { node: "worker-3" });
    nomad.startTask(id);
    nomad.writeLog(id, "stdout", "compiling ✓\nlinking\n");
    nomad.writeAllocFile(id, MERGED_LOG_PATH, "--- step build\ncompiling ✓\nwarning: unused\nlinking\n");
    nomad.writeLog(id, "stderr", "warning: unused\n");
    nomad.finishTask(id, exitCode);
  };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "petrel-archive-reads-"));
    consul = await startConsulFake();
    nomad = await startNomadFake();
    gitea = await startGiteaFake({ token: GITEA_TOKEN });
    seedFakes(consul, nomad, gitea.url);
    env = clusterEnv(
      { consul, nomad },
      {
        PETREL_ARCHIVE_DIR: dir,
      },
    );
    await start();
  });

  afterAll(async () => {
    await petrel.stop();
    await Promise.all([consul.close(), nomad.close(), gitea.close()]);
    rmSync(dir, { recursive: true, force: true });
  });

  it("serves every read byte for byte the same before GC, after GC, and after a restart", async () => {
    const id = await push("a".repeat(40));
    run(id, 3);
    await archived(id);
    const live = await readAll(petrel.url, id);
    // The captured answers are the build's: a failure with its logs, not errors.
    expect(live[`/builds/${encodeURIComponent(id)}`]?.status).toBe(200);
    const shown = JSON.parse(Buffer.from(live[`/builds/${encodeURIComponent(id)}`]?.body ?? "", "base64").toString()) as {
      state: string;
      exitCode: number;
    };
    expect(shown).toMatchObject({ state: "failure", exitCode: 3 });
    const text = (path: string) => Buffer.from(live[path]?.body ?? "", "base64").toString();
    expect(text(`/builds/${encodeURIComponent(id)}/logs?type=all`)).toBe("--- step build\ncompiling ✓\nwarning: unused\nlinking\n");
    expect(text(`/builds/${encodeURIComponent(id)}/logs?type=stdout&offset=7`)).toBe(
      Buffer.from("compiling ✓\nlinking\n").subarray(7).toString(),
    );
    expect(text(`/build?job=${encodeURIComponent(id)}&log=stderr`)).toBe("warning: unused\n");
    for (const answer of Object.values(live)) expect(answer.status).toBe(200);
    const sse = text(`/builds/${encodeURIComponent(id)}/logs?type=all#sse`);
    expect(sse).toMatch(/^event: state\n/);
    expect(sse).toContain("event: log\ndata: --- step build\ndata: compiling ✓\n");
    expect(sse).toMatch(/event: end\n/);
    const listed = JSON.parse(text("/builds?limit=50")) as { builds: { id: string }[] };
    expect(listed.builds.map((b) => b.id)).toEqual([id]);
    const cli = await cliReads(petrel.url, id);
    // `logs -f` exits with the build's own exit code, archived or not.
    expect(cli["logs --all -f"]).toEqual({ code: 3, out: "--- step build\ncompiling ✓\nwarning: unused\nlinking\n" });
    expect(cli["logs --stdout"]?.out).toBe("compiling ✓\nlinking\n");
    expect(JSON.parse(cli["builds --json"]?.out ?? "{}")).toMatchObject({ builds: [{ id, state: "failure" }] });

    nomad.gcJob(id);
    const gone = await fetch(`${nomad.url}/v1/job/${encodeURIComponent(id)}`);
    expect(gone.status).toBe(404);
    const nomadRequests = nomad.requests.length;
    expect(await readAll(petrel.url, id)).toEqual(live);
    // An archived build's logs come from the archive alone.
    expect(nomad.requests.slice(nomadRequests).filter((r) => r.path.includes("/client/fs/"))).toEqual([]);
    expect(await cliReads(petrel.url, id)).toEqual(cli);

    await petrel.stop();
    await start();
    expect(await readAll(petrel.url, id)).toEqual(live);
    expect(await cliReads(petrel.url, id)).toEqual(cli);
  });

  it("sends an archived log's stored gzip bytes to a client that takes gzip, identity bytes to the rest", async () => {
    const id = await push("e".repeat(40));
    run(id, 0);
    await archived(id);
    const base = `${petrel.url}/builds/${encodeURIComponent(id)}/logs`;
    const get = async (path: string, acceptEncoding?: string) => {
      const res = await request(`${base}${path}`, {
        headers: { ...ADMIN, ...(acceptEncoding === undefined ? {} : { "accept-encoding": acceptEncoding }) },
      });
      return { status: res.statusCode, headers: res.headers, body: Buffer.from(await res.body.arrayBuffer()) };
    };
    const identity = await get("?type=all");
    expect(identity.status).toBe(200);
    expect(identity.headers["content-encoding"]).toBeUndefined();
    expect(identity.body.toString()).toBe("--- step build\ncompiling ✓\nwarning: unused\nlinking\n");
    expect(identity.headers.vary).toBe("Accept-Encoding");

    nomad.gcJob(id);
    for (const type of ["stdout", "stderr", "all"]) {
      const plain = await get(`?type=${type}`);
      expect(plain.headers["content-encoding"]).toBeUndefined();
      for (const accept of ["gzip", "gzip, deflate, br", "br;q=1.0, gzip;q=0.5", "*", "x-gzip"]) {
        const gz = await get(`?type=${type}`, accept);
        expect(gz.status).toBe(200);
        expect(gz.headers["content-encoding"]).toBe("gzip");
        expect(gz.headers.vary).toBe("Accept-Encoding");
        expect(gz.headers["content-type"]).toBe("text/plain; charset=utf-8");
        // The stored file, byte for byte, and decoded the identity answer byte for byte.
        expect(gz.body.equals(readFileSync(join(dir, "builds", encodeURIComponent(id), `${type}.gz`)))).toBe(true);
        expect(gunzipSync(gz.body).equals(plain.body)).toBe(true);
      }
    }
    const all = (await get("?type=all")).body;
    // Refused or not offered: identity.
    for (const accept of ["identity", "gzip;q=0", "br", "*;q=0", "deflate, *;q=0"]) {
      const res = await get("?type=all", accept);
      expect(res.headers["content-encoding"]).toBeUndefined();
      expect(res.body.equals(all)).toBe(true);
    }
    // A resume from an offset stays identity: the offset counts the log's own bytes.
    const resumed = await get("?type=all&offset=7", "gzip");
    expect(resumed.headers["content-encoding"]).toBeUndefined();
    expect(resumed.headers.vary).toBe("Accept-Encoding");
    expect(resumed.body.equals(all.subarray(7))).toBe(true);
    // The Albatros path too, and a browser's fetch decodes it to the same text.
    const albatros = await request(`${petrel.url}/build?job=${encodeURIComponent(id)}&log=stdout`, {
      headers: { ...ADMIN, "accept-encoding": "gzip" },
    });
    expect(albatros.headers["content-encoding"]).toBe("gzip");
    expect(gunzipSync(Buffer.from(await albatros.body.arrayBuffer())).toString()).toBe("compiling ✓\nlinking\n");
    expect(await (await fetch(`${base}?type=all`, { headers: ADMIN })).text()).toBe(all.toString());
  });

  it("answers HEAD for an archived log as GET would, and leaves no file or follower behind", async () => {
    const id = await push("c".repeat(40));
    run(id, 0);
    await archived(id);
    nomad.gcJob(id);
    const path = `${petrel.url}/builds/${encodeURIComponent(id)}/logs?type=stdout`;
    const open = () => readdirSync("/proc/self/fd").length;
    const before = open();
    for (let i = 0; i < 40; i++) {
      for (const encoding of ["gzip", "identity"]) {
        const res = await request(path, { method: "HEAD", headers: { ...ADMIN, "accept-encoding": encoding } });
        await res.body.dump();
        expect(res.statusCode).toBe(200);
        expect(res.headers["content-encoding"]).toBe(encoding === "gzip" ? "gzip" : undefined);
        expect(res.headers["content-type"]).toBe("text/plain; charset=utf-8");
      }
    }
    // 80 HEADs: each opened the archived log and closed it again (a few descriptors come and go meanwhile).
    await eventually(() => open() <= before + 4, 5000, "the logs' files closed");
    const metrics = await (await fetch(`${petrel.url}/metrics`)).text();
    expect(metrics).toMatch(/^petrel_log_followers 0$/m);
    // The GET after them is whole.
    expect(await (await fetch(path, { headers: ADMIN })).text()).toBe("compiling ✓\nlinking\n");
  });

  it("answers an archived build's record from the archive, without asking Nomad", async () => {
    const id = await push("f".repeat(40));
    run(id, 0);
    await archived(id);
    const path = `/builds/${encodeURIComponent(id)}`;
    const before = nomad.requests.length;
    const res = await fetch(`${petrel.url}${path}`, { headers: ADMIN });
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ id, state: "success" });
    expect(nomad.requests.slice(before).filter((r) => r.path.includes(encodeURIComponent(id)) || r.path.includes(id))).toEqual([]);
  });

  it("reads a live build from Nomad when its archive entry cannot be read (a damaged archive stops no live read)", async () => {
    const id = await push("e".repeat(40));
    nomad.placeAlloc(id, { node: "worker-3" });
    nomad.startTask(id);
    nomad.writeLog(id, "stdout", "still running\n");
    // Entries that exist but cannot be read as files: the record and the log are directories.
    const damaged = join(dir, "builds", encodeURIComponent(id));
    mkdirSync(join(damaged, "build.json"), { recursive: true });
    mkdirSync(join(damaged, "stdout.gz"), { recursive: true });
    const logged = logs.text().length;
    try {
      const path = `/builds/${encodeURIComponent(id)}`;
      for (let i = 0; i < 2; i++) {
        const record = await fetch(`${petrel.url}${path}`, { headers: ADMIN });
        expect(record.status).toBe(200);
        expect(await record.json()).toMatchObject({ id, state: "running" });
      }
      const log = await fetch(`${petrel.url}${path}/logs?type=stdout&follow=false`, { headers: { ...ADMIN, "accept-encoding": "gzip" } });
      expect(log.status).toBe(200);
      expect(await log.text()).toBe("still running\n");
      // Said in the log, once for the cause however many reads meet it (an earlier test may have said it).
      const said = logs.text().slice(logged);
      expect((said.match(/"cause":"EISDIR"/g) ?? []).length).toBeLessThanOrEqual(1);
      expect(logs.text()).toMatch(/"cause":"EISDIR".*an archive entry cannot be read; the backend answers for it/);
    } finally {
      rmSync(damaged, { recursive: true, force: true });
    }
  });

  it("lists and serves an archived record from the index when its file can no longer be read", async () => {
    const id = await push("7".repeat(40));
    run(id, 0);
    await archived(id);
    nomad.gcJob(id);
    const path = `/builds/${encodeURIComponent(id)}`;
    const before = await (await fetch(`${petrel.url}${path}`, { headers: ADMIN })).text();
    const listing = async () => {
      const res = await fetch(`${petrel.url}/builds?limit=50`, { headers: ADMIN });
      expect(res.status).toBe(200);
      return ((await res.json()) as { builds: { id: string }[] }).builds.find((b) => b.id === id);
    };
    const listedBefore = await listing();
    expect(listedBefore).toMatchObject({ id, state: "success" });
    const record = entry(id);
    const saved = readFileSync(record);
    rmSync(record);
    mkdirSync(record);
    try {
      expect(await listing()).toEqual(listedBefore);
      expect(await (await fetch(`${petrel.url}${path}`, { headers: ADMIN })).text()).toBe(before);
    } finally {
      rmSync(record, { recursive: true, force: true });
      writeFileSync(record, saved);
    }
  });

  it("serves an archived build while Nomad is down, and says Nomad is unavailable for one it never archived", async () => {
    const id = await push("d".repeat(40));
    run(id, 0);
    await archived(id);
    const path = `/builds/${encodeURIComponent(id)}`;
    const before = await (await fetch(`${petrel.url}${path}`, { headers: ADMIN })).text();
    const log = await (await fetch(`${petrel.url}${path}/logs?type=stdout`, { headers: ADMIN })).text();
    nomad.setDown(true);
    try {
      const record = await fetch(`${petrel.url}${path}`, { headers: ADMIN });
      expect(record.status).toBe(200);
      expect(await record.text()).toBe(before);
      expect(await (await fetch(`${petrel.url}${path}/logs?type=stdout`, { headers: ADMIN })).text()).toBe(log);
      const unknown = await fetch(`${petrel.url}/builds/${encodeURIComponent("builder/dispatch-1700000000-0badf00d")}`, { headers: ADMIN });
      expect(unknown.status).toBe(503);
      expect(((await unknown.json()) as { error: { code: string } }).error.code).toBe("nomad_unavailable");
    } finally {
      nomad.setDown(false);
    }
  }, 30_000);

  it("archives at start-up a build that ended while petrel was down", async () => {
    const id = await push("b".repeat(40));
    nomad.placeAlloc(id, { node: "worker-3" });
    nomad.startTask(id);
    await petrel.stop();
    nomad.writeLog(id, "stdout", "done while petrel was away\n");
    nomad.writeAllocFile(id, MERGED_LOG_PATH, "done while petrel was away\n");
    nomad.finishTask(id, 0);
    await start();
    await archived(id);
    const live = await readAll(petrel.url, id);
    expect(JSON.parse(Buffer.from(live[`/builds/${encodeURIComponent(id)}`]?.body ?? "", "base64").toString())).toMatchObject({
      state: "success",
    });
    nomad.gcJob(id);
    expect(await readAll(petrel.url, id)).toEqual(live);
  });

  it("lists GC'd, archived-and-live and running builds together across pages, each once, newest first", async () => {
    const ids: string[] = [];
    for (const [i, c] of ["1", "2", "3", "4", "5"].entries()) {
      const id = await push(c.repeat(40));
      ids.push(id);
      if (i < 4) {
        run(id, i % 2);
        await archived(id);
      }
    }
    // Builds 0 and 1 are GC'd (archive only), 2 and 3 archived and still in Nomad, 4 still queued.
    nomad.gcJob(ids[0] as string);
    nomad.gcJob(ids[1] as string);
    const seen: { id: string; state: string }[] = [];
    let cursor: string | undefined;
    let pages = 0;
    do {
      const res = await fetch(`${petrel.url}/builds?limit=2${cursor === undefined ? "" : `&cursor=${cursor}`}`, { headers: ADMIN });
      expect(res.status).toBe(200);
      const page = (await res.json()) as { builds: { id: string; state: string }[]; cursor?: string; hidden: number };
      expect(page.builds.length).toBeLessThanOrEqual(2);
      seen.push(...page.builds.map((b) => ({ id: b.id, state: b.state })));
      cursor = page.cursor;
      pages += 1;
    } while (cursor !== undefined && pages < 50);
    const mine = seen.filter((b) => ids.includes(b.id));
    expect(mine.map((b) => b.id)).toEqual([...ids].reverse());
    expect(new Set(seen.map((b) => b.id)).size).toBe(seen.length);
    expect(mine.map((b) => b.state)).toEqual(["queued", "failure", "success", "failure", "success"]);
    const failures = (await (await fetch(`${petrel.url}/builds?state=failure&limit=50`, { headers: ADMIN })).json()) as {
      builds: { id: string }[];
    };
    expect(failures.builds.map((b) => b.id).filter((id) => ids.includes(id))).toEqual([ids[3], ids[1]]);
  });

  it("answers 410 for a petrel build neither Nomad nor the archive knows, on every read", async () => {
    const id = "builder/dispatch-1700000000-0badf00d";
    for (const path of [`/builds/${encodeURIComponent(id)}`, `/builds/${encodeURIComponent(id)}/logs`, `/build?job=${id}&log=stdout`]) {
      const res = await fetch(`${petrel.url}${path}`, { headers: ADMIN });
      expect(res.status).toBe(410);
      const body = (await res.json()) as { error: { code: string; message: string } };
      expect(body.error.code).toBe("gone");
      expect(body.error.message).toMatch(/garbage-collected it before petrel could archive it/);
    }
    // Not a petrel build at all: still 404, with no archive or Nomad lookup.
    expect((await fetch(`${petrel.url}/builds/payroll`, { headers: ADMIN })).status).toBe(404);
  });

  it("prunes by PETREL_ARCHIVE_KEEP at start: a pruned build Nomad forgot answers 410, the kept one is served", async () => {
    const older = await push("6".repeat(40));
    run(older, 0);
    await archived(older);
    const newer = await push("7".repeat(40));
    run(newer, 1);
    await archived(newer);
    nomad.gcJob(older);
    nomad.gcJob(newer);
    const before = await read(`${petrel.url}/builds/${encodeURIComponent(newer)}`);
    expect((await read(`${petrel.url}/builds/${encodeURIComponent(older)}`)).status).toBe(200);
    await petrel.stop();
    env.PETREL_ARCHIVE_KEEP = "1";
    try {
      await start();
      for (let i = 0; i < 200 && existsSync(entry(older)); i++) await sleep(25);
      expect(existsSync(entry(older))).toBe(false);
      expect(existsSync(entry(newer))).toBe(true);
      expect((await fetch(`${petrel.url}/builds/${encodeURIComponent(older)}`, { headers: ADMIN })).status).toBe(410);
      expect(await read(`${petrel.url}/builds/${encodeURIComponent(newer)}`)).toEqual(before);
    } finally {
      delete env.PETREL_ARCHIVE_KEEP;
    }
  });
});

describe("cluster mode without PETREL_ARCHIVE_DIR", () => {
  it("warns once at start that links die at Nomad GC, and answers 404 for an unknown build as before", async () => {
    const consul = await startConsulFake();
    const nomad = await startNomadFake();
    const gitea = await startGiteaFake({ token: GITEA_TOKEN });
    seedFakes(consul, nomad, gitea.url);
    const env = {
      NOMAD_ADDR: nomad.url,
      CONSUL_HTTP_ADDR: consul.url,
      PETREL_LISTEN: "127.0.0.1:0",
      PETREL_ADMIN_TOKEN: "admin-token-0123456789abcdef",
    };
    const logs = captureLogs("info");
    const petrel = await startPetrel(readConfig(env), logs.log, env);
    try {
      expect(logs.lines.filter((l) => l.includes("PETREL_ARCHIVE_DIR is unset"))).toHaveLength(1);
      expect(logs.text()).toMatch(/"level":40[^\n]*are gone once Nomad garbage-collects them/);
      const res = await fetch(`${petrel.url}/builds/${encodeURIComponent("builder/dispatch-1700000000-0badf00d")}`, { headers: ADMIN });
      expect(res.status).toBe(404);
    } finally {
      await petrel.stop();
      await Promise.all([consul.close(), nomad.close(), gitea.close()]);
    }
  });
});
