import { setTimeout as sleep } from "node:timers/promises";
import { afterEach, describe, expect, it } from "vitest";
import { statusRank } from "../../src/builds/forward.js";
import type { GiteaFake } from "../fakes/gitea.js";
import { type Replica, type Replicas, startReplicas, until } from "../helpers/replicas.js";

// Short lock timings (the fake accepts a TTL under Nomad's 10 s minimum), so a failover takes seconds.
const TTL_MS = 1000;
const DELAY_MS = 1000;
/** Nomad frees an unrenewed lock 2×TTL + lock-delay after the last renewal (nomad/locks.go), plus a campaign period. */
const HANDOVER_MS = 2 * TTL_MS + DELAY_MS + TTL_MS / 3;

let cluster: Replicas | undefined;
afterEach(async () => {
  await cluster?.close();
  cluster = undefined;
});

const sha = (n: number) => n.toString(16).padStart(40, "c");

/** The statuses of one build in the order Gitea stored them. */
function statusesOf(gitea: GiteaFake, build: string): string[] {
  return gitea.statuses
    .filter((s) => s.target_url.endsWith(`/builds/${encodeURIComponent(build)}`))
    .map((s) => `${s.status}:${s.description}`);
}

/** Exactly one leader, and it stays the only one for a while. */
async function oneLeader(c: Replicas, ms = 6000): Promise<Replica> {
  await until(async () => (await c.leaders()).length === 1, ms, "one leader");
  const [leader] = await c.leaders();
  for (let i = 0; i < 5; i++) {
    await sleep(TTL_MS / 4);
    expect((await c.leaders()).map((r) => r.name)).toEqual([leader?.name]);
  }
  return leader as Replica;
}

function expectForwardOnce(gitea: GiteaFake, builds: string[], final: string): void {
  for (const build of builds) {
    const rows = statusesOf(gitea, build);
    const ranks = rows.map((r) => statusRank(r.slice(0, r.indexOf(":")), r.slice(r.indexOf(":") + 1)));
    // Once per state and in order: every row moves the build forward.
    expect(ranks, `${build}: ${rows.join(" → ")}`).toEqual([...ranks].sort((a, b) => a - b));
    expect(new Set(ranks).size, `${build}: ${rows.join(" → ")}`).toBe(ranks.length);
    expect(rows.at(-1)).toBe(final);
  }
}

describe("several `petrel serve` replicas against the fakes (leader elected with a Nomad variable lock)", () => {
  it("two replicas: one leader; cut off from Nomad it steps down before the other takes over", async () => {
    cluster = await startReplicas(2, { ttl: `${TTL_MS}ms`, lockDelay: `${DELAY_MS}ms` });
    const c = cluster;
    const old = await oneLeader(c);
    const other = c.replicas.find((r) => r !== old) as Replica;
    const metrics = await (await fetch(`${old.url}/metrics`)).text();
    expect(metrics).toMatch(/^petrel_leader 1$/m);
    expect(await (await fetch(`${other.url}/metrics`)).text()).toMatch(/^petrel_leader 0$/m);

    const cut = Date.now();
    old.proxy.partition(true);
    await until(async () => (await other.health())?.leader === true, HANDOVER_MS + 3000, "hand-over");
    const after = (l: Record<string, unknown>) => Date.parse(String(l.time)) >= cut;
    // The log line comes through the child's stderr pipe, which can trail its /health answer.
    await until(async () => other.lines().some((l) => after(l) && l.msg?.toString().startsWith("leading")), 5000, "the log line");
    const stepped = old.lines().find((l) => after(l) && l.msg === "stepped down: no longer leading");
    const took = other.lines().find((l) => after(l) && l.msg?.toString().startsWith("leading"));
    expect(stepped).toBeDefined();
    const down = Date.parse(String(stepped?.time));
    const up = Date.parse(String(took?.time));
    expect(down).toBeLessThan(up);
    expect(down - cut).toBeLessThan(TTL_MS);
    expect((await old.health())?.leader).toBe(false);
    expect(await (await fetch(`${old.url}/metrics`)).text()).toMatch(/^petrel_leader_lock_renewal_failures_total [1-9]/m);
  }, 30_000);

  it("three replicas: SIGKILL of the leader while builds run hands over within 2×TTL + lock-delay; each status once and in order", async () => {
    cluster = await startReplicas(3, { ttl: `${TTL_MS}ms`, lockDelay: `${DELAY_MS}ms` });
    const c = cluster;
    const { nomad, gitea } = c;
    const leader = await oneLeader(c);
    // Webhooks land on every replica; the dispatch-time pending is the answering replica's.
    const builds: string[] = [];
    for (let i = 0; i < 6; i++) builds.push(await c.push(c.replicas[i % 3] as Replica, sha(i)));
    await until(() => builds.every((b) => statusesOf(gitea, b).length === 1), 5000, "dispatch statuses");
    for (const b of builds) {
      nomad.placeAlloc(b, { node: "worker-1" });
      nomad.startTask(b);
    }
    await until(() => builds.every((b) => statusesOf(gitea, b).length === 2), 5000, "running statuses");
    // Half finish under the old leader, which is then killed with no chance to release the lock.
    for (const b of builds.slice(0, 3)) nomad.finishTask(b, 0);
    await until(() => builds.slice(0, 3).every((b) => statusesOf(gitea, b).length === 3), 5000, "first finals");
    const killed = Date.now();
    await leader.kill("SIGKILL");
    // These end while nobody leads: the next leader's reconciliation must post them.
    nomad.finishTask(builds[3] as string, 0);
    nomad.finishTask(builds[4] as string, 0);
    const rest = c.replicas.filter((r) => r !== leader);
    await until(async () => (await c.leaders()).length === 1, HANDOVER_MS + 3000, "new leader");
    const handover = Date.now() - killed;
    expect(handover).toBeLessThanOrEqual(HANDOVER_MS + 1500);
    const [next] = await c.leaders();
    expect(rest).toContain(next);
    nomad.finishTask(builds[5] as string, 0);
    await until(() => builds.every((b) => statusesOf(gitea, b).at(-1) === "success:build succeeded"), 8000, "every final status");
    await sleep(1000);
    expectForwardOnce(gitea, builds, "success:build succeeded");
    expect(gitea.statuses.filter((s) => s.status === "success")).toHaveLength(builds.length);
    // The survivor that does not lead never posted anything from the event stream.
    expect((await c.leaders()).map((r) => r.name)).toEqual([next?.name]);
  }, 60_000);
});
