import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readConfig } from "../../src/config.js";
import { sign } from "../../src/gitea/signature.js";
import { type RunningPetrel, startPetrel } from "../../src/main.js";
import { type ConsulFake, startConsulFake } from "../fakes/consul.js";
import { type GiteaFake, startGiteaFake } from "../fakes/gitea.js";
import { type NomadFake, startNomadFake } from "../fakes/nomad.js";
import { fixtureBytes } from "../gitea/fixtures.js";
import { GITEA_TOKEN, HOOK_SECRET, seedFakes } from "../helpers/cluster.js";
import { captureLogs } from "../helpers/log-capture.js";

describe("a replica whose Nomad token may not write the leader variable", () => {
  let consul: ConsulFake;
  let nomad: NomadFake;
  let gitea: GiteaFake;
  let petrel: RunningPetrel;
  const logs = captureLogs("info");

  beforeAll(async () => {
    consul = await startConsulFake();
    nomad = await startNomadFake({ aclToken: "management-token-1", tokensWithoutVariables: ["jobs-only-token-1"] });
    gitea = await startGiteaFake({ token: GITEA_TOKEN });
    seedFakes(consul, nomad, gitea.url);
    const env = {
      NOMAD_ADDR: nomad.url,
      NOMAD_TOKEN: "jobs-only-token-1",
      CONSUL_HTTP_ADDR: consul.url,
      PETREL_LISTEN: "127.0.0.1:0",
      PETREL_URL: "https://ci.example.test",
    };
    petrel = await startPetrel(readConfig(env), logs.log, env);
  });
  afterAll(async () => {
    await petrel.stop();
    await Promise.all([consul.close(), nomad.close(), gitea.close()]);
  });

  it("says so once, serves webhooks and reads, never leads and never posts from the event stream", async () => {
    let health: { leader?: boolean; leaderError?: string } = {};
    for (let i = 0; i < 100 && health.leaderError === undefined; i++) {
      await sleep(20);
      health = (await (await fetch(`${petrel.url}/health`)).json()) as typeof health;
    }
    expect(health.leader).toBe(false);
    expect(health.leaderError).toMatch(/NOMAD_TOKEN may not write the Nomad variable "petrel\/leader"/);
    const errors = logs.lines.filter((l) => l.includes('"level":50'));
    expect(errors).toHaveLength(1);
    expect(errors[0]).toContain('variables { path \\"petrel/leader\\" { capabilities = [\\"write\\"] } }');
    expect(errors[0]).not.toContain("jobs-only-token-1");

    const body = fixtureBytes("push.json");
    const res = await fetch(`${petrel.url}/hook`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-gitea-event": "push", "x-gitea-signature": sign(HOOK_SECRET, body) },
      body: new Uint8Array(body),
    });
    expect(res.status).toBe(201);
    const { build } = (await res.json()) as { build: string };
    nomad.placeAlloc(build);
    nomad.finishTask(build, 0);
    await sleep(500);
    // Only the webhook's own pending: the event stream's statuses are the leader's, and there is none.
    expect(gitea.statuses.map((s) => [s.status, s.description])).toEqual([["pending", "build dispatched"]]);
    expect(await (await fetch(`${petrel.url}/metrics`)).text()).toMatch(/^petrel_leader 0$/m);
  });
});
