import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fixtureJson } from "../gitea/fixtures.js";
import type { Cluster } from "../helpers/cluster.js";
import { GITEA_TOKEN, REPO_KEY, startCluster } from "../helpers/cluster.js";

// Repository B: registered with its own secret and Gitea token. The attacker holds only A's hook secret
// (every admin of A sees it in Gitea's webhook form) and signs deliveries that name B.
const B_KEY = "git.example.test/acme/secret-sauce";
const B_SECRET = "b-hook-secret-never-known-to-a";
const B_GITEA_TOKEN = "b-gitea-token-4d2c";
const MIRRORED_KEY = "git.example.test/acme/mirrored";
const MIRRORED_SECRET = "mirrored-hook-secret-77";

let counter = 0;
/** A fresh commit id per delivery, so no answer is a redelivery of an earlier one. */
function nextCommit(): string {
  counter += 1;
  return counter.toString(16).padStart(40, "a");
}

function pushBody(edit: (repo: Record<string, any>, json: Record<string, any>) => void = () => undefined): string {
  const json = structuredClone(fixtureJson("push.json")) as Record<string, any>;
  json.after = nextCommit();
  json.head_commit = { ...json.head_commit, id: json.after };
  edit(json.repository, json);
  return JSON.stringify(json);
}

function prBody(edit: (base: Record<string, any>, json: Record<string, any>) => void): string {
  const json = structuredClone(fixtureJson("pull_request.opened.fork.json")) as Record<string, any>;
  json.pull_request.head.sha = nextCommit();
  edit(json.pull_request.base.repo, json);
  return JSON.stringify(json);
}

describe("POST /hook binds each delivery to the repository whose secret signed it", () => {
  let c: Cluster;
  beforeAll(async () => {
    c = await startCluster();
    c.consul.set(
      `petrel/repos/${B_KEY}`,
      JSON.stringify({ hook: { secret: B_SECRET }, gitea: { url: c.gitea.url, token: B_GITEA_TOKEN }, trusted: { senders: ["dana"] } }),
    );
    c.consul.set(`petrel/secrets/${B_KEY}`, JSON.stringify({ B_DEPLOY: "b-deploy-secret" }));
    c.consul.set(
      `petrel/repos/${MIRRORED_KEY}`,
      JSON.stringify({ hook: { secret: MIRRORED_SECRET }, clone_url: "file:///srv/git/mirrored.git", trusted: { senders: ["dana"] } }),
    );
    for (let i = 0; i < 200 && ((await c.registry.get(B_KEY)) === undefined || (await c.registry.get(MIRRORED_KEY)) === undefined); i++)
      await sleep(20);
    expect(await c.registry.get(B_KEY)).toBeDefined();
  });
  afterAll(async () => {
    await c.close();
  });

  it("dispatches A's own push signed with A's secret (the control)", async () => {
    const res = await c.deliver(pushBody(), "push");
    expect(res.status).toBe(201);
  });

  const attacks: Array<[string, () => string, string]> = [
    ["B's full_name", () => pushBody((r) => (r.full_name = "acme/secret-sauce")), "push"],
    ["B's clone_url", () => pushBody((r) => (r.clone_url = "https://git.example.test/acme/secret-sauce.git")), "push"],
    ["B's ssh_url", () => pushBody((r) => (r.ssh_url = "ssh://git@git.example.test:2222/acme/secret-sauce.git")), "push"],
    [
      "B's full_name and clone_url together",
      () =>
        pushBody((r) => {
          r.full_name = "acme/secret-sauce";
          r.clone_url = "https://git.example.test/acme/secret-sauce.git";
          r.ssh_url = "ssh://git@git.example.test:2222/acme/secret-sauce.git";
        }),
      "push",
    ],
    ["a clone_url on the attacker's host", () => pushBody((r) => (r.clone_url = "https://evil.test/acme/widgets.git")), "push"],
    ["a file:// clone_url", () => pushBody((r) => (r.clone_url = "file:///srv/git/acme/secret-sauce.git")), "push"],
    ["a local path as clone_url", () => pushBody((r) => (r.clone_url = "/var/lib/petrel")), "push"],
    [
      "a pull request whose base is B",
      () =>
        prBody((b, j) => {
          b.full_name = "acme/secret-sauce";
          b.clone_url = "https://git.example.test/acme/secret-sauce.git";
          j.pull_request.head.repo = { ...b };
        }),
      "pull_request",
    ],
    ["a pull request whose base clones from a file", () => prBody((b) => (b.clone_url = "file:///tmp/evil.git")), "pull_request"],
  ];

  it.each(attacks)(
    "answers 400 repository_mismatch to A's signature over %s: nothing dispatched, no status on B",
    async (_name, body, event) => {
      await c.reporter.drain();
      const before = c.nomad.children("builder").length;
      const statusesBefore = c.gitea.statuses.length;
      const res = await c.deliver(body(), event);
      expect(res.status).toBe(400);
      const answer = (await res.json()) as { error: { code: string; message: string } };
      expect(answer.error.code).toBe("repository_mismatch");
      expect(answer.error.message).toContain(REPO_KEY);
      expect(c.nomad.children("builder").length).toBe(before);
      await c.reporter.drain();
      expect(c.gitea.statuses.length).toBe(statusesBefore);
      expect(c.gitea.statuses.filter((s) => s.repo === "secret-sauce")).toHaveLength(0);
      expect(c.gitea.requests.filter((r) => r.authorization === `token ${B_GITEA_TOKEN}`)).toHaveLength(0);
    },
  );

  it("derives REPO and REPO_URL from the entry key, keeping only the payload's scheme and port", async () => {
    const res = await c.deliver(
      pushBody((r) => {
        r.full_name = "ACME/Widgets";
        r.clone_url = "http://GIT.example.test:8443/Acme/WIDGETS.git";
      }),
      "push",
    );
    expect(res.status).toBe(201);
    const { build } = (await res.json()) as { build: string };
    expect(c.nomad.job(build)?.Meta).toMatchObject({ REPO: "acme/widgets", REPO_URL: "http://git.example.test:8443/acme/widgets.git" });
  });

  it("clones from the entry's clone_url when the operator set one, whatever the payload says", async () => {
    const res = await c.deliver(
      pushBody((r) => {
        r.full_name = "acme/mirrored";
        r.html_url = "https://git.example.test/acme/mirrored";
        r.clone_url = "https://git.example.test/acme/mirrored.git";
        r.ssh_url = "git@git.example.test:acme/mirrored.git";
      }),
      "push",
      { secret: MIRRORED_SECRET },
    );
    expect(res.status).toBe(201);
    const { build } = (await res.json()) as { build: string };
    expect(c.nomad.job(build)?.Meta).toMatchObject({ REPO: "acme/mirrored", REPO_URL: "file:///srv/git/mirrored.git" });
  });

  it.each([
    ["a push ref that git would read as an option", () => pushBody((_r, j) => (j.ref = "refs/heads/-oProxyCommand=touch /tmp/x"))],
    ["a push ref with a newline", () => pushBody((_r, j) => (j.ref = "refs/heads/main\nFOO=bar"))],
    ["a push ref with ..", () => pushBody((_r, j) => (j.ref = "refs/heads/../../config"))],
    ["a pull request head branch with a control character", () => prBody((_b, j) => (j.pull_request.head.ref = "feature\u001b[31m"))],
  ])("answers 400 to %s and dispatches nothing", async (_name, body) => {
    const before = c.nomad.children("builder").length;
    const event = body().includes('"pull_request"') ? "pull_request" : "push";
    const res = await c.deliver(body(), event);
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe("bad_request");
    expect(c.nomad.children("builder").length).toBe(before);
  });

  it("posted every status of this file with A's token only", async () => {
    await c.reporter.drain();
    expect(c.gitea.requests.filter((r) => r.method === "POST").every((r) => r.authorization === `token ${GITEA_TOKEN}`)).toBe(true);
  });
});
