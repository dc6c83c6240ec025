import { setTimeout as sleep } from "node:timers/promises";
import { Agent } from "undici";
import { afterEach, describe, expect, it } from "vitest";
import { createNomadLeadership, type NomadLeadership } from "../../src/cluster/election.js";
import { createNomadClient } from "../../src/nomad/client.js";
import { type NomadFake, startNomadFake } from "../fakes/nomad.js";
import { captureLogs } from "../helpers/log-capture.js";
import { startProxy, type TcpProxy } from "../helpers/proxy.js";

const TTL = 1500;
const DELAY = 500;
/** Nomad frees a lock nobody renews 2×TTL + lock-delay after the last renewal (nomad/locks.go). */
const HANDOVER = 2 * TTL + DELAY;

interface Candidate {
  name: string;
  leadership: NomadLeadership;
  proxy: TcpProxy;
  changes: { leader: boolean; at: number }[];
  failures: number;
  gauge: number;
  logs: () => string;
}

const cleanup: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

async function fake(options: Parameters<typeof startNomadFake>[0] = {}): Promise<NomadFake> {
  const nomad = await startNomadFake({ minLockTtlMs: 100, ...options });
  cleanup.push(() => nomad.close());
  return nomad;
}

async function candidate(nomad: NomadFake, name: string, opts: { token?: string; ttlMs?: number } = {}): Promise<Candidate> {
  const proxy = await startProxy(nomad.url);
  const agent = new Agent();
  const { log, text } = captureLogs("info");
  const c: Candidate = {
    name,
    proxy,
    changes: [],
    failures: 0,
    gauge: -1,
    logs: text,
    leadership: undefined as unknown as NomadLeadership,
  };
  c.leadership = createNomadLeadership({
    nomad: createNomadClient({ addr: proxy.url, dispatcher: agent, log, ...(opts.token ? { token: opts.token } : {}) }),
    path: "petrel/leader",
    ttlMs: opts.ttlMs ?? TTL,
    lockDelayMs: DELAY,
    log,
    metrics: {
      leader: {
        set: (v) => {
          c.gauge = v;
        },
      },
      renewFailures: {
        inc: () => {
          c.failures++;
        },
      },
    },
  });
  c.leadership.onChange((leader) => c.changes.push({ leader, at: Date.now() }));
  cleanup.push(async () => {
    await c.leadership.stop();
    await proxy.close();
    await agent.close();
  });
  return c;
}

async function until(check: () => boolean, ms: number): Promise<number> {
  const started = Date.now();
  while (!check()) {
    if (Date.now() - started > ms) throw new Error(`condition not met within ${ms} ms`);
    await sleep(10);
  }
  return Date.now() - started;
}

const leaders = (cs: Candidate[]) => cs.filter((c) => c.leadership.isLeader());

describe("leader election with a Nomad variable lock (against the Nomad fake)", () => {
  it("elects exactly one of three, keeps it while it renews, and hands over at once on a clean stop", async () => {
    const nomad = await fake();
    const cs = await Promise.all(["a", "b", "c"].map((n) => candidate(nomad, n)));
    for (const c of cs) c.leadership.start();
    await until(() => leaders(cs).length === 1, 10_000);
    const first = leaders(cs)[0] as Candidate;
    expect(first.gauge).toBe(1);
    expect(first.leadership.term()?.aborted).toBe(false);
    expect(first.leadership.since()).toBeInstanceOf(Date);
    // Several TTLs: the leader renews and nobody else gets in.
    for (let i = 0; i < 20; i++) {
      await sleep((3 * TTL) / 20);
      expect(leaders(cs)).toEqual([first]);
    }
    expect(first.failures).toBe(0);
    expect(nomad.lockHolder("petrel/leader")).toBeDefined();

    const term = first.leadership.term() as AbortSignal;
    const stopped = Date.now();
    await first.leadership.stop();
    expect(term.aborted).toBe(true);
    expect(first.gauge).toBe(0);
    const rest = cs.filter((c) => c !== first);
    await until(() => leaders(rest).length === 1, 10_000);
    // Released, not expired: the next one took over within one campaign period, far inside 2×TTL + lock-delay.
    expect(Date.now() - stopped).toBeLessThan(TTL);
    expect(leaders(cs)).toHaveLength(1);
  });

  it("a leader cut off from Nomad steps down before another takes over, and the lock moves within 2×TTL + lock-delay", async () => {
    const nomad = await fake();
    const cs = await Promise.all(["a", "b"].map((n) => candidate(nomad, n)));
    for (const c of cs) c.leadership.start();
    await until(() => leaders(cs).length === 1, 10_000);
    const old = leaders(cs)[0] as Candidate;
    const other = cs.find((c) => c !== old) as Candidate;
    const term = old.leadership.term() as AbortSignal;
    const cut = Date.now();
    old.proxy.partition(true);
    await until(() => other.leadership.isLeader(), HANDOVER + 2 * TTL);
    const down = old.changes.find((c) => !c.leader)?.at as number;
    const up = other.changes.find((c) => c.leader)?.at as number;
    expect(term.aborted).toBe(true);
    expect(down).toBeLessThan(up);
    // It stopped within the TTL of its last renewal, long before Nomad could give the lock away.
    expect(down - cut).toBeLessThan(TTL);
    expect(up - cut).toBeLessThanOrEqual(HANDOVER + TTL);
    expect(up - cut).toBeGreaterThanOrEqual(HANDOVER - TTL);
    expect(old.failures).toBeGreaterThan(0);
    expect(old.logs()).toMatch(/stepped down/);

    // Healed, it campaigns again but the other keeps the lock.
    old.proxy.partition(false);
    await sleep(2 * TTL);
    expect(leaders(cs)).toEqual([other]);
  }, 20_000);

  it("a token that may not write the variable: one clear error, never leads, keeps quiet afterwards", async () => {
    const nomad = await fake({ aclToken: "management-token", tokensWithoutVariables: ["jobs-only-token"] });
    const c = await candidate(nomad, "a", { token: "jobs-only-token" });
    c.leadership.start();
    await until(() => c.leadership.refused() !== undefined, 10_000);
    const requests = nomad.requests.length;
    await sleep(3 * TTL);
    expect(c.leadership.isLeader()).toBe(false);
    expect(nomad.requests.length).toBe(requests);
    expect(c.leadership.refused()).toMatch(
      /NOMAD_TOKEN may not write the Nomad variable "petrel\/leader".*never leads.*capabilities = \["write"\]/,
    );
    const errors = c
      .logs()
      .split("\n")
      .filter((l) => l.includes('"level":50'));
    expect(errors).toHaveLength(1);
    expect(errors[0]).toContain("petrel/leader");
    expect(c.gauge).toBe(0);
  });

  it("a TTL the agent refuses (under Nomad's 10 s) is said once, and that replica never leads", async () => {
    const nomad = await startNomadFake();
    cleanup.push(() => nomad.close());
    const c = await candidate(nomad, "a", { ttlMs: 5000 });
    c.leadership.start();
    await until(() => c.leadership.refused() !== undefined, 10_000);
    expect(c.leadership.refused()).toMatch(/TTL must be between 10 seconds and 24 hours.*PETREL_LEADER_TTL/);
    expect(c.leadership.isLeader()).toBe(false);
  });
});
