import { Agent } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readConfig } from "../../src/config.js";
import { createConsulClient } from "../../src/consul/client.js";
import type { RunningPetrel } from "../../src/main.js";
import { startPetrel } from "../../src/main.js";
import { createConsulStopMarks } from "../../src/policies/marks.js";
import type { ConsulFake } from "../fakes/consul.js";
import { startConsulFake } from "../fakes/consul.js";
import type { GiteaFake } from "../fakes/gitea.js";
import { startGiteaFake } from "../fakes/gitea.js";
import type { NomadFake } from "../fakes/nomad.js";
import { startNomadFake } from "../fakes/nomad.js";
import { clusterEnv, GITEA_TOKEN, seedFakes } from "../helpers/cluster.js";
import { captureLogs } from "../helpers/log-capture.js";
import { eventually } from "../helpers/wait.js";

const SUPERSEDED = { state: "cancelled", reason: "superseded by builder/dispatch-1700000100-00000002" } as const;
const META = { REPO_URL: "https://git.example.test/acme/widgets.git", COMMIT: "abcdef0", BRANCH: "main", FLAVOR: "default" };

describe("stop reasons in Consul are deleted once Nomad forgets their builds", () => {
  let consul: ConsulFake;
  let agent: Agent;

  beforeAll(async () => {
    consul = await startConsulFake();
    agent = new Agent();
  });
  afterAll(async () => {
    await agent.close();
    await consul.close();
  });

  it("deletes the marks of builds that no longer exist and keeps the rest, and forgets what it cached", async () => {
    const marks = createConsulStopMarks({ consul: createConsulClient({ addr: consul.url, dispatcher: agent }), prefix: "p1" });
    for (const id of ["builder/dispatch-1-gone", "builder/dispatch-2-live", "builder/dispatch-3-gone"]) await marks.put(id, SUPERSEDED);
    expect(await marks.get("builder/dispatch-1-gone")).toEqual(SUPERSEDED);
    consul.set("p1/other", "not a mark");
    const asked: string[] = [];
    const deleted = await marks.prune(async (id) => {
      asked.push(id);
      return id.endsWith("-live");
    });
    expect(deleted).toBe(2);
    expect(asked.sort()).toEqual(["builder/dispatch-1-gone", "builder/dispatch-2-live", "builder/dispatch-3-gone"]);
    expect(consul.entry("p1/stopped/builder/dispatch-1-gone")).toBeUndefined();
    expect(consul.entry("p1/stopped/builder/dispatch-3-gone")).toBeUndefined();
    expect(consul.entry("p1/stopped/builder/dispatch-2-live")).toBeDefined();
    expect(consul.entry("p1/other")?.value?.toString()).toBe("not a mark");
    // Not answered from a cache that still holds the deleted mark.
    expect(await marks.get("builder/dispatch-1-gone")).toBeUndefined();
  });

  it("stops a pass at the first build Nomad cannot answer for: that mark and the ones after it stay", async () => {
    const marks = createConsulStopMarks({ consul: createConsulClient({ addr: consul.url, dispatcher: agent }), prefix: "p3" });
    for (const id of ["builder/dispatch-1-gone", "builder/dispatch-2-unknown", "builder/dispatch-3-gone"]) await marks.put(id, SUPERSEDED);
    // Keys are listed in order; Nomad answers 404 for the first, then fails (a 503, or down).
    await expect(
      marks.prune(async (id) => {
        if (id.endsWith("-unknown")) throw new Error("Nomad unavailable (503)");
        return false;
      }),
    ).rejects.toThrow("Nomad unavailable (503)");
    expect(consul.entry("p3/stopped/builder/dispatch-1-gone")).toBeUndefined();
    expect(consul.entry("p3/stopped/builder/dispatch-2-unknown")).toBeDefined();
    expect(consul.entry("p3/stopped/builder/dispatch-3-gone")).toBeDefined();
  });

  it("keeps a mark rewritten while the pass looked at it (check-and-set)", async () => {
    const marks = createConsulStopMarks({ consul: createConsulClient({ addr: consul.url, dispatcher: agent }), prefix: "p2" });
    await marks.put("builder/dispatch-1-again", SUPERSEDED);
    const deleted = await marks.prune(async (id) => {
      // Stopped again (a new reason) between the listing and the delete.
      consul.set(`p2/stopped/${id}`, JSON.stringify({ state: "error", reason: "timed out after 2h" }));
      return false;
    });
    expect(deleted).toBe(0);
    expect(JSON.parse(String(consul.entry("p2/stopped/builder/dispatch-1-again")?.value))).toEqual({
      state: "error",
      reason: "timed out after 2h",
    });
  });
});

describe("the leader prunes stop reasons against Nomad (cluster mode, fakes)", () => {
  let consul: ConsulFake;
  let nomad: NomadFake;
  let gitea: GiteaFake;
  let petrel: RunningPetrel;

  beforeAll(async () => {
    consul = await startConsulFake();
    nomad = await startNomadFake();
    gitea = await startGiteaFake({ token: GITEA_TOKEN });
    seedFakes(consul, nomad, gitea.url);
  });
  afterAll(async () => {
    await petrel?.stop();
    await Promise.all([consul.close(), nomad.close(), gitea.close()]);
  });

  it("deletes the reason of a build Nomad garbage-collected and keeps the one of a build it still has", async () => {
    const dispatch = async () => {
      const res = await fetch(`${nomad.url}/v1/job/builder/dispatch`, { method: "POST", body: JSON.stringify({ Meta: META }) });
      return ((await res.json()) as { DispatchedJobID: string }).DispatchedJobID;
    };
    const kept = await dispatch();
    const forgotten = await dispatch();
    for (const id of [kept, forgotten]) consul.set(`petrel/stopped/${id}`, JSON.stringify(SUPERSEDED));
    nomad.placeAlloc(forgotten);
    nomad.startTask(forgotten);
    nomad.finishTask(forgotten, 0);
    nomad.gcJob(forgotten);
    const env = clusterEnv({ consul, nomad });
    const logs = captureLogs("info");
    petrel = await startPetrel(readConfig(env), logs.log, env, { stopMarksPruneMs: 100 });
    await eventually(() => consul.entry(`petrel/stopped/${forgotten}`) === undefined, 10_000, "the forgotten build's reason deleted");
    // Said once the pass that deleted it ends.
    await eventually(() => logs.text().includes("deleted the stop reasons of builds Nomad has forgotten"), 5000, "the pass's log line");
    // Three passes later (each asks Nomad for the kept build), its reason is still there.
    const asked = () => nomad.requests.filter((r) => r.method === "GET" && r.path === `/v1/job/${encodeURIComponent(kept)}`).length;
    await eventually(() => asked() >= 3, 10_000, "three prune passes over the kept build");
    expect(consul.entry(`petrel/stopped/${kept}`)).toBeDefined();
  });
});
