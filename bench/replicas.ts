/**
 * Replicas benchmark (issue 13, "Done when"): 200 builds finishing in a burst, with three `petrel serve`
 * replicas (child processes, a leader elected with the Nomad fake's variable lock) against the Consul, Nomad
 * and Gitea fakes, must post exactly 200 final statuses; the same burst with one replica is the reference.
 * Printed: final statuses, all statuses, the forge reads petrel made, and the time from the burst to the last
 * final status. Target: exactly one final status per build with three replicas, as with one.
 */
import { spawnSync } from "node:child_process";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { type Replica, startReplicas, until } from "../test/helpers/replicas.js";

const BUILDS = Number(process.env.BENCH_REPLICAS_BUILDS ?? 200);

interface Run {
  replicas: number;
  finals: number;
  statuses: number;
  reads: number;
  burstMs: number;
}

async function run(count: number): Promise<Run> {
  const c = await startReplicas(count, { ttl: "2s", lockDelay: "1s" });
  try {
    await until(async () => (await c.leaders()).length === 1, 15_000, "one leader");
    const builds: string[] = [];
    for (let i = 0; i < BUILDS; i++) builds.push(await c.push(c.replicas[i % count] as Replica, i.toString(16).padStart(40, "e")));
    await until(() => c.gitea.statuses.length >= BUILDS, 30_000, "dispatch statuses");
    for (const b of builds) {
      c.nomad.placeAlloc(b, { node: "worker-1" });
      c.nomad.startTask(b);
    }
    await until(() => c.gitea.statuses.filter((s) => s.description.startsWith("running")).length >= BUILDS, 30_000, "running statuses");
    const started = performance.now();
    for (const b of builds) c.nomad.finishTask(b, 0);
    await until(() => c.gitea.statuses.filter((s) => s.status === "success").length >= BUILDS, 60_000, "final statuses");
    const burstMs = performance.now() - started;
    // Anything doubled would arrive after the last first copy: give it time to show.
    await sleep(2000);
    return {
      replicas: count,
      finals: c.gitea.statuses.filter((s) => s.status !== "pending").length,
      statuses: c.gitea.statuses.length,
      reads: c.gitea.requests.filter((r) => r.method === "GET").length,
      burstMs,
    };
  } finally {
    await c.close();
  }
}

export async function main(): Promise<boolean> {
  // The replicas run the built CLI, as a supervisor would.
  const root = fileURLToPath(new URL("..", import.meta.url));
  const build = spawnSync("npx", ["tsc", "-b", "tsconfig.build.json"], { cwd: root, stdio: "inherit" });
  if (build.status !== 0) throw new Error("could not build dist/ for the replicas");
  process.stdout.write(`\nreplicas: ${BUILDS} builds finishing in a burst\n`);
  const results: Run[] = [];
  for (const count of [1, 3]) {
    const r = await run(count);
    results.push(r);
    process.stdout.write(
      `  ${r.replicas} replica(s): ${r.finals} final statuses, ${r.statuses} statuses in all, ${r.reads} forge reads, last final ${r.burstMs.toFixed(0)} ms after the burst\n`,
    );
  }
  const [one, three] = results as [Run, Run];
  const met = one.finals === BUILDS && three.finals === BUILDS && three.statuses === 3 * BUILDS;
  process.stdout.write(
    `  ${met ? "met" : "MISS"}: exactly ${BUILDS} final statuses with three replicas (${three.finals}); time ${(three.burstMs / one.burstMs).toFixed(2)}x the one-replica reference\n`,
  );
  return met;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const met = await main();
  process.exit(met ? 0 : 1);
}
