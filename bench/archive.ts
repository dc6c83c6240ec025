/**
 * Archive benchmark (issue 11, "Performance"), on real HTTP over 127.0.0.1 against petrel as `startPetrel`
 * runs it (cluster mode on the Consul, Nomad and Gitea fakes) with a real archive directory:
 *
 * 1. A 50 MiB build log served from the archive after Nomad garbage-collected the build, beside a plain
 *    node:http server streaming the same bytes uncompressed from a file (fs.createReadStream). The client is
 *    curl, in a process of its own; target: petrel >= 0.9x the reference's throughput, as the median ratio of
 *    back-to-back pairs of reads (best-of figures are printed too).
 * 2. `GET /builds?limit=50` over 20,000 archived builds (none left in Nomad): p99 < 20 ms, and <= 2x the same
 *    page from a warm live listing: a single-machine petrel with the same 20,000 builds in memory (and, as
 *    single-machine mode always has, in its archive), whose own p99 must be under 20 ms too.
 * 3. The webhook benchmark's load (bench/hook.ts: signed pushes, 16 connections, fakes in another process) alone
 *    and while 1,000 finished builds are archived in a burst in the same process (read back from Nomad, logs
 *    compressed, written): the throughput during the burst must stay >= 95 % of the throughput alone, as the
 *    median over rounds of each burst's ratio to the phase alone beside it. Each phase gets fresh fakes and a
 *    fresh app, and alone/burst phases alternate (see `burst`).
 *    `BENCH_ARCHIVE_ONLY=burst` runs this part alone, `BENCH_ARCHIVE_ONLY=reads` the other two.
 */
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { once } from "node:events";
import { createReadStream, existsSync, linkSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import type { Server } from "node:http";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import { serve } from "@hono/node-server";
import { Registry } from "prom-client";
import { Agent, Pool, request } from "undici";
import { createArchiver } from "../src/archive/archiver.js";
import { createArchiveStore } from "../src/archive/store.js";
import type { Build } from "../src/builds/backend.js";
import { readConfig } from "../src/config.js";
import { sign } from "../src/gitea/signature.js";
import { createLogger } from "../src/log.js";
import { startPetrel } from "../src/main.js";
import { createNomadBuildReader } from "../src/nomad/builds.js";
import { createNomadClient } from "../src/nomad/client.js";
import { MERGED_LOG_PATH } from "../src/nomad/logs.js";
import { startConsulFake } from "../test/fakes/consul.js";
import { startGiteaFake } from "../test/fakes/gitea.js";
import { startNomadFake } from "../test/fakes/nomad.js";
import { createClusterApp, GITEA_TOKEN, HOOK_SECRET, seedFakes } from "../test/helpers/cluster.js";
import { deliveries, load, startFakes } from "./hook.js";
import { percentile, verdict } from "./stats.js";

const LOG_MIB = Number(process.env.BENCH_ARCHIVE_LOG_MIB ?? 50);
const BUILDS = Number(process.env.BENCH_ARCHIVE_BUILDS ?? 20_000);
const READS = Number(process.env.BENCH_ARCHIVE_READS ?? 21);
const PAGES = Number(process.env.BENCH_ARCHIVE_PAGES ?? 500);
const BURST = Number(process.env.BENCH_ARCHIVE_BURST ?? 1000);
const BURST_KIB = Number(process.env.BENCH_ARCHIVE_BURST_KIB ?? 32);
const BURST_ROUNDS = Number(process.env.BENCH_ARCHIVE_BURST_ROUNDS ?? 5);
/** Webhooks sent in each phase of the burst part (alone, or while a burst is archived). */
const BURST_LOAD = Number(process.env.BENCH_ARCHIVE_BURST_LOAD ?? 1000);
const WARMUP_HOOKS = 300;
const ADMIN_TOKEN = "admin-token-0123456789abcdef";
const AUTH = { authorization: `Bearer ${ADMIN_TOKEN}` };
const PUSH = readFileSync(fileURLToPath(new URL("../test/fixtures/gitea/push.json", import.meta.url)), "utf8");
const COMMIT = "4c1d7e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d";

/** Build output as a CI log looks: compiler and test lines of varying length, some coloured; deterministic. */
function buildOutput(mib: number): Buffer {
  let seed = 0x2545f491;
  const rand = (n: number) => {
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    return (seed >>> 0) % n;
  };
  const files = ["src/app.ts", "src/nomad/builds.ts", "lib/parser/expr.rs", "cmd/server/main.go", "pkg/http/router.go"];
  const words = ["compiling", "linking", "resolving", "downloading", "checking", "optimizing", "bundling", "generating"];
  const parts: Buffer[] = [];
  let size = 0;
  const target = mib * 2 ** 20;
  let n = 0;
  while (size < target) {
    n++;
    const file = files[rand(files.length)] as string;
    const kind = rand(20);
    let line: string;
    if (kind === 0) line = `\u001b[33mwarning\u001b[0m: unused variable \`x${n}\` at ${file}:${rand(900)}:${rand(80)}\n`;
    else if (kind < 6) line = `\u001b[32m  ✓\u001b[0m ${file.replace(/\.\w+$/, "")} > handles case ${n} (${rand(300)} ms)\n`;
    else if (kind === 6) line = `\u001b[1m\u001b[34m==>\u001b[0m\u001b[1m step ${n}: npm run build\u001b[0m\n`;
    else line = `   ${words[rand(words.length)]} ${file} [${rand(100)}%] ${"·".repeat(rand(40))} ${(rand(100000) / 100).toFixed(2)} kB\n`;
    const b = Buffer.from(line);
    parts.push(b);
    size += b.length;
  }
  return Buffer.concat(parts).subarray(0, target);
}

/** Downloads `url` with curl in its own process; its own transfer time, so spawning is not counted. */
async function curl(
  url: string,
  headers: Record<string, string> = {},
  compressed = false,
): Promise<{ bytes: number; ms: number; status: number }> {
  // --compressed: asks for gzip and decodes it, as a browser does; size_download is then the bytes on the wire.
  const args = ["-s", ...(compressed ? ["--compressed"] : []), "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}"];
  for (const [k, v] of Object.entries(headers)) args.push("-H", `${k}: ${v}`);
  const child = spawn("curl", [...args, url], { stdio: ["ignore", "pipe", "inherit"] });
  let out = "";
  child.stdout.on("data", (c: Buffer) => (out += c.toString()));
  await once(child, "close");
  const [status, bytes, seconds] = out.trim().split(" ").map(Number);
  return { status: status ?? 0, bytes: bytes ?? 0, ms: (seconds ?? Number.NaN) * 1000 };
}

async function sha256Of(url: string, headers: Record<string, string> = {}): Promise<{ sha: string; bytes: number }> {
  const res = await request(url, { headers });
  const hash = createHash("sha256");
  let bytes = 0;
  for await (const chunk of res.body) {
    bytes += (chunk as Buffer).length;
    hash.update(chunk as Buffer);
  }
  return { sha: hash.digest("hex"), bytes };
}

/** `count` sequential GETs of `path` after a warm-up; latencies in ms, sorted, and the first page's IDs. */
async function pageLatencies(base: string, path: string, count: number): Promise<{ sorted: number[]; ids: string[] }> {
  const pool = new Pool(base, { connections: 1 });
  const get = async () => {
    const res = await pool.request({ path, method: "GET", headers: AUTH });
    const body = (await res.body.json()) as { builds: { id: string }[] };
    if (res.statusCode !== 200) throw new Error(`${path} answered ${res.statusCode}`);
    return body.builds.map((b) => b.id);
  };
  let ids: string[] = [];
  for (let i = 0; i < 50; i++) ids = await get();
  const out: number[] = [];
  for (let i = 0; i < count; i++) {
    const t0 = performance.now();
    await get();
    out.push(performance.now() - t0);
  }
  await pool.close();
  return { sorted: out.sort((a, b) => a - b), ids };
}

function nomadId(n: number, seconds: number): string {
  return `builder/dispatch-${seconds}-${(0x1000_0000 + n).toString(16)}`;
}

export async function main(): Promise<boolean> {
  if (process.env.BENCH_ARCHIVE_ONLY === "burst") return burst();
  process.stdout.write(`\narchive: a ${LOG_MIB} MiB archived log, GET /builds?limit=50 over ${BUILDS} archived builds\n`);
  const dir = mkdtempSync(join(tmpdir(), "petrel-bench-archive-"));
  const archiveDir = join(dir, "archive");
  const consul = await startConsulFake();
  const nomad = await startNomadFake({ logBatchMs: 0 });
  const gitea = await startGiteaFake({ token: GITEA_TOKEN });
  seedFakes(consul, nomad, gitea.url);
  const log = createLogger({ level: "warn" });
  const env: Record<string, string> = {
    NOMAD_ADDR: nomad.url,
    CONSUL_HTTP_ADDR: consul.url,
    PETREL_LISTEN: "127.0.0.1:0",
    PETREL_URL: "https://ci.example.test",
    PETREL_ADMIN_TOKEN: ADMIN_TOKEN,
    PETREL_ARCHIVE_DIR: archiveDir,
    PETREL_ARCHIVE_KEEP: String(BUILDS * 2),
  };
  const closers: (() => Promise<unknown>)[] = [];
  try {
    // ---- the 50 MiB build: a webhook, the fake runs it, petrel archives it, Nomad forgets it ----
    const output = buildOutput(LOG_MIB);
    const expected = createHash("sha256").update(output).digest("hex");
    let petrel = await startPetrel(readConfig(env), log, env);
    const body = Buffer.from(PUSH.replaceAll(COMMIT, "b".repeat(40)));
    const hook = await fetch(`${petrel.url}/hook`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-gitea-event": "push", "x-gitea-signature": sign(HOOK_SECRET, body) },
      body: new Uint8Array(body),
    });
    if (hook.status !== 201) throw new Error(`the webhook answered ${hook.status}`);
    const bigId = ((await hook.json()) as { build: string }).build;
    nomad.placeAlloc(bigId, { node: "worker-1" });
    nomad.startTask(bigId);
    nomad.writeLog(bigId, "stdout", output);
    nomad.writeLog(bigId, "stderr", "\u001b[33mwarning\u001b[0m: 3 deprecations\n");
    nomad.writeAllocFile(bigId, MERGED_LOG_PATH, "--- step build\n\u001b[33mwarning\u001b[0m: 3 deprecations\n");
    nomad.finishTask(bigId, 0);
    const record = join(archiveDir, "builds", encodeURIComponent(bigId), "build.json");
    const archiveStart = performance.now();
    for (let i = 0; i < 1200 && !existsSync(record); i++) await sleep(50);
    if (!existsSync(record)) throw new Error("the 50 MiB build was not archived within 60 s");
    const archiveMs = performance.now() - archiveStart;
    nomad.gcJob(bigId);
    await petrel.stop();

    // ---- 20,000 archived builds, cloned from the real record, written as the store lays them out; the store
    // then indexes them (its start-up scan of entries missing from the index) ----
    const template = JSON.parse(readFileSync(record, "utf8")) as Build;
    const gzEmpty = gzipSync(Buffer.alloc(0));
    const gzLine = gzipSync(Buffer.from("\u001b[32m  ✓\u001b[0m done\n"));
    const now = Math.floor(Date.now() / 1000) - 3600;
    const repos = ["acme/widgets", "acme/gadgets", "acme/docs", "umbrella/api", "umbrella/web"];
    const local = join(dir, "local");
    const localBuilds = join(local, "builds");
    // Single-machine mode archives too (<data>/archive): the same entries, so its start-up pass finds none missing.
    const localArchive = join(local, "archive");
    const seedStart = performance.now();
    for (let n = 0; n < BUILDS; n++) {
      // One build a minute on average, newest an hour ago: 20,000 builds span about two weeks.
      const seconds = now - n * 60 - (n % 7);
      const id = nomadId(n, seconds);
      const repo = repos[n % repos.length] as string;
      const created = new Date(seconds * 1000).toISOString();
      const finished = new Date((seconds + 90 + (n % 300)) * 1000).toISOString();
      const state = n % 11 === 0 ? "failure" : "success";
      const build: Build = {
        ...template,
        id,
        repo,
        repoUrl: `https://git.example.test/${repo}.git`,
        commit: createHash("sha1").update(String(n)).digest("hex"),
        ref: n % 4 === 0 ? "dev" : "main",
        state,
        createdAt: created,
        finishedAt: finished,
        ...(template.startedAt === undefined ? {} : { startedAt: new Date((seconds + 3) * 1000).toISOString() }),
        ...(state === "failure" ? { exitCode: 1 } : { exitCode: 0 }),
      };
      const entry = join(archiveDir, "builds", encodeURIComponent(id));
      mkdirSync(entry);
      writeFileSync(join(entry, "build.json"), `${JSON.stringify(build)}\n`);
      writeFileSync(join(entry, "stdout.gz"), gzLine);
      writeFileSync(join(entry, "stderr.gz"), gzEmpty);
      writeFileSync(join(entry, "all.gz"), gzLine);
      const localArchived = join(localArchive, "builds", encodeURIComponent(id));
      mkdirSync(localArchived, { recursive: true });
      for (const file of ["build.json", "stdout.gz", "stderr.gz", "all.gz"]) linkSync(join(entry, file), join(localArchived, file));
      // The same builds for the single-machine reference, as its store keeps them.
      const localEntry = join(localBuilds, encodeURIComponent(id));
      mkdirSync(localEntry, { recursive: true });
      const meta = { REPO_URL: build.repoUrl, COMMIT: build.commit, BRANCH: build.ref, FLAVOR: "default", REPO: repo };
      writeFileSync(
        join(localEntry, "build.json"),
        `${JSON.stringify({ id, builder: "builder", meta, idempotencyToken: `t${n}`, state, createdAt: created, startedAt: created, finishedAt: finished, exitCode: state === "failure" ? 1 : 0 }, null, 2)}\n`,
      );
    }
    await createArchiveStore({ dir: archiveDir }).ready();
    await createArchiveStore({ dir: localArchive }).ready();
    const seedMs = performance.now() - seedStart;

    // ---- petrel again (a restart: it loads the index once), and the two references ----
    petrel = await startPetrel(readConfig(env), log, env);
    closers.push(() => petrel.stop());
    const plainFile = join(dir, "stdout.log");
    writeFileSync(plainFile, output);
    const plain = createServer((_req, res) => {
      res.writeHead(200, { "content-type": "text/plain; charset=utf-8" });
      createReadStream(plainFile).pipe(res);
    });
    plain.listen(0, "127.0.0.1");
    await once(plain, "listening");
    closers.push(() => new Promise((r) => plain.close(r)));
    const plainUrl = `http://127.0.0.1:${(plain.address() as AddressInfo).port}/stdout.log`;
    const localEnv: Record<string, string> = {
      PETREL_LISTEN: "127.0.0.1:0",
      PETREL_DATA_DIR: local,
      PETREL_CONFIG: join(dir, "petrel.yaml"),
      PETREL_ADMIN_TOKEN: ADMIN_TOKEN,
      PETREL_ARCHIVE_KEEP: String(BUILDS * 2),
    };
    const reference = await startPetrel(readConfig(localEnv, dir), log, localEnv);
    closers.push(() => reference.stop());

    // 1. The archived log, checked byte for byte, then timed against the plain file server.
    const logUrl = `${petrel.url}/builds/${encodeURIComponent(bigId)}/logs?type=stdout`;
    const got = await sha256Of(logUrl, AUTH);
    if (got.sha !== expected) throw new Error(`petrel served ${got.bytes} bytes that differ from the build's log; the benchmark is void`);
    const plainGot = await sha256Of(plainUrl);
    if (plainGot.sha !== expected) throw new Error("the reference served different bytes; the benchmark is void");
    // A client that takes gzip gets the stored bytes: decoded, the same log.
    const decoded = await fetch(logUrl, { headers: AUTH });
    if (decoded.headers.get("content-encoding") !== "gzip") throw new Error("petrel did not send the archived log gzip-encoded");
    if (
      createHash("sha256")
        .update(Buffer.from(await decoded.arrayBuffer()))
        .digest("hex") !== expected
    )
      throw new Error("petrel's gzip answer decodes to other bytes; the benchmark is void");
    const runs = { petrel: [] as number[], plain: [] as number[], gzip: [] as number[] };
    let wire = 0;
    for (let i = 0; i < READS; i++) {
      // Each goes first in every other round, so neither always meets the machine as the other left it.
      const first = i % 2 === 0 ? await curl(plainUrl) : await curl(logUrl, AUTH);
      const second = i % 2 === 0 ? await curl(logUrl, AUTH) : await curl(plainUrl);
      const [a, b] = i % 2 === 0 ? [first, second] : [second, first];
      const g = await curl(logUrl, AUTH, true);
      if (a.bytes !== output.length || b.bytes !== output.length || b.status !== 200 || g.status !== 200) {
        throw new Error(`short read: reference ${a.bytes}, petrel ${b.bytes} (${b.status}) of ${output.length}`);
      }
      runs.plain.push(a.ms);
      runs.petrel.push(b.ms);
      runs.gzip.push(g.ms);
      wire = g.bytes;
    }
    const petrelMs = Math.min(...runs.petrel);
    const plainMs = Math.min(...runs.plain);
    const gzipMs = Math.min(...runs.gzip);
    if (process.env.BENCH_VERBOSE)
      process.stderr.write(
        `  log reads ms: petrel ${runs.petrel.map((v) => v.toFixed(0))}, plain ${runs.plain.map((v) => v.toFixed(0))}, petrel gzip ${runs.gzip.map((v) => v.toFixed(0))}\n`,
      );
    const mibps = (ms: number) => LOG_MIB / (ms / 1000);
    process.stdout.write(
      `  archiving the ${LOG_MIB} MiB build took ${(archiveMs / 1000).toFixed(1)} s after it finished (1 s settle included); ${BUILDS} entries seeded in ${(seedMs / 1000).toFixed(1)} s\n` +
        `  log: petrel (archive, gunzip) ${mibps(petrelMs).toFixed(0)} MiB/s (${petrelMs.toFixed(0)} ms), plain file server ${mibps(plainMs).toFixed(0)} MiB/s (${plainMs.toFixed(0)} ms), best of ${READS}\n` +
        `  log to a client taking gzip (curl --compressed, decoding included): ${mibps(gzipMs).toFixed(0)} MiB/s of log (${gzipMs.toFixed(0)} ms, ${(wire / 2 ** 20).toFixed(1)} MiB on the wire), ${(plainMs / gzipMs).toFixed(2)}x the plain file server\n`,
    );
    // Each round's two reads ran back to back: their ratio shares that moment's load, and the median of those
    // ratios is the verdict. A best-of compares each side's luckiest moment, taken at different times: on two
    // cores shared with the curl client and with this machine's neighbours, it swung 0.76x-1.13x between runs
    // of the same code, while the paired median stayed within 0.83x-1.09x.
    const paired = runs.plain.map((p, i) => p / (runs.petrel[i] as number)).sort((x, y) => x - y);
    const ratio = percentile(paired, 50);
    process.stdout.write(
      `  log petrel/plain, best of ${READS} each: ${(plainMs / petrelMs).toFixed(2)}x; median of ${READS} back-to-back pairs: ${ratio.toFixed(2)}x\n`,
    );

    // 2. The first page, petrel (all archived) and the single-machine reference (all live).
    const archived = await pageLatencies(petrel.url, "/builds?limit=50", PAGES);
    const live = await pageLatencies(reference.url, "/builds?limit=50", PAGES);
    // The archived page also has the 50 MiB build (the newest); the rest is the live page's start.
    const rest = archived.ids.filter((id) => id !== bigId);
    const same = archived.ids.length === 50 && rest.join() === live.ids.slice(0, rest.length).join();
    if (!same) process.stderr.write("  the archived and the live first pages differ\n");
    const line = (name: string, s: number[]) =>
      `  ${name.padEnd(34)} p50 ${percentile(s, 50).toFixed(2)} ms  p99 ${percentile(s, 99).toFixed(2)} ms  max ${(s[s.length - 1] ?? 0).toFixed(2)} ms\n`;
    process.stdout.write(
      line("GET /builds?limit=50, archived", archived.sorted) + line("same page, warm live (single-machine)", live.sorted),
    );

    const p99 = percentile(archived.sorted, 99);
    const pageRatio = p99 / percentile(live.sorted, 99);
    const p50Ratio = percentile(archived.sorted, 50) / percentile(live.sorted, 50);
    process.stdout.write(`  p50 archived/live ${p50Ratio.toFixed(2)}x\n`);
    const ok = [
      // Held to identity bytes (curl without --compressed): the case that decompresses on the server.
      verdict("log throughput petrel/plain (paired median)", `${ratio.toFixed(2)}x`, ">= 0.9x", ratio >= 0.9),
      verdict("archived page p99", `${p99.toFixed(2)} ms`, "< 20 ms", p99 < 20),
      verdict("archived/live page p99", `${pageRatio.toFixed(2)}x`, "<= 2x", pageRatio <= 2),
      verdict("single-machine page p99", `${percentile(live.sorted, 99).toFixed(2)} ms`, "< 20 ms", percentile(live.sorted, 99) < 20),
      verdict("same first page archived and live", same ? "yes" : "no", "yes", same),
    ].every(Boolean);
    for (const close of closers.splice(0).reverse()) await close().catch(() => undefined);
    if (process.env.BENCH_ARCHIVE_ONLY === "reads") return ok;
    return (await burst()) && ok;
  } finally {
    for (const close of closers.reverse()) await close().catch(() => undefined);
    await Promise.all([consul.close(), nomad.close(), gitea.close()]);
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A webhook side of its own: fresh fakes (in another process) and a fresh app, warmed up. */
async function hookSide(sink: ReturnType<typeof createLogger>): Promise<{ url: string; close(): Promise<void> }> {
  const fakes = await startFakes();
  const app = createClusterApp({ consulUrl: fakes.urls.consul, nomadUrl: fakes.urls.nomad, log: sink, budgetMs: 3500 });
  const server = serve({ fetch: app.app.fetch, hostname: "127.0.0.1", port: 0 }) as Server;
  await once(server, "listening");
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  await load(url, deliveries("b0", WARMUP_HOOKS));
  return {
    url,
    async close() {
      await new Promise((r) => server.close(r));
      await app.close();
      fakes.stop();
    },
  };
}

/**
 * `/hook` throughput alone and while `BURST` finished builds are archived at once in the same process. Every
 * phase, alone or with a burst, starts on equal footing: fresh fakes and a fresh app (the fake Nomad slows as
 * dispatched children pile up, so phases sharing one would favour whichever ran first), warmed up, then
 * `BURST_LOAD` webhooks. Phases alternate (alone, burst; then burst, alone; ...) so any drift of the machine
 * weighs on both. A burst starts with its phase's load; the load counts only while the burst is under way,
 * and the burst must then be archived in full. Returns whether the burst kept >= 95 % of the throughput alone.
 */
async function burst(): Promise<boolean> {
  process.stdout.write(
    `\n  /hook alone vs during a burst of ${BURST} archivings (${BURST_KIB} KiB logs), ${BURST_ROUNDS} bursts, ${BURST_LOAD} webhooks a phase, fresh fakes each phase\n`,
  );
  // The builds archived come from a Nomad fake of their own: in production the log reads land on Nomad's
  // clients, not on the server a webhook's dispatch goes to, and one fake process serving both would measure
  // the fake's saturation rather than petrel's.
  const source = await startFakes();
  const dir = mkdtempSync(join(tmpdir(), "petrel-bench-burst-"));
  const sink = createLogger({ level: "warn" });
  const agent = new Agent();
  const nomad = createNomadClient({ addr: source.urls.nomad, dispatcher: agent });
  const reader = createNomadBuildReader({ nomad, builders: () => new Set(["builder"]), log: sink });
  const store = createArchiveStore({ dir });
  const archiver = createArchiver({ store, reader, log: sink, metrics: new Registry() });
  try {
    const batches: string[][] = [];
    for (let i = 0; i < BURST_ROUNDS; i++) batches.push(await source.seed(BURST, BURST_KIB));
    let tag = 0;
    let failures = 0;
    /** Webhooks in batches of 100: `BURST_LOAD` of them, or fewer if `until` resolves first. */
    const drive = async (url: string, until?: Promise<unknown>) => {
      let done = false;
      void until?.then(() => {
        done = true;
      });
      let requests = 0;
      let seconds = 0;
      let cpuMs = 0;
      while (requests < BURST_LOAD && !done) {
        const r = await load(url, deliveries("c0", 100, "acme/widgets", 100 * tag++));
        failures += r.failures;
        requests += r.latencies.length;
        seconds += r.seconds;
        cpuMs += r.cpuMs;
      }
      return { requests, seconds, cpuMs };
    };
    const alone: number[] = [];
    const aloneCpu: number[] = [];
    const during: { rps: number; cpu: number; requests: number; archivedDuring: number; tailMs: number; burstMs: number }[] = [];
    const phase = async (batch: string[] | undefined) => {
      const side = await hookSide(sink);
      try {
        if (batch === undefined) {
          const r = await drive(side.url);
          alone.push(r.requests / r.seconds);
          aloneCpu.push(r.cpuMs / r.requests);
          return;
        }
        const archivedNow = () => batch.filter((id) => existsSync(join(dir, "builds", encodeURIComponent(id), "build.json"))).length;
        const t0 = performance.now();
        const pending = archiver.archive(batch);
        const r = await drive(side.url, pending);
        const loadEnd = performance.now();
        const archivedDuring = archivedNow();
        await pending;
        const end = performance.now();
        during.push({
          rps: r.requests / r.seconds,
          cpu: r.cpuMs / r.requests,
          requests: r.requests,
          archivedDuring,
          tailMs: end - loadEnd,
          burstMs: end - t0,
        });
      } finally {
        await side.close();
      }
    };
    // One unmeasured phase first: the first in a process ran at twice the CPU per webhook of later ones (the
    // JIT still warming the load generator and the webhook path), a step the alternation below cannot cancel.
    await phase(undefined);
    alone.length = 0;
    aloneCpu.length = 0;
    for (const [i, batch] of batches.entries()) {
      if (i % 2 === 0) {
        await phase(undefined);
        await phase(batch);
      } else {
        await phase(batch);
        await phase(undefined);
      }
    }
    const archivedAll = batches.flat().every((id) => existsSync(join(dir, "builds", encodeURIComponent(id), "build.json")));
    const mean = (v: number[]) => v.reduce((x, y) => x + y, 0) / v.length;
    // Judged per round, each burst against the phase alone next to it, and the median of those ratios: two
    // phases alone in one run have differed by 45 % on this machine, so a ratio of means mostly measured which
    // phases the neighbours slowed. An odd number of rounds (5 by default) makes the median one round's ratio.
    const paired = during.map((d, i) => d.rps / (alone[i] as number)).sort((x, y) => x - y);
    const ratio = percentile(paired, 50);
    process.stdout.write(
      `  alone ${alone.map((v) => v.toFixed(0)).join(", ")} req/s; during a burst ${during.map((d) => d.rps.toFixed(0)).join(", ")} req/s (${during.map((d) => d.requests).join(", ")} webhooks)\n` +
        `  this process's CPU per webhook (load generator and archiving included): alone ${aloneCpu.map((v) => v.toFixed(2)).join(", ")} ms, during a burst ${during.map((d) => d.cpu.toFixed(2)).join(", ")} ms\n` +
        `  archived while the load ran: ${during.map((d) => d.archivedDuring).join(", ")} of ${BURST}; the rest took ${during.map((d) => (d.tailMs / 1000).toFixed(1)).join(", ")} s after it; a whole burst ${during.map((d) => (d.burstMs / 1000).toFixed(1)).join(", ")} s\n` +
        `  during/alone per round ${paired.map((r) => `${(r * 100).toFixed(0)} %`).join(", ")} (sorted); ratio of the means ${((mean(during.map((d) => d.rps)) / mean(alone)) * 100).toFixed(1)} %\n`,
    );
    const short = during.some((d) => d.requests < BURST_LOAD);
    if (short) process.stderr.write("  a burst ended before its phase's load did: that phase's figure covers only the burst\n");
    return [
      verdict("/hook during a burst / alone (paired median)", `${(ratio * 100).toFixed(1)} %`, ">= 95 %", ratio >= 0.95),
      verdict("every build of the burst archived", archivedAll ? "yes" : "no", "yes", archivedAll),
      verdict("failed deliveries", `${failures}`, "0", failures === 0),
    ].every(Boolean);
  } finally {
    await archiver.stop();
    await agent.close();
    source.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  main().then(
    (ok) => process.exit(ok ? 0 : 1),
    (err: unknown) => {
      console.error(err);
      process.exit(2);
    },
  );
}
