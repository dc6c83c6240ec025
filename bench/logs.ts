import { fork } from "node:child_process";
import { createHash, randomUUID } from "node:crypto";
import { once } from "node:events";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { pipeline } from "node:stream/promises";
import { fileURLToPath } from "node:url";
import pino from "pino";
import { Agent, request } from "undici";
import { createNomadBuildReader } from "../src/nomad/builds.js";
import { createNomadClient } from "../src/nomad/client.js";
import { createFrameDecoder } from "../src/nomad/frames.js";
import { chunksOf } from "../src/util/stream.js";
import { type NomadFake, startNomadFake } from "../test/fakes/nomad.js";
import { builderJob } from "../test/nomad/target.js";
import { rpc } from "./rpc.js";
import { takeTimedLines } from "./stats.js";

// Log proxy benchmark (issue 3). Two processes, as in production: a child plays Nomad (the test fake, with
// its real 1 s heartbeat and 64 KiB frames) and the clients (curl); this process is petrel and nothing else,
// so its CPU time and RSS are petrel's. Compared with a passthrough proxy that pipes Nomad's framed bytes
// (undici to node:http, no decoding) on the same upstream.
//
// Targets: throughput >= 0.9x the passthrough, RSS growth <= 100 MB for 1,000 idle followers, added latency
// from an upstream frame to the client's byte p99 <= 20 ms.

const LOG_MIB = Number(process.env.BENCH_LOG_MIB ?? 256);
const FOLLOWERS = Number(process.env.BENCH_FOLLOWERS ?? 1000);
const LATENCY_LINES = Number(process.env.BENCH_LATENCY_LINES ?? 500);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const META = { REPO_URL: "https://git.example.test/acme/widgets", COMMIT: "4c1d7e0", BRANCH: "main", FLAVOR: "default" };

type Command =
  | { cmd: "init" }
  | { cmd: "build"; mib: number }
  | { cmd: "read"; url: string; hash: boolean }
  | { cmd: "latency"; url: string; job: string; lines: number; intervalMs: number; framed: boolean }
  | { cmd: "builds"; n: number }
  | { cmd: "idle-open"; urls: string[] }
  | { cmd: "idle-close" }
  | { cmd: "log-streams" }
  | { cmd: "log-hash"; mib: number };

// ---- petrel's side (this process) ---------------------------------------------------------------

/** Runs the benchmark, prints the figures and the ratios; true when every target is met. */
export async function main(): Promise<boolean> {
  const child = fork(fileURLToPath(import.meta.url), ["--child"], { execArgv: process.execArgv, stdio: "inherit" });
  const call = rpc<Command | { cmd: "serve"; nomadUrl: string } | { cmd: "rss" }>(child);
  const figures: Record<string, number> = {};
  const servers: Server[] = [];
  const agent = new Agent({ connections: null });
  try {
    const { url: nomadUrl } = (await call({ cmd: "init" })) as { url: string };
    const { petrel, passthrough } = await serve(nomadUrl, agent, servers);

    // 1. Idle followers, each case in a petrel process of its own started with --expose-gc, so RSS is read
    // after a full collection (retained memory, not garbage) and no forced GC distorts the throughput runs
    // here (a gc() call leaves V8's young generation small and halves the throughput below). First every
    // follower on a build of its own (three sockets each), then all on one build (sharing its watch).
    const idleRun = async (ids: string[]) => {
      const worker = fork(fileURLToPath(import.meta.url), ["--petrel"], {
        execArgv: [...process.execArgv, "--expose-gc"],
        stdio: "inherit",
      });
      const ask = rpc<Command | { cmd: "serve"; nomadUrl: string } | { cmd: "rss" }>(worker);
      try {
        const { url } = (await ask({ cmd: "serve", nomadUrl })) as { url: string };
        await sleep(500);
        const before = (await ask({ cmd: "rss" })) as Memory;
        await call({ cmd: "idle-open", urls: ids.map((id) => `${url}/${encodeURIComponent(id)}`) });
        const deadline = Date.now() + 60_000;
        while (((await call({ cmd: "log-streams" })) as number) < ids.length && Date.now() < deadline) await sleep(200);
        const streams = (await call({ cmd: "log-streams" })) as number;
        await sleep(3000);
        const after = (await ask({ cmd: "rss" })) as Memory;
        await call({ cmd: "idle-close" });
        while (((await call({ cmd: "log-streams" })) as number) > 0 && Date.now() < deadline + 30_000) await sleep(200);
        return { streams, growth: after.rss - before.rss, peak: after.rssBeforeGc - before.rss };
      } finally {
        worker.send({ id: 0, cmd: "exit" });
        if (worker.exitCode === null) await once(worker, "exit");
      }
    };
    const many = (await call({ cmd: "builds", n: FOLLOWERS })) as string[];
    const distinct = await idleRun(many);
    figures.idleFollowers = distinct.streams;
    figures.idleRssGrowthMB = distinct.growth / 1e6;
    figures.idleRssGrowthBeforeGcMB = distinct.peak / 1e6;
    figures.idleRssPerFollowerKB = distinct.growth / 1e3 / Math.max(1, distinct.streams);
    const one = (await call({ cmd: "build", mib: 0 })) as { id: string };
    const same = await idleRun(Array.from({ length: FOLLOWERS }, () => one.id));
    figures.idleOneBuildFollowers = same.streams;
    figures.idleOneBuildRssGrowthMB = same.growth / 1e6;
    await sleep(1000);

    // 2. Latency from an upstream frame to the client's byte, through petrel and through the passthrough
    // (each on a build of its own: both read the log from its start).
    const live = (await call({ cmd: "build", mib: 0 })) as { id: string; allocId: string };
    const live2 = (await call({ cmd: "build", mib: 0 })) as { id: string; allocId: string };
    const viaPetrel = (await call({
      cmd: "latency",
      url: `${petrel}/${encodeURIComponent(live.id)}`,
      job: live.id,
      lines: LATENCY_LINES,
      intervalMs: 5,
      framed: false,
    })) as number[];
    const viaPipe = (await call({
      cmd: "latency",
      url: `${passthrough}/${live2.allocId}?follow=true`,
      job: live2.id,
      lines: LATENCY_LINES,
      intervalMs: 5,
      framed: true,
    })) as number[];
    figures.latencyP50Ms = percentile(viaPetrel, 50);
    figures.latencyP99Ms = percentile(viaPetrel, 99);
    figures.passthroughLatencyP99Ms = percentile(viaPipe, 99);
    figures.addedLatencyP99Ms = figures.latencyP99Ms - figures.passthroughLatencyP99Ms;

    // 3. Throughput of a finished build's whole log.
    const big = (await call({ cmd: "build", mib: LOG_MIB })) as { id: string; allocId: string };
    const expected = (await call({ cmd: "log-hash", mib: LOG_MIB })) as string;
    const check = (await call({ cmd: "read", url: `${petrel}/${encodeURIComponent(big.id)}`, hash: true })) as Read;
    if (check.sha256 !== expected || check.bytes !== LOG_MIB * 2 ** 20) {
      throw new Error(`petrel delivered ${check.bytes} bytes with a different hash; the benchmark is void`);
    }
    // Warm-up, untimed: the hash check above did it for petrel.
    await call({ cmd: "read", url: `${passthrough}/${big.allocId}`, hash: false });
    const runs: { petrel: Read[]; pipe: Read[] } = { petrel: [], pipe: [] };
    for (let round = 0; round < ROUNDS; round++) {
      runs.pipe.push(await timed(() => call({ cmd: "read", url: `${passthrough}/${big.allocId}`, hash: false }) as Promise<Read>));
      runs.petrel.push(
        await timed(() => call({ cmd: "read", url: `${petrel}/${encodeURIComponent(big.id)}`, hash: false }) as Promise<Read>),
      );
    }
    if (process.env.BENCH_VERBOSE) {
      for (const [name, list] of Object.entries(runs)) {
        process.stderr.write(`${name}: ${list.map((r) => `${r.ms.toFixed(0)} ms/${(r.cpuMs ?? 0).toFixed(0)} ms cpu`).join(", ")}\n`);
      }
    }
    const best = (list: Read[]) => list.reduce((a, b) => (b.ms < a.ms ? b : a));
    const p = best(runs.petrel);
    const q = best(runs.pipe);
    figures.framedMiB = q.bytes / 2 ** 20;
    figures.petrelMs = p.ms;
    figures.passthroughMs = q.ms;
    figures.petrelLogMiBps = p.bytes / 2 ** 20 / (p.ms / 1000);
    figures.passthroughFramedMiBps = q.bytes / 2 ** 20 / (q.ms / 1000);
    figures.throughputRatio = q.ms / p.ms;
    figures.petrelCpuMs = p.cpuMs ?? 0;
    figures.passthroughCpuMs = q.cpuMs ?? 0;

    return print(figures);
  } finally {
    child.send({ id: 0, cmd: "exit" });
    for (const s of servers) s.closeAllConnections();
    await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
    await agent.destroy();
    if (child.exitCode === null) await once(child, "exit");
  }
}

/** petrel's log endpoint (the build reader's follow behind node:http) and the passthrough, on `nomadUrl`. */
async function serve(nomadUrl: string, agent: Agent, servers: Server[]): Promise<{ petrel: string; passthrough: string }> {
  const nomad = createNomadClient({ addr: nomadUrl, dispatcher: agent });
  const reader = createNomadBuildReader({ nomad, builders: () => new Set(["builder"]), log: pino({ level: "silent" }) });
  const petrel = await listen(servers, async (req, res) => {
    const id = decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname.slice(1));
    const abort = new AbortController();
    res.on("close", () => abort.abort());
    res.writeHead(200, { "content-type": "text/plain; charset=utf-8", "x-accel-buffering": "no" });
    res.flushHeaders();
    try {
      for await (const chunk of reader.logs(id, { type: "stdout", follow: true, offset: 0, signal: abort.signal })) {
        if (!res.write(chunk)) await once(res, "drain");
      }
      res.end();
    } catch {
      res.destroy();
    }
  });
  const passthrough = await listen(servers, async (req, res) => {
    const url = new URL(req.url ?? "/", "http://x");
    const allocId = url.pathname.slice(1);
    const abort = new AbortController();
    res.on("close", () => abort.abort());
    const follow = url.searchParams.get("follow") ?? "false";
    const upstream = await request(
      `${nomadUrl}/v1/client/fs/logs/${allocId}?task=executor&type=stdout&follow=${follow}&origin=start&offset=0`,
      { dispatcher: agent, signal: abort.signal },
    );
    res.writeHead(upstream.statusCode, { "content-type": "application/json" });
    res.flushHeaders();
    await pipeline(upstream.body, res).catch(() => undefined);
  });
  return { petrel, passthrough };
}

interface Memory {
  rss: number;
  rssBeforeGc: number;
}

/** The `--petrel` process of an idle-follower measurement: petrel's endpoint and nothing else. */
async function petrelWorker(): Promise<void> {
  const agent = new Agent({ connections: null });
  const servers: Server[] = [];
  const gc = (globalThis as { gc?: () => void }).gc ?? (() => undefined);
  process.on("message", (msg: { id: number; cmd: string; nomadUrl?: string }) => {
    const reply = (result: unknown) => process.send?.({ id: msg.id, result });
    if (msg.cmd === "serve") {
      void serve(msg.nomadUrl ?? "", agent, servers).then(({ petrel }) => reply({ url: petrel }));
    } else if (msg.cmd === "rss") {
      const rssBeforeGc = process.memoryUsage().rss;
      gc();
      void sleep(200).then(() => {
        gc();
        reply({ rss: process.memoryUsage().rss, rssBeforeGc } satisfies Memory);
      });
    } else if (msg.cmd === "exit") {
      for (const s of servers) s.closeAllConnections();
      void agent.destroy().finally(() => process.exit(0));
    }
  });
}

interface Read {
  bytes: number;
  ms: number;
  sha256?: string;
  /** CPU this process (petrel or the passthrough) spent during the read. */
  cpuMs?: number;
}

async function timed(fn: () => Promise<Read>): Promise<Read> {
  const cpu = process.cpuUsage();
  const read = await fn();
  const used = process.cpuUsage(cpu);
  return { ...read, cpuMs: (used.user + used.system) / 1000 };
}

function print(f: Record<string, number>): boolean {
  const n = (v: number | undefined, d = 1) => (v ?? Number.NaN).toFixed(d);
  const met = {
    throughput: (f.throughputRatio ?? 0) >= 0.9,
    idle: (f.idleRssGrowthMB ?? Infinity) <= 100,
    latency: (f.latencyP99Ms ?? Infinity) <= 20,
  };
  const verdict = (ok: boolean) => (ok ? "PASS" : "MISS");
  const lines = [
    `log proxy benchmark (${LOG_MIB} MiB log, ${FOLLOWERS} idle followers, ${LATENCY_LINES} latency samples)`,
    `throughput: petrel ${n(f.petrelLogMiBps)} MiB/s of log (${n(f.petrelMs, 0)} ms), passthrough ${n(f.passthroughFramedMiBps)} MiB/s of frames (${n(f.framedMiB, 0)} MiB in ${n(f.passthroughMs, 0)} ms)`,
    `  ratio passthrough time / petrel time = ${n(f.throughputRatio, 2)}x (target >= 0.9x): ${verdict(met.throughput)}`,
    `  CPU in the proxy process: petrel ${n(f.petrelCpuMs, 0)} ms, passthrough ${n(f.passthroughCpuMs, 0)} ms (${n((f.petrelCpuMs ?? 0) / Math.max(1, f.passthroughCpuMs ?? 1), 2)}x)`,
    `idle followers, one build each: ${n(f.idleFollowers, 0)} upstream streams open, RSS growth ${n(f.idleRssGrowthMB)} MB after a full GC (${n(f.idleRssPerFollowerKB)} KB each; ${n(f.idleRssGrowthBeforeGcMB)} MB before it; target <= 100 MB): ${verdict(met.idle)}`,
    `  all on one build: ${n(f.idleOneBuildFollowers, 0)} streams, RSS growth ${n(f.idleOneBuildRssGrowthMB)} MB after a full GC`,
    `  ratio growth / 100 MB = ${n((f.idleRssGrowthMB ?? Infinity) / 100, 2)}`,
    `latency frame -> client byte: petrel p50 ${n(f.latencyP50Ms, 2)} ms, p99 ${n(f.latencyP99Ms, 2)} ms; passthrough p99 ${n(f.passthroughLatencyP99Ms, 2)} ms; added p99 ${n(f.addedLatencyP99Ms, 2)} ms`,
    `  ratio p99 / 20 ms = ${n((f.latencyP99Ms ?? Infinity) / 20, 2)} (target <= 1): ${verdict(met.latency)}`,
  ];
  process.stdout.write(`${lines.join("\n")}\n`);
  return met.throughput && met.idle && met.latency;
}

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;
}

async function listen(servers: Server[], handler: (req: IncomingMessage, res: ServerResponse) => Promise<void>): Promise<string> {
  const server = createServer((req, res) => void handler(req, res).catch(() => res.destroy()));
  server.maxConnections = 100_000;
  servers.push(server);
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

// ---- Nomad and the clients (the child process) ----------------------------------------------------

/** The log every benchmark build writes: printable lines with an ANSI colour, deterministic. */
function logBytes(mib: number): Buffer {
  const line = Buffer.from("\u001b[32mok\u001b[0m 0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ\n");
  const out = Buffer.allocUnsafe(mib * 2 ** 20);
  for (let at = 0; at < out.length; at += line.length) line.copy(out, at, 0, Math.min(line.length, out.length - at));
  return out;
}

async function child(): Promise<void> {
  let fake: NomadFake | undefined;
  const agent = new Agent({ connections: null });
  const idle: AbortController[] = [];

  const handlers: { [K in Command["cmd"]]: (c: Extract<Command, { cmd: K }>) => Promise<unknown> } = {
    async init() {
      fake = await startNomadFake({ logBatchMs: 0 });
      fake.registerJob(builderJob("builder"));
      return { url: fake.url };
    },
    async build({ mib }) {
      const f = fake as NomadFake;
      const nomad = createNomadClient({ addr: f.url, dispatcher: agent });
      const { id } = await nomad.dispatch("builder", { meta: META, idempotencyToken: randomUUID() });
      const allocId = f.placeAlloc(id);
      f.startTask(id);
      if (mib > 0) {
        f.writeLog(id, "stdout", logBytes(mib));
        f.finishTask(id, 0);
      }
      return { id, allocId };
    },
    async "log-hash"({ mib }) {
      return createHash("sha256").update(logBytes(mib)).digest("hex");
    },
    async read({ url, hash }) {
      const started = performance.now();
      const res = await request(url, { dispatcher: agent });
      const sha = hash ? createHash("sha256") : undefined;
      let bytes = 0;
      // Like curl: take each chunk as it comes (a Readable's async iterator would copy them together).
      res.body.on("data", (chunk: Buffer) => {
        bytes += chunk.length;
        sha?.update(chunk);
      });
      await once(res.body, "end");
      return { bytes, ms: performance.now() - started, ...(sha ? { sha256: sha.digest("hex") } : {}) };
    },
    async latency({ url, job, lines, intervalMs, framed }) {
      const f = fake as NomadFake;
      const abort = new AbortController();
      const res = await request(url, { dispatcher: agent, signal: abort.signal });
      const samples: number[] = [];
      const reading = (async () => {
        const decoder = framed ? createFrameDecoder() : undefined;
        let text = "";
        try {
          for await (const chunk of chunksOf(res.body)) {
            const now = performance.now();
            const data = decoder ? Buffer.concat(decoder.push(chunk as Buffer).flatMap((fr) => fr.data)) : (chunk as Buffer);
            text = takeTimedLines(text + data.toString(), now, samples);
          }
        } catch {
          // aborted below
        }
      })();
      await sleep(300);
      for (let i = 0; i < lines; i++) {
        f.writeLog(job, "stdout", `t=${performance.now()}\n`);
        await sleep(intervalMs);
      }
      const deadline = Date.now() + 10_000;
      while (samples.length < lines && Date.now() < deadline) await sleep(20);
      abort.abort();
      await reading;
      return samples;
    },
    async builds({ n }) {
      const ids: string[] = [];
      for (let i = 0; i < n; i++) ids.push(((await handlers.build({ cmd: "build", mib: 0 })) as { id: string }).id);
      return ids;
    },
    async "idle-open"({ urls }) {
      const opened: Promise<void>[] = [];
      for (const url of urls) {
        const abort = new AbortController();
        idle.push(abort);
        opened.push(
          request(url, { dispatcher: agent, signal: abort.signal }).then((res) => {
            void (async () => {
              try {
                for await (const _ of res.body) void _;
              } catch {
                // closed by idle-close
              }
            })();
          }),
        );
      }
      await Promise.all(opened);
      return urls.length;
    },
    async "idle-close"() {
      for (const a of idle.splice(0)) a.abort();
      return true;
    },
    async "log-streams"() {
      return fake?.openLogStreams() ?? 0;
    },
  };

  process.on("message", (msg: (Command & { id: number }) | { id: number; cmd: "exit" }) => {
    if (msg.cmd === "exit") {
      for (const a of idle) a.abort();
      void Promise.allSettled([fake?.close(), agent.destroy()]).finally(() => process.exit(0));
      return;
    }
    const handler = handlers[msg.cmd] as (c: Command) => Promise<unknown>;
    handler(msg).then(
      (result) => process.send?.({ id: msg.id, result }),
      (err: unknown) => process.send?.({ id: msg.id, error: err instanceof Error ? (err.stack ?? err.message) : String(err) }),
    );
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  if (process.argv.includes("--child")) {
    void child();
  } else if (process.argv.includes("--petrel")) {
    void petrelWorker();
  } else {
    main().then(
      (ok) => process.exit(ok ? 0 : 1),
      (err: unknown) => {
        process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`);
        process.exit(1);
      },
    );
  }
}
