import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { Agent } from "undici";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { readConfig } from "../../src/config.js";
import { sign } from "../../src/gitea/signature.js";
import type { RunningPetrel, StartOptions } from "../../src/main.js";
import { startPetrel } from "../../src/main.js";
import { createNomadClient } from "../../src/nomad/client.js";
import { nomadFinishedBuilds } from "../../src/nomad/finished.js";
import { MERGED_LOG_PATH } from "../../src/nomad/logs.js";
import type { ConsulFake } from "../fakes/consul.js";
import { startConsulFake } from "../fakes/consul.js";
import type { GiteaFake } from "../fakes/gitea.js";
import { startGiteaFake } from "../fakes/gitea.js";
import type { NomadFake } from "../fakes/nomad.js";
import { startNomadFake } from "../fakes/nomad.js";
import { fixtureBytes } from "../gitea/fixtures.js";
import { clusterEnv, GITEA_TOKEN, HOOK_SECRET, seedFakes, testRepoEntry } from "../helpers/cluster.js";
import { captureLogs } from "../helpers/log-capture.js";
import { builderJob } from "../nomad/target.js";

const PUSH = fixtureBytes("push.json");
const COMMIT = "4c1d7e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d";
const ADMIN = { authorization: "Bearer admin-token-0123456789abcdef" };
const DAY = 24 * 3600 * 1000;

const sha = (n: number) => n.toString(16).padStart(40, "e");

describe("archive start-up pass (cluster mode, Nomad fake)", () => {
  let consul: ConsulFake;
  let nomad: NomadFake;
  let gitea: GiteaFake;
  let petrel: RunningPetrel | undefined;
  let dir: string;
  let env: Record<string, string>;
  let logs: ReturnType<typeof captureLogs>;

  const start = async (options: StartOptions = {}) => {
    logs = captureLogs("info");
    // The fake's logs are whole when a task ends: no settle needed for its last bytes.
    petrel = await startPetrel(readConfig(env), logs.log, env, { archiveSettleMs: 50, ...options });
    return petrel;
  };
  const stop = async () => {
    await petrel?.stop();
    petrel = undefined;
  };
  const archived = (id: string) => existsSync(join(dir, "builds", encodeURIComponent(id), "build.json"));
  const until = async (what: () => boolean, ms = 30_000) => {
    for (const end = Date.now() + ms; !what() && Date.now() < end; ) await sleep(25);
    return what();
  };
  const push = async (url: string, commit: string): Promise<string> => {
    const body = Buffer.from(PUSH.toString("utf8").replaceAll(COMMIT, commit));
    const res = await fetch(`${url}/hook`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-gitea-event": "push", "x-gitea-signature": sign(HOOK_SECRET, body) },
      body: new Uint8Array(body),
    });
    expect(res.status).toBe(201);
    return ((await res.json()) as { build: string }).build;
  };
  const run = (id: string, n: number) => {
    nomad.placeAlloc(id, { node: "worker-2" });
    nomad.startTask(id);
    nomad.writeLog(id, "stdout", `build ${n} out\n`);
    nomad.writeLog(id, "stderr", `build ${n} err\n`);
    nomad.writeAllocFile(id, MERGED_LOG_PATH, `build ${n} out\nbuild ${n} err\n`);
    nomad.finishTask(id, n % 3 === 0 ? 1 : 0);
  };

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), "petrel-archive-startup-"));
    consul = await startConsulFake();
    nomad = await startNomadFake();
    gitea = await startGiteaFake({ token: GITEA_TOKEN });
    // Many pushes of one branch, each followed to its end: nothing supersedes here.
    seedFakes(consul, nomad, gitea.url, testRepoEntry(gitea.url, { supersede: false }));
    env = clusterEnv(
      { consul, nomad },
      {
        PETREL_ARCHIVE_DIR: dir,
      },
    );
  });

  afterEach(async () => {
    await stop();
    await Promise.all([consul.close(), nomad.close(), gitea.close()]);
    rmSync(dir, { recursive: true, force: true });
  });

  it("archives every build that ended while petrel was down, beyond the reconcile's 50 newest and its 24 h window", async () => {
    const first = await start();
    const ids: string[] = [];
    for (let n = 0; n < 60; n++) ids.push(await push(first.url, sha(n)));
    await stop();
    ids.forEach((id, n) => {
      run(id, n);
    });
    // Two days later: the reconcile window holds none of them, so only the start-up pass can archive them.
    const later = Date.now() + 2 * DAY;
    const second = await start({ now: () => Date.now() + 2 * DAY });
    // A webhook during the pass is answered as usual.
    const during = await push(second.url, sha(1000));
    expect(await until(() => ids.every(archived))).toBe(true);
    expect(archived(during)).toBe(false);
    expect(logs.text()).toMatch(/"builds":0[^\n]*reconciled recent builds with Nomad/);
    await until(() => logs.text().includes("archived the finished builds the archive lacked"));
    expect(logs.text()).toMatch(/"checked":60,"archived":60[^\n]*archived the finished builds the archive lacked/);
    // Nomad was listed in pages, never read whole.
    expect(nomad.requests.filter((r) => r.path.startsWith("/v1/jobs") && r.query.per_page !== undefined).length).toBeGreaterThan(0);
    expect(Date.now()).toBeLessThan(later);

    // Nomad forgets them all: each is served from the archive, with its state and logs.
    for (const id of ids) nomad.gcJob(id);
    const listed: { id: string; state: string }[] = [];
    let cursor: string | undefined;
    do {
      const page = (await (
        await fetch(`${second.url}/builds?limit=25${cursor ? `&cursor=${cursor}` : ""}`, { headers: ADMIN })
      ).json()) as {
        builds: { id: string; state: string }[];
        cursor?: string;
      };
      listed.push(...page.builds);
      cursor = page.cursor;
    } while (cursor !== undefined);
    const mine = listed.filter((b) => ids.includes(b.id));
    expect(mine.map((b) => b.id).sort()).toEqual([...ids].sort());
    expect(mine.filter((b) => b.state === "failure")).toHaveLength(20);
    const n = 59;
    const stdout = await fetch(`${second.url}/builds/${encodeURIComponent(ids[n] as string)}/logs?type=stdout`, { headers: ADMIN });
    expect(await stdout.text()).toBe(`build ${n} out\n`);
  }, 60_000);

  it("archives at the next start the builds still queued for archiving when petrel stopped", async () => {
    const first = await start();
    const ids: string[] = [];
    for (let n = 0; n < 8; n++) ids.push(await push(first.url, sha(2000 + n)));
    ids.forEach((id, n) => {
      run(id, n);
    });
    // Every final status is posted: the tracker reported each build, so each is in the archiver's queue.
    const final = (id: string) => {
      const commit = sha(2000 + ids.indexOf(id));
      return gitea.statuses.some((s) => s.sha === commit && (s.status === "success" || s.status === "failure"));
    };
    expect(await until(() => ids.every(final))).toBe(true);
    await stop();
    // A build that just ended waits a moment before it is archived: the stop came first for some.
    const left = ids.filter((id) => !archived(id));
    expect(left.length).toBeGreaterThan(0);

    await start();
    expect(await until(() => ids.every(archived))).toBe(true);
  }, 60_000);

  it("waits for a term of leadership to run the pass", async () => {
    const first = await start();
    const id = await push(first.url, sha(3000));
    await stop();
    run(id, 1);
    const listeners: ((leader: boolean) => void)[] = [];
    let term: AbortController | undefined;
    const leadership = {
      isLeader: () => term !== undefined,
      term: () => term?.signal,
      onChange: (l: (leader: boolean) => void) => {
        listeners.push(l);
        return () => undefined;
      },
    };
    await start({ leadership, now: () => Date.now() + 2 * DAY });
    await sleep(500);
    expect(archived(id)).toBe(false);
    term = new AbortController();
    for (const l of listeners) l(true);
    expect(await until(() => archived(id))).toBe(true);
  }, 30_000);
});

describe("nomadFinishedBuilds", () => {
  it("lists every dead child of each builder in pages, passing Nomad's next token back", async () => {
    const nomad = await startNomadFake();
    try {
      nomad.registerJob(builderJob("builder"));
      nomad.registerJob(builderJob("builder-two"));
      const agent = new Agent();
      const client = createNomadClient({ addr: nomad.url, dispatcher: agent });
      const dispatch = async (builder: string, n: number) =>
        (
          await client.dispatch(builder, {
            meta: { REPO_URL: "https://git.example.test/acme/widgets.git", COMMIT: sha(n), BRANCH: "main", FLAVOR: "default" },
            idempotencyToken: `t${builder}${n}`,
          })
        ).id;
      const dead: string[] = [];
      for (let n = 0; n < 23; n++) {
        const id = await dispatch("builder", n);
        // Every third still runs (not final): left out.
        if (n % 3 === 0) {
          nomad.placeAlloc(id);
          nomad.startTask(id);
        } else {
          nomad.placeAlloc(id);
          nomad.finishTask(id, 0);
          dead.push(id);
        }
      }
      // A builder whose name extends the first: its children share the prefix but not the parent.
      const other = await dispatch("builder-two", 99);
      nomad.placeAlloc(other);
      nomad.finishTask(other, 0);

      const pages: (readonly string[])[] = [];
      const source = nomadFinishedBuilds({ nomad: client, builders: () => new Set(["builder"]), pageSize: 5 });
      for await (const page of source(new AbortController().signal)) pages.push(page);
      expect(pages.flat().sort()).toEqual([...dead].sort());
      const listings = nomad.requests.filter((r) => r.path === "/v1/jobs");
      expect(listings.length).toBeGreaterThanOrEqual(5);
      expect(listings.every((r) => r.query.per_page === "5")).toBe(true);
      expect(listings.slice(1).every((r) => typeof r.query.next_token === "string" && r.query.next_token !== "")).toBe(true);
      await agent.close();
    } finally {
      await nomad.close();
    }
  });
});
