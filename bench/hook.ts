/**
 * `/hook` throughput and latency for a signed push with a warm registry, beside a reference handler that does
 * only HMAC + JSON.parse + one undici POST to the same fake Nomad. Both run on loopback in this process, one
 * after the other, against the same fakes and the same pre-signed bodies.
 */

import type { ChildProcessWithoutNullStreams } from "node:child_process";
import { spawn } from "node:child_process";
import { createHmac, timingSafeEqual } from "node:crypto";
import { readFileSync } from "node:fs";
import type { Server } from "node:http";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { createInterface } from "node:readline";
import { Writable } from "node:stream";
import { fileURLToPath } from "node:url";
import { serve } from "@hono/node-server";
import { Agent, Pool, request } from "undici";
import { sign } from "../src/gitea/signature.js";
import { createLogger } from "../src/log.js";
import { createClusterApp, HOOK_SECRET } from "../test/helpers/cluster.js";
import { percentile, verdict } from "./stats.js";

const REQUESTS = Number(process.env.BENCH_HOOK_REQUESTS ?? 3000);
const CONCURRENCY = Number(process.env.BENCH_HOOK_CONCURRENCY ?? 16);
const WARMUP = 200;
const PUSH = readFileSync(fileURLToPath(new URL("../test/fixtures/gitea/push.json", import.meta.url)), "utf8");
const COMMIT = "4c1d7e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d";

export interface Delivery {
  body: Buffer;
  signature: string;
}

/** `n` signed pushes of distinct commits: `tag` (two hex digits) followed by the number from `from`. */
export function deliveries(tag: string, n: number, repo = "acme/widgets", from = 0): Delivery[] {
  return Array.from({ length: n }, (_, i) => {
    const commit = `${tag}${(from + i).toString(16).padStart(38, "0")}`;
    const body = Buffer.from(PUSH.replaceAll(COMMIT, commit).replaceAll("acme/widgets", repo));
    return { body, signature: sign(HOOK_SECRET, body) };
  });
}

export async function load(
  url: string,
  work: Delivery[],
): Promise<{ seconds: number; latencies: number[]; failures: number; cpuMs: number }> {
  const cpu0 = process.cpuUsage();
  const pool = new Pool(url, { connections: CONCURRENCY, pipelining: 1 });
  const latencies: number[] = [];
  let failures = 0;
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      for (;;) {
        const d = work[next++];
        if (d === undefined) return;
        const t0 = performance.now();
        const res = await pool.request({
          path: "/hook",
          method: "POST",
          headers: { "content-type": "application/json", "x-gitea-event": "push", "x-gitea-signature": d.signature },
          body: d.body,
        });
        await res.body.text();
        latencies.push(performance.now() - t0);
        // 200 is a dispatch Nomad already had: a retry after a dropped keep-alive connection finds the build
        // its first attempt created. Anything else is a failure.
        if (res.statusCode !== 201 && res.statusCode !== 200) {
          failures++;
          if (failures <= 3) process.stderr.write(`  unexpected answer ${res.statusCode} from ${url}\n`);
        }
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  const cpu = process.cpuUsage(cpu0);
  await pool.close();
  return { seconds, latencies: latencies.sort((a, b) => a - b), failures, cpuMs: (cpu.user + cpu.system) / 1000 };
}

/** The floor petrel is measured against: verify, parse, dispatch, answer. Nothing else. */
function startReference(nomadUrl: string): Promise<{ url: string; server: Server; agent: Agent }> {
  const agent = new Agent();
  const server = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on("data", (c: Buffer) => parts.push(c));
    req.on("end", () => {
      void (async () => {
        const body = Buffer.concat(parts);
        const want = createHmac("sha256", HOOK_SECRET).update(body).digest();
        const got = Buffer.from(String(req.headers["x-gitea-signature"] ?? ""), "hex");
        if (got.length !== want.length || !timingSafeEqual(got, want)) {
          res.writeHead(401).end();
          return;
        }
        const json = JSON.parse(body.toString("utf8")) as { after: string; repository: { clone_url: string } };
        const answer = await request(`${nomadUrl}/v1/job/builder/dispatch?idempotency_token=${json.after}`, {
          method: "POST",
          dispatcher: agent,
          body: JSON.stringify({ Meta: { REPO_URL: json.repository.clone_url, COMMIT: json.after, BRANCH: "main", FLAVOR: "default" } }),
        });
        const dispatched = (await answer.body.json()) as { DispatchedJobID: string };
        res.writeHead(201, { "content-type": "application/json" }).end(JSON.stringify({ build: dispatched.DispatchedJobID }));
      })();
    });
  });
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () => resolve({ url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server, agent })),
  );
}

/**
 * Starts the fakes in a child process; `consulReads()` asks it how many non-blocking Consul reads it served,
 * `seed()` has its Nomad run builds to the end.
 */
export async function startFakes(): Promise<{
  urls: { consul: string; nomad: string; gitea: string };
  consulReads(): Promise<number>;
  seed(count: number, kib: number): Promise<string[]>;
  stop(): void;
}> {
  const tsx = fileURLToPath(new URL("../node_modules/tsx/dist/cli.mjs", import.meta.url));
  const child: ChildProcessWithoutNullStreams = spawn(process.execPath, [
    tsx,
    fileURLToPath(new URL("./fakes-process.ts", import.meta.url)),
  ]);
  child.stderr.pipe(process.stderr);
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const nextLine = async () => JSON.parse(String((await lines.next()).value)) as Record<string, unknown>;
  const urls = (await nextLine()) as { consul: string; nomad: string; gitea: string };
  return {
    urls,
    async consulReads() {
      child.stdin.write("?\n");
      return Number((await nextLine()).consulReads);
    },
    async seed(count, kib) {
      child.stdin.write(`seed ${count} ${kib}\n`);
      return (await nextLine()).ids as string[];
    },
    stop: () => child.stdin.end(),
  };
}

export async function main(): Promise<boolean> {
  process.stdout.write(`\n/hook: ${REQUESTS} signed pushes, ${CONCURRENCY} connections, warm registry, fakes in another process\n`);
  const fakes = await startFakes();
  // Production logs at info to stdout; here the same lines go to a sink, so the cost of writing them stays.
  const sink = new Writable({ write: (_c, _e, done) => done() });
  const app = createClusterApp({
    consulUrl: fakes.urls.consul,
    nomadUrl: fakes.urls.nomad,
    log: createLogger({ level: "info", destination: sink }),
    budgetMs: 3500,
  });
  const petrelServer = serve({ fetch: app.app.fetch, hostname: "127.0.0.1", port: 0 }) as Server;
  await new Promise((r) => petrelServer.once("listening", r));
  const petrelUrl = `http://127.0.0.1:${(petrelServer.address() as AddressInfo).port}`;
  const reference = await startReference(fakes.urls.nomad);

  // Interleave warm-up runs so both JITs are hot before measuring.
  await load(petrelUrl, deliveries("aa", WARMUP));
  await load(petrelUrl, deliveries("ac", WARMUP, "acme/quiet"));
  await load(reference.url, deliveries("ab", WARMUP));

  // Three sides: petrel with a commit status per webhook (the full job), petrel for a repository without a
  // `gitea` block (like for like with the reference: one inbound and one outbound request), and the
  // reference. The fake Nomad slows as children pile up, so the order rotates every round.
  type Side = "petrel" | "quiet" | "ref";
  const sides: Side[] = ["petrel", "quiet", "ref"];
  const totals = Object.fromEntries(sides.map((k) => [k, { seconds: 0, latencies: [] as number[], failures: 0, cpuMs: 0 }])) as Record<
    Side,
    { seconds: number; latencies: number[]; failures: number; cpuMs: number }
  >;
  const ROUNDS = 9;
  const per = Math.ceil(REQUESTS / ROUNDS);
  let consulDuring = 0;
  for (let round = 0; round < ROUNDS; round++) {
    const order = [...sides.slice(round % 3), ...sides.slice(0, round % 3)];
    for (const side of process.env.BENCH_ONLY ? [process.env.BENCH_ONLY as Side] : order) {
      const work = deliveries(`${sides.indexOf(side)}${round}`, per, side === "quiet" ? "acme/quiet" : "acme/widgets");
      const before = side === "ref" ? 0 : await fakes.consulReads();
      const r = await load(side === "ref" ? reference.url : petrelUrl, work);
      if (side !== "ref") consulDuring += (await fakes.consulReads()) - before;
      const t = totals[side];
      t.seconds += r.seconds;
      t.latencies.push(...r.latencies);
      t.failures += r.failures;
      t.cpuMs += r.cpuMs;
    }
  }
  for (const side of sides) totals[side].latencies.sort((a, b) => a - b);

  const rps = (r: { seconds: number; latencies: number[] }) => r.latencies.length / r.seconds;
  const line = (name: string, r: (typeof totals)[Side]) =>
    `  ${name.padEnd(26)} ${rps(r).toFixed(0).padStart(6)} req/s  p50 ${percentile(r.latencies, 50).toFixed(2).padStart(6)} ms  p99 ${percentile(r.latencies, 99).toFixed(2).padStart(6)} ms  cpu ${(r.cpuMs / r.latencies.length).toFixed(2)} ms/req\n`;
  process.stdout.write(
    line("petrel, status posted", totals.petrel) +
      line("petrel, no gitea block", totals.quiet) +
      line("reference", totals.ref) +
      "  (cpu: this process, load generator included; the fakes run in another process)\n",
  );
  const full = rps(totals.petrel) / rps(totals.ref);
  const like = rps(totals.quiet) / rps(totals.ref);
  const p99Ratio = percentile(totals.petrel.latencies, 99) / percentile(totals.ref.latencies, 99);
  const failures = totals.petrel.failures + totals.quiet.failures + totals.ref.failures;
  process.stdout.write(
    `  throughput with the commit status posted: ${(full * 100).toFixed(1)} % of the reference (one more HTTP exchange per webhook than the reference makes)\n`,
  );
  const ok = [
    verdict("throughput petrel/reference", `${(like * 100).toFixed(1)} %`, ">= 70 %", like >= 0.7),
    verdict("p99 petrel (status posted)/reference", `${p99Ratio.toFixed(2)}x`, "<= 2x", p99Ratio <= 2),
    verdict("Consul requests per webhook (warm)", `${(consulDuring / (2 * per * ROUNDS)).toFixed(3)}`, "0", consulDuring === 0),
    verdict("failed deliveries", `${failures}`, "0", failures === 0),
  ].every(Boolean);

  await new Promise((r) => petrelServer.close(r));
  await new Promise((r) => reference.server.close(r));
  await reference.agent.close();
  await app.close();
  fakes.stop();
  return ok;
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
