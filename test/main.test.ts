import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readConfig } from "../src/config.js";
import { sign } from "../src/gitea/signature.js";
import type { RunningPetrel } from "../src/main.js";
import { startPetrel } from "../src/main.js";
import type { ConsulFake } from "./fakes/consul.js";
import { startConsulFake } from "./fakes/consul.js";
import type { GiteaFake } from "./fakes/gitea.js";
import { startGiteaFake } from "./fakes/gitea.js";
import type { NomadFake } from "./fakes/nomad.js";
import { startNomadFake } from "./fakes/nomad.js";
import { fixtureBytes } from "./gitea/fixtures.js";
import { clusterEnv, GITEA_TOKEN, HOOK_SECRET, seedFakes } from "./helpers/cluster.js";
import { captureLogs } from "./helpers/log-capture.js";
import { eventually } from "./helpers/wait.js";

const PUSH = fixtureBytes("push.json");
const COMMIT = "4c1d7e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d";

function deliver(url: string, body: Buffer): Promise<Response> {
  return fetch(`${url}/hook`, {
    method: "POST",
    headers: { "content-type": "application/json", "x-gitea-event": "push", "x-gitea-signature": sign(HOOK_SECRET, body) },
    body: new Uint8Array(body),
  });
}

describe("petrel serve in cluster mode (composition root against the fakes)", () => {
  let consul: ConsulFake;
  let nomad: NomadFake;
  let gitea: GiteaFake;
  let petrel: RunningPetrel;
  const logs = captureLogs("info");

  beforeAll(async () => {
    consul = await startConsulFake();
    nomad = await startNomadFake();
    gitea = await startGiteaFake({ token: GITEA_TOKEN });
    seedFakes(consul, nomad, gitea.url);
    const env = clusterEnv({ consul, nomad });
    petrel = await startPetrel(readConfig(env), logs.log, env);
  });

  afterAll(async () => {
    await petrel.stop();
    await Promise.all([consul.close(), nomad.close(), gitea.close()]);
  });

  it("reports Nomad, Consul and the registry in /health", async () => {
    const res = await fetch(`${petrel.url}/health`);
    const body = (await res.json()) as { status: string; mode: string; checks: Record<string, { ok: boolean }> };
    expect(res.status).toBe(200);
    expect(body.mode).toBe("cluster");
    expect(body.checks.nomad?.ok).toBe(true);
    expect(body.checks.consul?.ok).toBe(true);
    expect(body.checks.registry).toMatchObject({ ok: true, source: "consul" });
  });

  it("says degraded, and 503 with ?ready, while Nomad is down", async () => {
    nomad.setDown(true);
    try {
      const live = await fetch(`${petrel.url}/health`);
      expect(live.status).toBe(200);
      expect(((await live.json()) as { status: string }).status).toBe("degraded");
      expect((await fetch(`${petrel.url}/health?ready`)).status).toBe(503);
    } finally {
      nomad.setDown(false);
    }
  });

  it("dispatches a signed push and sends the pending status", async () => {
    const res = await deliver(petrel.url, PUSH);
    expect(res.status).toBe(201);
    const { build } = (await res.json()) as { build: string };
    expect(nomad.job(build)?.Meta?.COMMIT).toBe(COMMIT);
    for (let i = 0; i < 100 && gitea.statuses.length === 0; i++) await sleep(20);
    expect(gitea.statuses[0]).toMatchObject({ sha: COMMIT, status: "pending", context: "petrel/default" });
  });

  it("refuses a foreign Nomad job on every builds endpoint without asking Nomad", async () => {
    nomad.registerJob({ ID: "payroll", Type: "batch", TaskGroups: [] });
    const before = nomad.requests.length;
    for (const path of [
      "/builds/payroll",
      "/builds/payroll%2Fdispatch-1700000000-1a2b3c4d/logs",
      "/build?job=payroll/dispatch-1700000000-1a2b3c4d&log=stdout",
    ]) {
      const res = await fetch(`${petrel.url}${path}`, { headers: { authorization: "Bearer admin-token-0123456789abcdef" } });
      expect(res.status).toBe(404);
      expect(((await res.json()) as { error: { message: string } }).error.message).toMatch(/not a petrel build/);
    }
    // The tracker's own reads may run meanwhile; none of them, nor anything else, may name the foreign job.
    const named = nomad.requests.slice(before).filter((r) => `${r.path}?${JSON.stringify(r.query)}`.includes("payroll"));
    expect(named).toHaveLength(0);
  });

  it("shows a build as Nomad runs it: state, live logs that end with the build, and statuses to Gitea", async () => {
    const body = Buffer.from(PUSH.toString("utf8").replaceAll(COMMIT, "a".repeat(40)));
    const res = await deliver(petrel.url, body);
    const { build } = (await res.json()) as { build: string };
    const path = `${petrel.url}/builds/${encodeURIComponent(build)}`;
    const admin = { authorization: "Bearer admin-token-0123456789abcdef" };
    // The fixture's repository is private: reading its builds needs the token.
    expect((await fetch(path)).status).toBe(401);
    expect(((await (await fetch(path, { headers: admin })).json()) as { state: string }).state).toBe("queued");

    nomad.placeAlloc(build, { node: "worker-7" });
    nomad.startTask(build);
    const sha = "a".repeat(40);
    // The tracker reads a build back when Nomad reports a change; give it the running state to see.
    for (let i = 0; i < 200 && !gitea.statuses.some((s) => s.sha === sha && s.description === "running on worker-7"); i++) await sleep(25);
    nomad.writeLog(build, "stdout", "first line\n");
    const logs = await fetch(`${path}/logs?type=stdout&follow=true`, { headers: admin });
    expect(logs.status).toBe(200);
    const reader = (logs.body as ReadableStream<Uint8Array>).getReader();
    const decoder = new TextDecoder();
    let text = "";
    while (!text.includes("first line")) text += decoder.decode((await reader.read()).value);
    nomad.writeLog(build, "stdout", "second line\n");
    nomad.finishTask(build, 3);
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += decoder.decode(value);
    }
    expect(text).toBe("first line\nsecond line\n");
    const shown = (await (await fetch(path, { headers: admin })).json()) as { state: string; exitCode: number; node: string };
    expect(shown).toMatchObject({ state: "failure", exitCode: 3 });

    for (let i = 0; i < 200 && !gitea.statuses.some((s) => s.sha === sha && s.status === "failure"); i++) await sleep(25);
    const states = gitea.statuses.filter((s) => s.sha === sha).map((s) => [s.status, s.description]);
    expect(states[0]).toEqual(["pending", expect.any(String)]);
    expect(states).toContainEqual(["pending", "running on worker-7"]);
    expect(states.at(-1)).toEqual(["failure", "build failed with exit code 3"]);
    expect(gitea.statuses.find((s) => s.sha === sha && s.status === "failure")?.target_url).toBe(
      `https://ci.example.test/builds/${encodeURIComponent(build)}`,
    );
  });

  it("cancels a running build through DELETE and reports it as an error status", async () => {
    const sha = "b".repeat(40);
    const res = await deliver(petrel.url, Buffer.from(PUSH.toString("utf8").replaceAll(COMMIT, sha)));
    const { build } = (await res.json()) as { build: string };
    nomad.placeAlloc(build);
    nomad.startTask(build);
    const path = `${petrel.url}/builds/${encodeURIComponent(build)}`;
    expect((await fetch(path, { method: "DELETE" })).status).toBe(401);
    const cancel = await fetch(path, { method: "DELETE", headers: { authorization: "Bearer admin-token-0123456789abcdef" } });
    expect(cancel.status).toBe(202);
    expect(nomad.job(build)?.Stop).toBe(true);
    for (let i = 0; i < 200 && !gitea.statuses.some((s) => s.sha === sha && s.status === "error"); i++) await sleep(25);
    expect(gitea.statuses.filter((s) => s.sha === sha).at(-1)).toMatchObject({ status: "error", description: "build cancelled" });
  });

  it("finishes an in-flight delivery on SIGTERM-style stop, then refuses new connections", async () => {
    // A follower of a build that never ends must not hold the stop: its stream ends as a broken transfer.
    const running = await deliver(petrel.url, Buffer.from(PUSH.toString("utf8").replaceAll(COMMIT, "c".repeat(40))));
    const { build } = (await running.json()) as { build: string };
    nomad.placeAlloc(build);
    nomad.startTask(build);
    nomad.writeLog(build, "stdout", "still going\n");
    const follower = await fetch(`${petrel.url}/builds/${encodeURIComponent(build)}/logs?type=stdout`, {
      headers: { authorization: "Bearer admin-token-0123456789abcdef" },
    });
    const followed = follower.text().then(
      () => "ended cleanly",
      (err: unknown) => err,
    );

    nomad.setLatency(600);
    const body = Buffer.from(PUSH.toString("utf8").replaceAll(COMMIT, "9".repeat(40)));
    const from = nomad.requests.length;
    const inFlight = deliver(petrel.url, body);
    // The delivery has reached Nomad (which answers 600 ms later): it is in flight when the stop begins.
    await eventually(
      () => nomad.requests.slice(from).some((r) => r.path === "/v1/job/builder" || r.path === "/v1/job/builder/dispatch"),
      5000,
      "the delivery's request to Nomad",
    );
    const started = Date.now();
    const stopping = petrel.stop();
    const res = await inFlight;
    expect(res.status).toBe(201);
    await stopping;
    expect(Date.now() - started).toBeLessThan(3000);
    expect(await followed).toBeInstanceOf(Error);
    nomad.setLatency(0);
    await expect(fetch(`${petrel.url}/health`)).rejects.toThrow();
    expect(logs.text()).not.toContain(HOOK_SECRET);
    expect(logs.text()).not.toContain(GITEA_TOKEN);
  });
});
