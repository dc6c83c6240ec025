/**
 * Shared-watch benchmark (issue 12, "Performance"): 100 SSE viewers of one running build, against petrel as
 * `startPetrel` runs it in cluster mode. Two processes: a child plays Nomad, Consul and Gitea (the test fakes,
 * Nomad's log frames sent as soon as they are written) and the viewers (EventSource-like SSE parsers); this
 * process is petrel and nothing else. The child stamps each log line with its clock when it writes it and
 * reads the same clock when a viewer has parsed the line's `log` event, so frame-to-viewer latency needs no
 * clock shared across processes.
 *
 * Targets: one upstream log stream for the 100 viewers; frame-to-viewer p99 < 50 ms. Printed beside a
 * reference measured in the same run: one lone viewer of another build, the same way.
 */
import { fork } from "node:child_process";
import { randomUUID } from "node:crypto";
import { once } from "node:events";
import { type ClientRequest, Agent as HttpAgent, get as httpGet } from "node:http";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import pino from "pino";
import { Agent } from "undici";
import { readConfig } from "../src/config.js";
import { startPetrel } from "../src/main.js";
import { createNomadClient } from "../src/nomad/client.js";
import { startConsulFake } from "../test/fakes/consul.js";
import { startGiteaFake } from "../test/fakes/gitea.js";
import { type NomadFake, startNomadFake } from "../test/fakes/nomad.js";
import { GITEA_TOKEN, seedFakes } from "../test/helpers/cluster.js";
import { createSseParser } from "../test/helpers/sse.js";
import { rpc } from "./rpc.js";
import { percentile, takeTimedLines, verdict } from "./stats.js";

const VIEWERS = Number(process.env.BENCH_SSE_VIEWERS ?? 100);
const LINES = Number(process.env.BENCH_SSE_LINES ?? 300);
const INTERVAL_MS = Number(process.env.BENCH_SSE_INTERVAL_MS ?? 10);
const ADMIN_TOKEN = "admin-token-0123456789abcdef";
const META = { REPO_URL: "https://git.example.test/acme/widgets.git", COMMIT: "4c1d7e0", BRANCH: "main", FLAVOR: "default" };

type Command =
  | { cmd: "init" }
  | { cmd: "build" }
  | { cmd: "watch"; url: string; job: string; allocId: string; viewers: number; lines: number; intervalMs: number };

/** What one measurement saw. */
interface Watched {
  samples: number[];
  /** `follow=true` log requests Nomad received for the build. */
  follows: number;
  /** Most log streams Nomad had open at once while the viewers watched. */
  openStreams: number;
  /** `GET /v1/job/<id>` requests while the lines were written, and over how long. */
  jobReads: number;
  windowMs: number;
  ended: number;
  /** CPU the child (Nomad fake and viewers) spent while the lines were written and read. */
  childCpuMs: number;
  /** CPU petrel spent over the same measurement (filled in by petrel's side). */
  petrelCpuMs?: number;
}

// ---- petrel's side (this process) ---------------------------------------------------------------

/** Runs the benchmark, prints the figures; true when every target is met. */
export async function main(): Promise<boolean> {
  const child = fork(fileURLToPath(import.meta.url), ["--child"], { execArgv: process.execArgv, stdio: "inherit" });
  const call = rpc<Command>(child);
  try {
    const urls = (await call({ cmd: "init" })) as { nomad: string; consul: string };
    const env = {
      NOMAD_ADDR: urls.nomad,
      CONSUL_HTTP_ADDR: urls.consul,
      PETREL_LISTEN: "127.0.0.1:0",
      PETREL_URL: "https://ci.example.test",
      PETREL_ADMIN_TOKEN: ADMIN_TOKEN,
    };
    const petrel = await startPetrel(readConfig(env), pino({ level: "silent" }), env);
    try {
      const measure = async (viewers: number) => {
        const { id, allocId } = (await call({ cmd: "build" })) as { id: string; allocId: string };
        const cpu = process.cpuUsage();
        const watched = (await call({
          cmd: "watch",
          url: petrel.url,
          job: id,
          allocId,
          viewers,
          lines: LINES,
          intervalMs: INTERVAL_MS,
        })) as Watched;
        const used = process.cpuUsage(cpu);
        return { ...watched, petrelCpuMs: (used.user + used.system) / 1000 };
      };
      const lone = await measure(1);
      const many = await measure(VIEWERS);
      return print(lone, many);
    } finally {
      await petrel.stop();
    }
  } finally {
    child.send({ id: 0, cmd: "exit" });
    if (child.exitCode === null) await once(child, "exit");
  }
}

function print(lone: Watched, many: Watched): boolean {
  const sort = (v: number[]) => [...v].sort((a, b) => a - b);
  const a = sort(lone.samples);
  const b = sort(many.samples);
  const p99 = percentile(b, 99);
  const refP99 = percentile(a, 99);
  const ms = (v: number) => `${v.toFixed(2)} ms`;
  process.stdout.write(
    `\nSSE viewers of one running build (${VIEWERS} viewers, ${LINES} lines every ${INTERVAL_MS} ms; ${b.length} samples, reference ${a.length})\n`,
  );
  const streams = verdict(
    "upstream log streams (100 viewers)",
    `${many.follows} (${many.openStreams} open at most)`,
    "1",
    many.follows === 1,
  );
  const latency = verdict("frame-to-viewer p99", ms(p99), "< 50 ms", p99 < 50);
  process.stdout.write(
    `  frame-to-viewer p50 ${ms(percentile(b, 50))}, max ${ms(b.at(-1) ?? Number.NaN)}; lone viewer p50 ${ms(percentile(a, 50))}, p99 ${ms(refP99)}\n`,
  );
  process.stdout.write(`  ratio p99 ${VIEWERS} viewers / lone viewer = ${(p99 / refP99).toFixed(2)}x\n`);
  process.stdout.write(
    `  build reads (GET /v1/job/<id>) while watched: ${many.jobReads} in ${(many.windowMs / 1000).toFixed(1)} s with ${VIEWERS} viewers, ${lone.jobReads} in ${(lone.windowMs / 1000).toFixed(1)} s with one\n`,
  );
  process.stdout.write(
    `  CPU: petrel ${(many.petrelCpuMs ?? 0).toFixed(0)} ms (lone viewer ${(lone.petrelCpuMs ?? 0).toFixed(0)} ms), fake Nomad and viewers ${many.childCpuMs.toFixed(0)} ms (lone ${lone.childCpuMs.toFixed(0)} ms)\n`,
  );
  process.stdout.write(`  viewers that saw the build end: ${many.ended}/${VIEWERS}\n`);
  return streams && latency && many.ended === VIEWERS && b.length === VIEWERS * LINES;
}

// ---- Nomad, Consul, Gitea and the viewers (the child process) -------------------------------------

async function child(): Promise<void> {
  let nomad: NomadFake | undefined;
  const closers: Array<() => Promise<unknown>> = [];
  const agent = new Agent({ connections: null });
  const viewerAgent = new HttpAgent({ keepAlive: false, maxSockets: Number.POSITIVE_INFINITY });

  const handlers: { [K in Command["cmd"]]: (c: Extract<Command, { cmd: K }>) => Promise<unknown> } = {
    async init() {
      const consul = await startConsulFake();
      nomad = await startNomadFake({ logBatchMs: 0 });
      const gitea = await startGiteaFake({ token: GITEA_TOKEN });
      closers.push(
        () => consul.close(),
        () => (nomad as NomadFake).close(),
        () => gitea.close(),
      );
      seedFakes(consul, nomad, gitea.url);
      return { nomad: nomad.url, consul: consul.url };
    },
    async build() {
      const f = nomad as NomadFake;
      const client = createNomadClient({ addr: f.url, dispatcher: agent });
      const { id } = await client.dispatch("builder", { meta: META, idempotencyToken: randomUUID() });
      const allocId = f.placeAlloc(id);
      f.startTask(id);
      return { id, allocId };
    },
    async watch({ url, job, allocId, viewers, lines, intervalMs }) {
      const f = nomad as NomadFake;
      const samples: number[] = [];
      let connected = 0;
      let ended = 0;
      let openStreams = 0;
      const requests: ClientRequest[] = [];
      const target = new URL(`${url}/builds/${encodeURIComponent(job)}/logs?type=stdout`);
      // node:http with a `data` listener rather than undici's body iterator: a viewer here should cost less than
      // a viewer in petrel, or the figure measures this process (it shares the 2 cores with petrel).
      const reading = Array.from(
        { length: viewers },
        () =>
          new Promise<void>((done) => {
            const req = httpGet(
              target,
              { agent: viewerAgent, headers: { accept: "text/event-stream", authorization: `Bearer ${ADMIN_TOKEN}` } },
              (res) => {
                const parser = createSseParser();
                let first = true;
                let text = "";
                res.setEncoding("utf8");
                res.on("data", (chunk: string) => {
                  const now = performance.now();
                  for (const event of parser.push(chunk)) {
                    if (event.event === "state" && first) {
                      first = false;
                      connected++;
                    } else if (event.event === "log") {
                      text = takeTimedLines(text + event.data, now, samples);
                    } else if (event.event === "end") {
                      ended++;
                    }
                  }
                });
                res.on("close", done);
              },
            );
            // Destroyed after the deadline.
            req.on("error", () => done());
            requests.push(req);
          }),
      );
      const deadline = Date.now() + 60_000;
      while (connected < viewers && Date.now() < deadline) await sleep(10);
      const from = f.requests.length;
      const cpu = process.cpuUsage();
      const started = performance.now();
      for (let i = 0; i < lines; i++) {
        f.writeLog(job, "stdout", `t=${performance.now()}\n`);
        openStreams = Math.max(openStreams, f.openLogStreams());
        await sleep(intervalMs);
      }
      while (samples.length < viewers * lines && Date.now() < deadline) await sleep(10);
      const windowMs = performance.now() - started;
      const used = process.cpuUsage(cpu);
      const jobReads = f.requests.slice(from).filter((r) => r.method === "GET" && decodeURIComponent(r.path) === `/v1/job/${job}`).length;
      f.finishTask(job, 0);
      while (ended < viewers && Date.now() < deadline) await sleep(10);
      for (const r of requests) r.destroy();
      await Promise.allSettled(reading);
      const follows = f.requests.filter(
        (r) => r.path === `/v1/client/fs/logs/${allocId}` && r.query.type === "stdout" && r.query.follow === "true",
      ).length;
      return { samples, follows, openStreams, jobReads, windowMs, ended, childCpuMs: (used.user + used.system) / 1000 } satisfies Watched;
    },
  };

  process.on("message", (msg: (Command & { id: number }) | { id: number; cmd: "exit" }) => {
    if (msg.cmd === "exit") {
      void Promise.allSettled([...closers.map((c) => c()), agent.destroy()]).finally(() => process.exit(0));
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
