import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createSoleLeadership } from "../../src/cluster/leadership.js";
import { readConfig } from "../../src/config.js";
import { sign } from "../../src/gitea/signature.js";
import type { RunningPetrel } from "../../src/main.js";
import { startPetrel } from "../../src/main.js";
import type { ConsulFake } from "../fakes/consul.js";
import { startConsulFake } from "../fakes/consul.js";
import type { GiteaFake } from "../fakes/gitea.js";
import { startGiteaFake } from "../fakes/gitea.js";
import type { NomadFake } from "../fakes/nomad.js";
import { startNomadFake } from "../fakes/nomad.js";
import { fixtureJson } from "../gitea/fixtures.js";
import { clusterEnv, GITEA_TOKEN, HOOK_SECRET, seedFakes } from "../helpers/cluster.js";
import { captureLogs } from "../helpers/log-capture.js";
import { eventually } from "../helpers/wait.js";

const ADMIN = { authorization: "Bearer admin-token-0123456789abcdef" };
const CRON_KEY = "git.example.test/acme/nightly";

/** The recorded push fixture, moved to another branch, commit and head commit message. */
function push(commit: string, options: { ref?: string; message?: string } = {}): Buffer {
  const body = structuredClone(fixtureJson("push.json")) as Record<string, unknown> & {
    head_commit: { id: string; message: string };
    commits?: unknown;
  };
  body.ref = options.ref ?? "refs/heads/main";
  body.after = commit;
  body.head_commit.id = commit;
  if (options.message !== undefined) body.head_commit.message = options.message;
  return Buffer.from(JSON.stringify(body));
}

function deliver(url: string, body: Buffer, event = "push", flavor?: string): Promise<Response> {
  return fetch(`${url}/hook${flavor === undefined ? "" : `?flavor=${flavor}`}`, {
    method: "POST",
    headers: { "content-type": "application/json", "x-gitea-event": event, "x-gitea-signature": sign(HOOK_SECRET, body) },
    body: new Uint8Array(body),
  });
}

async function buildOf(res: Response): Promise<string> {
  expect(res.status).toBe(201);
  return ((await res.json()) as { build: string }).build;
}

async function show(petrel: RunningPetrel, id: string): Promise<{ state: string; reason?: string; createdAt: string }> {
  return (await (await fetch(`${petrel.url}/builds/${encodeURIComponent(id)}`, { headers: ADMIN })).json()) as {
    state: string;
    reason?: string;
    createdAt: string;
  };
}

async function metric(petrel: RunningPetrel, name: string): Promise<string> {
  const text = await (await fetch(`${petrel.url}/metrics`)).text();
  return text
    .split("\n")
    .filter((l) => l.startsWith(name))
    .join("\n");
}

describe("build policies in cluster mode (real webhooks, the Nomad, Consul and Gitea fakes)", () => {
  let consul: ConsulFake;
  let nomad: NomadFake;
  let gitea: GiteaFake;
  let petrel: RunningPetrel;
  const logs = captureLogs("info");
  const env = () => clusterEnv({ consul, nomad });

  beforeAll(async () => {
    consul = await startConsulFake();
    nomad = await startNomadFake();
    gitea = await startGiteaFake({ token: GITEA_TOKEN });
    seedFakes(consul, nomad, gitea.url, {
      hook: { secret: HOOK_SECRET },
      gitea: { url: gitea.url, token: GITEA_TOKEN },
      trusted: { senders: ["dana"] },
      flavors: { default: { builder: "builder" }, slow: { builder: "builder", timeout: "2s" } },
      timeout: "1h",
    });
    petrel = await startPetrel(readConfig(env()), logs.log, env());
  });

  afterAll(async () => {
    await petrel.stop();
    await Promise.all([consul.close(), nomad.close(), gitea.close()]);
  });

  it("stops the older build of a branch when a newer commit is pushed, and reports it once", async () => {
    const older = await buildOf(await deliver(petrel.url, push("1".repeat(40), { ref: "refs/heads/feature" })));
    nomad.placeAlloc(older);
    nomad.startTask(older);
    await eventually(() => gitea.statuses.some((s) => s.sha === "1".repeat(40) && s.description.startsWith("running")), 5000, "running");
    const newer = await buildOf(await deliver(petrel.url, push("2".repeat(40), { ref: "refs/heads/feature" })));

    await eventually(() => nomad.job(older)?.Stop === true, 5000, "the older build stopped in Nomad");
    expect(nomad.job(newer)?.Stop).not.toBe(true);
    await eventually(() => gitea.statuses.some((s) => s.sha === "1".repeat(40) && s.status === "error"), 5000, "error status");
    expect(await show(petrel, older)).toMatchObject({ state: "cancelled", reason: `superseded by ${newer}` });
    expect(await show(petrel, newer)).toMatchObject({ state: "queued" });
    // Let any late event or reconciliation post again, if it were going to.
    await new Promise((r) => setTimeout(r, 300));
    const errors = gitea.statuses.filter((s) => s.sha === "1".repeat(40) && s.status === "error");
    expect(errors).toHaveLength(1);
    expect(errors[0]?.description).toBe(`superseded by ${newer}`);
    expect(await metric(petrel, "petrel_builds_superseded_total")).toBe("petrel_builds_superseded_total 1");
    // The key every replica reads the reason from.
    expect(JSON.parse(String(consul.entry(`petrel/stopped/${older}`)?.value))).toEqual({
      state: "cancelled",
      reason: `superseded by ${newer}`,
    });
  });

  it("never supersedes with, or supersedes, a tag build", async () => {
    const branch = await buildOf(await deliver(petrel.url, push("3".repeat(40), { ref: "refs/heads/tagged" })));
    const tag = await buildOf(await deliver(petrel.url, push("4".repeat(40), { ref: "refs/tags/v1.0.0" })));
    const tag2 = await buildOf(await deliver(petrel.url, push("5".repeat(40), { ref: "refs/tags/v1.0.0" })));
    await new Promise((r) => setTimeout(r, 500));
    for (const id of [branch, tag, tag2]) expect(nomad.job(id)?.Stop).not.toBe(true);
  });

  it("keeps the builds of one branch apart by flavor: a nix build never supersedes the default one", async () => {
    const a = await buildOf(await deliver(petrel.url, push("6".repeat(40), { ref: "refs/heads/flavors" })));
    const b = await buildOf(await deliver(petrel.url, push("7".repeat(40), { ref: "refs/heads/flavors" }), "push", "slow"));
    await new Promise((r) => setTimeout(r, 500));
    expect(nomad.job(a)?.Stop).not.toBe(true);
    expect(nomad.job(b)?.Stop).not.toBe(true);
  });

  it("stops a build that runs past its flavor's timeout: state error, reason, status", async () => {
    const sha = "8".repeat(40);
    const build = await buildOf(await deliver(petrel.url, push(sha, { ref: "refs/heads/hang" }), "push", "slow"));
    nomad.placeAlloc(build);
    nomad.startTask(build);
    const started = Date.now();
    await eventually(() => nomad.job(build)?.Stop === true, 6000, "the hanging build stopped");
    expect(Date.now() - started).toBeGreaterThanOrEqual(1500);
    await eventually(() => gitea.statuses.some((s) => s.sha === sha && s.status === "error"), 5000, "error status");
    expect(gitea.statuses.filter((s) => s.sha === sha && s.status === "error")).toEqual([
      expect.objectContaining({ description: "timed out after 2s" }),
    ]);
    expect(await show(petrel, build)).toMatchObject({ state: "error", reason: "timed out after 2s" });
    const listed = (await (await fetch(`${petrel.url}/builds?ref=hang`, { headers: ADMIN })).json()) as {
      builds: { id: string; reason?: string }[];
    };
    expect(listed.builds.find((b) => b.id === build)?.reason).toBe("timed out after 2s");
    expect(await metric(petrel, "petrel_builds_timed_out_total")).toBe("petrel_builds_timed_out_total 1");
  });

  it("skips a push whose head commit says [skip ci], and a pull request titled [ci skip]: nothing dispatched", async () => {
    const before = nomad.children("builder").length;
    const res = await deliver(petrel.url, push("9".repeat(40), { message: "docs: typo [skip ci]" }));
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ status: "skipped", reason: "skip ci" });
    const pr = structuredClone(fixtureJson("pull_request.opened.same-repo.json")) as { pull_request: { title: string } };
    pr.pull_request.title = "[CI SKIP] wip";
    const prRes = await deliver(petrel.url, Buffer.from(JSON.stringify(pr)), "pull_request");
    expect(prRes.status).toBe(200);
    expect(await prRes.json()).toEqual({ status: "skipped", reason: "skip ci" });
    expect(nomad.children("builder")).toHaveLength(before);
  });
});

describe("two replicas that both lead (the worst case of a failover): cron and supersede", () => {
  let consul: ConsulFake;
  let nomad: NomadFake;
  let gitea: GiteaFake;
  const replicas: RunningPetrel[] = [];
  let repoDir: string;
  let head: string;
  let started: number;
  const logs = captureLogs("info");

  beforeAll(async () => {
    consul = await startConsulFake();
    nomad = await startNomadFake();
    gitea = await startGiteaFake({ token: GITEA_TOKEN });
    repoDir = mkdtempSync(join(tmpdir(), "petrel-cron-"));
    const git = (...args: string[]) => execFileSync("git", ["-C", repoDir, ...args], { encoding: "utf8" }).trim();
    git("init", "-q", "-b", "main");
    writeFileSync(join(repoDir, ".petrel"), "#!/bin/sh\necho nightly\n");
    git("add", ".");
    git("-c", "user.email=t@example.test", "-c", "user.name=t", "commit", "-qm", "first");
    head = git("rev-parse", "HEAD");
    seedFakes(consul, nomad, gitea.url);
    consul.set(
      `petrel/repos/${CRON_KEY}`,
      JSON.stringify({
        hook: { secret: HOOK_SECRET },
        clone_url: `file://${repoDir}`,
        cron: [{ name: "often", schedule: "* * * * * *", ref: "main" }],
      }),
    );
    const env = clusterEnv({ consul, nomad });
    started = Date.now();
    // Both lead at once, as two leaders may for a moment during a failover: the tokens alone must keep runs single.
    replicas.push(
      await startPetrel(readConfig(env), logs.log, env, { leadership: createSoleLeadership() }),
      await startPetrel(readConfig(env), logs.log, env, { leadership: createSoleLeadership() }),
    );
  });

  afterAll(async () => {
    await Promise.all(replicas.map((r) => r.stop()));
    await Promise.all([consul.close(), nomad.close(), gitea.close()]);
    rmSync(repoDir, { recursive: true, force: true });
  });

  it("dispatches each scheduled instant exactly once, with EVENT=cron, trusted, at the ref's commit", async () => {
    const cronBuilds = () => nomad.children("builder").filter((id) => nomad.job(id)?.Meta?.EVENT === "cron");
    await eventually(() => cronBuilds().length >= 4, 40_000, "four scheduled runs");
    await new Promise((r) => setTimeout(r, 300));
    const builds = cronBuilds();
    const tokens = builds.map((id) => nomad.job(id)?.DispatchIdempotencyToken);
    expect(new Set(tokens).size).toBe(builds.length);
    // Both replicas fired every instant (their dispatches are in the log); Nomad kept one build per instant.
    const dispatches = nomad.requests.filter((r) => r.method === "POST" && r.path.endsWith("/dispatch"));
    expect(dispatches.length).toBeGreaterThanOrEqual(2 * builds.length - 2);
    // Every build stands for one instant of the schedule (a second since the replicas started, or the one
    // run before, caught up), and no instant has two.
    const instantToken = (ms: number) =>
      createHash("sha256")
        .update(JSON.stringify(["petrel-cron/1", CRON_KEY, "often", new Date(ms).toISOString()]))
        .digest("hex");
    const valid = new Set<string>();
    for (let ms = Math.floor(started / 1000) * 1000 - 1000; ms <= Date.now(); ms += 1000) valid.add(instantToken(ms));
    for (const token of tokens) expect(valid.has(token ?? "")).toBe(true);
    for (const id of builds) {
      expect(nomad.job(id)?.Meta).toMatchObject({ EVENT: "cron", TRUSTED: "true", COMMIT: head, BRANCH: "main", REPO: "acme/nightly" });
    }
    // Whichever replica's dispatch reached Nomad first counted it dispatched, the other a duplicate.
    const counted = async (result: string) => {
      let sum = 0;
      for (const replica of replicas) {
        const text = await (await fetch(`${replica.url}/metrics`)).text();
        sum += Number(new RegExp(`petrel_cron_builds_total\\{result="${result}"\\} (\\d+)`).exec(text)?.[1] ?? 0);
      }
      return sum;
    };
    expect(await counted("dispatched")).toBeGreaterThanOrEqual(builds.length);
    expect(await counted("duplicate")).toBeGreaterThanOrEqual(1);
  }, 60_000);

  it("leaves exactly the newest of two pushes racing through two replicas running, whichever replica decides", async () => {
    for (let round = 0; round < 3; round++) {
      const ref = `refs/heads/race-${round}`;
      const [a, b] = await Promise.all([
        deliver(replicas[0]?.url ?? "", push(`${round}a`.padEnd(40, "a"), { ref })).then(buildOf),
        deliver(replicas[1]?.url ?? "", push(`${round}b`.padEnd(40, "b"), { ref })).then(buildOf),
      ]);
      // Older by submit time (the fake's are whole milliseconds), then by ID: the rule every replica applies.
      // Worked out here, not from petrel's answer, and petrel must show the same creation time.
      const submitted = (id: string) => Math.round((nomad.job(id)?.SubmitTime ?? 0) / 1e6);
      const [ta, tb] = [submitted(a), submitted(b)];
      for (const [id, t] of [
        [a, ta],
        [b, tb],
      ] as const) {
        expect((await show(replicas[0] as RunningPetrel, id)).createdAt).toBe(new Date(t).toISOString());
      }
      const [older, newer] = ta < tb || (ta === tb && a < b) ? [a, b] : [b, a];
      await eventually(() => nomad.job(older)?.Stop === true, 10_000, `round ${round}: the older build stopped`);
      await new Promise((r) => setTimeout(r, 300));
      expect(nomad.job(newer)?.Stop).not.toBe(true);
      expect(JSON.parse(String(consul.entry(`petrel/stopped/${older}`)?.value))).toEqual({
        state: "cancelled",
        reason: `superseded by ${newer}`,
      });
      // Both replicas show the same reason, whichever one stopped it.
      for (const replica of replicas) {
        const shown = (await (await fetch(`${replica.url}/builds/${encodeURIComponent(older)}`, { headers: ADMIN })).json()) as {
          reason?: string;
        };
        expect(shown.reason).toBe(`superseded by ${newer}`);
      }
    }
  });
});
