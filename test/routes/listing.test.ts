import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Leadership } from "../../src/cluster/leadership.js";
import { readConfig } from "../../src/config.js";
import type { RunningPetrel } from "../../src/main.js";
import { startPetrel } from "../../src/main.js";
import type { ConsulFake } from "../fakes/consul.js";
import { startConsulFake } from "../fakes/consul.js";
import type { GiteaFake } from "../fakes/gitea.js";
import { startGiteaFake } from "../fakes/gitea.js";
import type { NomadFake } from "../fakes/nomad.js";
import { startNomadFake } from "../fakes/nomad.js";
import { GITEA_TOKEN, HOOK_SECRET, seedFakes } from "../helpers/cluster.js";
import { captureLogs } from "../helpers/log-capture.js";

// GET /builds as an attacker sees it (issue 9, finding 6) and who may read what (finding 4): a listing costs
// Nomad a number of requests bounded by its page size, whoever asks, and never reads builds it will not show.

const ADMIN = "admin-token-0123456789abcdef";
const HOST = "git.example.test";

interface Listing {
  builds: { id: string; repo: string }[];
  hidden: number;
  cursor?: string;
}

describe("listing builds over HTTP (cluster mode against the fakes)", () => {
  let consul: ConsulFake;
  let nomad: NomadFake;
  let gitea: GiteaFake;
  let petrel: RunningPetrel;
  const ids: Record<"open" | "closed" | "unknown" | "stated" | "flagged", string[]> = {
    open: [],
    closed: [],
    unknown: [],
    stated: [],
    flagged: [],
  };

  const repoOf = {
    open: "acme/open",
    closed: "acme/closed",
    unknown: "acme/unknown",
    stated: "acme/stated",
    flagged: "acme/flagged",
  } as const;

  async function dispatch(kind: keyof typeof repoOf, meta: Record<string, string> = {}): Promise<string> {
    const res = await fetch(`${nomad.url}/v1/job/builder/dispatch`, {
      method: "POST",
      body: JSON.stringify({
        Meta: { REPO_URL: `https://${HOST}/${repoOf[kind]}.git`, COMMIT: "4c1d7e0", BRANCH: "main", FLAVOR: "default", ...meta },
      }),
    });
    const id = ((await res.json()) as { DispatchedJobID: string }).DispatchedJobID;
    ids[kind].push(id);
    // SubmitTime orders listings and the fake's clock has millisecond steps: wait for it to move.
    const submitted = Date.now();
    while (Date.now() === submitted) await new Promise((r) => setImmediate(r));
    return id;
  }

  const get = (path: string, token?: string) =>
    fetch(`${petrel.url}${path}`, token === undefined ? {} : { headers: { authorization: `Bearer ${token}` } });

  beforeAll(async () => {
    consul = await startConsulFake();
    nomad = await startNomadFake();
    gitea = await startGiteaFake({ token: GITEA_TOKEN });
    seedFakes(consul, nomad, gitea.url);
    // supersede off: the leader's check of each new build's branch would add Nomad reads to the ones counted here.
    const entry = (extra: Record<string, unknown>) => JSON.stringify({ hook: { secret: HOOK_SECRET }, supersede: false, ...extra });
    consul.set(`petrel/repos/${HOST}/acme/open`, entry({ logs: "public" }));
    consul.set(`petrel/repos/${HOST}/acme/closed`, entry({ logs: "token" }));
    consul.set(`petrel/repos/${HOST}/acme/unknown`, entry({}));
    consul.set(`petrel/repos/${HOST}/acme/stated`, entry({ private: false }));
    consul.set(`petrel/repos/${HOST}/acme/flagged`, entry({}));
    // Oldest first: a few public builds, then many a reader without the token may not see.
    for (let i = 0; i < 3; i++) await dispatch("open");
    await dispatch("stated");
    await dispatch("flagged", { PRIVATE: "false" });
    await dispatch("flagged", { PRIVATE: "true" });
    for (let i = 0; i < 20; i++) await dispatch(i % 2 ? "closed" : "unknown");
    const env = { NOMAD_ADDR: nomad.url, CONSUL_HTTP_ADDR: consul.url, PETREL_LISTEN: "127.0.0.1:0", PETREL_ADMIN_TOKEN: ADMIN };
    // A replica that does not lead: no tracker or policies read Nomad beside the listings counted here.
    const follower: Leadership = { isLeader: () => false, term: () => undefined, onChange: () => () => undefined };
    petrel = await startPetrel(readConfig(env), captureLogs("warn").log, env, { leadership: follower });
  });

  afterAll(async () => {
    await petrel.stop();
    await Promise.all([consul.close(), nomad.close(), gitea.close()]);
  });

  /** Nomad requests made while `run` ran: this replica does not lead, so every call is the listing's. */
  async function nomadCalls(run: () => Promise<void>) {
    const before = nomad.requests.length;
    await run();
    const calls = nomad.requests.slice(before);
    expect(calls.filter((r) => r.path.startsWith("/v1/event/stream") || r.path.startsWith("/v1/var/"))).toEqual([]);
    return calls;
  }

  it("costs an anonymous ?limit=1 one list call plus one build's reads, and never reads hidden builds", async () => {
    let body: Listing | undefined;
    const calls = await nomadCalls(async () => {
      const res = await get("/builds?limit=1");
      expect(res.status).toBe(200);
      body = (await res.json()) as Listing;
    });
    // The newest build an anonymous reader may see is the newest public one, past the 21 it may not.
    expect(body?.builds.map((b) => b.id)).toEqual([ids.flagged[0]]);
    expect(body?.hidden).toBe(21);
    expect(body?.cursor).toEqual(expect.any(String));
    expect(calls.filter((c) => c.path === "/v1/jobs")).toHaveLength(1);
    // Counted by what they name: reads of one build only, the one on the page.
    const reads = calls.filter((c) => c.path.startsWith("/v1/job/"));
    expect(reads.length).toBeLessThanOrEqual(3);
    expect(reads.every((c) => decodeURIComponent(c.path).includes(ids.flagged[0] as string))).toBe(true);
    const hidden = [...ids.closed, ...ids.unknown, ids.flagged[1] as string];
    expect(calls.filter((c) => hidden.some((id) => decodeURIComponent(c.path).includes(id)))).toEqual([]);
  });

  it("pages with cursor through every build, in order, without repeats", async () => {
    const whole = (await (await get("/builds?limit=500", ADMIN)).json()) as Listing;
    expect(whole.builds).toHaveLength(26);
    expect(whole.hidden).toBe(0);
    const seen: string[] = [];
    let cursor: string | undefined;
    for (let pages = 0; pages < 10; pages++) {
      let onPage: string[] = [];
      const calls = await nomadCalls(async () => {
        const res = await get(`/builds?limit=7${cursor === undefined ? "" : `&cursor=${cursor}`}`, ADMIN);
        const page = (await res.json()) as Listing;
        onPage = page.builds.map((b) => b.id);
        seen.push(...onPage);
        cursor = page.cursor;
      });
      // Finished or not, a page of 7 reads at most its 7 builds (job, allocations, evaluations) plus the list.
      expect(calls.filter((c) => c.path === "/v1/jobs").length).toBeLessThanOrEqual(1);
      const reads = calls.filter((c) => c.path.startsWith("/v1/job/"));
      expect(reads.length).toBeLessThanOrEqual(3 * 7);
      expect(reads.every((c) => onPage.some((id) => decodeURIComponent(c.path).includes(id)))).toBe(true);
      if (cursor === undefined) break;
    }
    expect(seen).toEqual(whole.builds.map((b) => b.id));
  });

  it("does not tell an anonymous reader how many builds a private repository or a guessed ref has", async () => {
    for (const query of ["repo=acme/closed", "repo=acme/closed&ref=main", "ref=main"]) {
      const body = (await (await get(`/builds?${query}`)).json()) as Listing;
      if (query.startsWith("repo=")) expect(body.builds).toEqual([]);
      expect(body).not.toHaveProperty("hidden");
    }
    const admin = (await (await get("/builds?repo=acme/closed", ADMIN)).json()) as Listing;
    expect(admin.builds.length).toBeGreaterThan(0);
    expect(admin.hidden).toBe(0);
  });

  it("answers 400 to a cursor it did not give out", async () => {
    for (const cursor of [
      "nonsense",
      "",
      Buffer.from("12.").toString("base64url"),
      Buffer.from("x.builder/dispatch-1-1").toString("base64url"),
    ]) {
      const res = await get(`/builds?cursor=${encodeURIComponent(cursor)}`);
      expect(res.status).toBe(400);
      expect(((await res.json()) as { error: { code: string } }).error.code).toBe("bad_request");
    }
  });

  it("serves a build to anonymous readers only when the entry or the forge's payload says it is public", async () => {
    const status = async (id: string | undefined, token?: string) => (await get(`/builds/${encodeURIComponent(id ?? "")}`, token)).status;
    expect(await status(ids.open[0])).toBe(200);
    expect(await status(ids.stated[0])).toBe(200);
    expect(await status(ids.flagged[0])).toBe(200);
    // Forge said private; the operator said token; nobody said anything: all need the token.
    expect(await status(ids.flagged[1])).toBe(401);
    expect(await status(ids.closed[0])).toBe(401);
    expect(await status(ids.unknown[0])).toBe(401);
    expect(await status(ids.unknown[0], ADMIN)).toBe(200);
    const logs = await get(`/builds/${encodeURIComponent(ids.unknown[0] ?? "")}/logs`);
    expect(logs.status).toBe(401);
  });
});
