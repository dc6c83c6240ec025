import { type ChildProcess, spawn } from "node:child_process";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { type ConsulFake, startConsulFake } from "../fakes/consul.js";
import { type GiteaFake, startGiteaFake } from "../fakes/gitea.js";
import { type NomadFake, startNomadFake } from "../fakes/nomad.js";
import { fixtureBytes } from "../gitea/fixtures.js";
import { GITEA_TOKEN, HOOK_SECRET, seedFakes, testRepoEntry } from "./cluster.js";
import { startProxy, type TcpProxy } from "./proxy.js";

const BIN = fileURLToPath(new URL("../../bin/petrel.js", import.meta.url));
const PUSH = fixtureBytes("push.json");
const PUSH_COMMIT = "4c1d7e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d";

/** One `petrel serve` child process, reaching Nomad through its own proxy (so it alone can be cut off). */
export interface Replica {
  name: string;
  url: string;
  child: ChildProcess;
  proxy: TcpProxy;
  /** Its JSON log lines so far. */
  lines(): Record<string, unknown>[];
  health(): Promise<{ leader: boolean; leaderSince?: string; leaderError?: string } | undefined>;
  kill(signal: NodeJS.Signals): Promise<void>;
}

export interface Replicas {
  nomad: NomadFake;
  consul: ConsulFake;
  gitea: GiteaFake;
  replicas: Replica[];
  /** The replicas that say they lead, by /health (dead ones say nothing). */
  leaders(): Promise<Replica[]>;
  /** A signed push of `commit` delivered to `replica`; returns the build ID. */
  push(replica: Replica, commit: string): Promise<string>;
  close(): Promise<void>;
}

/** Starts the fakes and `count` replicas with a short leader TTL and lock-delay (the fake accepts them). */
export async function startReplicas(
  count: number,
  opts: { ttl: string; lockDelay: string; env?: Record<string, string> } = { ttl: "1s", lockDelay: "1s" },
): Promise<Replicas> {
  const consul = await startConsulFake();
  const nomad = await startNomadFake({ minLockTtlMs: 100 });
  const gitea = await startGiteaFake({ token: GITEA_TOKEN });
  // The tests push several commits of one branch and follow each build to its end: nothing supersedes here.
  seedFakes(consul, nomad, gitea.url, testRepoEntry(gitea.url, { supersede: false }));
  const replicas = await Promise.all(
    Array.from({ length: count }, async (_, i) => {
      const proxy = await startProxy(nomad.url);
      return spawnReplica(`r${i + 1}`, proxy, {
        NOMAD_ADDR: proxy.url,
        CONSUL_HTTP_ADDR: consul.url,
        PETREL_LISTEN: "127.0.0.1:0",
        PETREL_URL: "https://ci.example.test",
        PETREL_LEADER_TTL: opts.ttl,
        PETREL_LEADER_LOCK_DELAY: opts.lockDelay,
        LOG_LEVEL: "info",
        ...opts.env,
      });
    }),
  );
  return {
    nomad,
    consul,
    gitea,
    replicas,
    async leaders() {
      const health = await Promise.all(replicas.map((r) => r.health()));
      return replicas.filter((_, i) => health[i]?.leader === true);
    },
    async push(replica, commit) {
      const { sign } = await import("../../src/gitea/signature.js");
      const body = Buffer.from(PUSH.toString("utf8").replaceAll(PUSH_COMMIT, commit));
      const res = await fetch(`${replica.url}/hook`, {
        method: "POST",
        headers: { "content-type": "application/json", "x-gitea-event": "push", "x-gitea-signature": sign(HOOK_SECRET, body) },
        body: new Uint8Array(body),
      });
      if (res.status !== 201) throw new Error(`push answered ${res.status}: ${await res.text()}`);
      return ((await res.json()) as { build: string }).build;
    },
    async close() {
      await Promise.all(replicas.map((r) => r.kill("SIGTERM")));
      await Promise.all(replicas.map((r) => r.proxy.close()));
      await Promise.all([consul.close(), nomad.close(), gitea.close()]);
    },
  };
}

async function spawnReplica(name: string, proxy: TcpProxy, env: Record<string, string>): Promise<Replica> {
  const child = spawn(process.execPath, [BIN, "serve"], { env: { PATH: process.env.PATH, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  const lines: Record<string, unknown>[] = [];
  let rest = "";
  let stderr = "";
  child.stderr?.on("data", (c: Buffer) => {
    stderr += c.toString("utf8");
  });
  const listening = new Promise<string>((resolve, reject) => {
    child.stdout?.on("data", (c: Buffer) => {
      rest += c.toString("utf8");
      const parts = rest.split("\n");
      rest = parts.pop() ?? "";
      for (const part of parts) {
        try {
          const line = JSON.parse(part) as Record<string, unknown>;
          lines.push(line);
          if (line.msg === "petrel listening") resolve(`http://${String(line.listen)}`);
        } catch {
          // Not a log line.
        }
      }
    });
    child.once("exit", (code) => reject(new Error(`${name} exited with ${code}: ${stderr}`)));
  });
  const url = await Promise.race([listening, sleep(15_000).then(() => Promise.reject(new Error(`${name} did not start: ${stderr}`)))]);
  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once("exit", () => resolve());
  });
  return {
    name,
    url,
    child,
    proxy,
    lines: () => lines,
    async health() {
      try {
        const res = await fetch(`${url}/health`, { signal: AbortSignal.timeout(3000) });
        return (await res.json()) as { leader: boolean };
      } catch {
        return undefined;
      }
    },
    async kill(signal) {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      await Promise.race([exited, sleep(12_000)]);
    },
  };
}

/** Polls until `check` holds; returns the milliseconds it took. */
export async function until(check: () => boolean | Promise<boolean>, ms: number, what = "condition"): Promise<number> {
  const started = Date.now();
  while (!(await check())) {
    if (Date.now() - started > ms) throw new Error(`${what} not met within ${ms} ms`);
    await sleep(25);
  }
  return Date.now() - started;
}
