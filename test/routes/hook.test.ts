import { setTimeout as sleep } from "node:timers/promises";
import fc from "fast-check";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { fixtureBytes } from "../gitea/fixtures.js";
import type { Cluster } from "../helpers/cluster.js";
import { DEPLOY_KEY, DEPLOY_TOKEN, GITEA_TOKEN, HOOK_SECRET, REPO_KEY, startCluster } from "../helpers/cluster.js";

const PUSH = fixtureBytes("push.json");
const FORK_PR = fixtureBytes("pull_request.opened.fork.json");
const PUSH_COMMIT = "4c1d7e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d";

async function until<T>(what: () => T | undefined, ms = 5000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = what();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error("condition not met in time");
    await sleep(10);
  }
}

/** A body that differs from the push fixture only in its commit, so it is a distinct build. */
function pushOf(commit: string): Buffer {
  return Buffer.from(PUSH.toString("utf8").replaceAll(PUSH_COMMIT, commit));
}

describe("POST /hook", () => {
  let c: Cluster;
  beforeAll(async () => {
    c = await startCluster();
  });
  afterAll(async () => {
    await c.close();
  });

  it("dispatches one build for a signed push, with meta and the trusted sender's secrets", async () => {
    const res = await c.deliver(PUSH, "push");
    expect(res.status).toBe(201);
    const body = (await res.json()) as { build: string; status: string; logs: string };
    expect(body.build).toMatch(/^builder\/dispatch-\d+-[0-9a-f]{8}$/);
    expect(body.status).toBe(`https://ci.example.test/builds/${encodeURIComponent(body.build)}`);
    expect(body.logs).toBe(`${body.status}/logs`);
    const job = c.nomad.job(body.build);
    expect(job?.Meta).toMatchObject({
      REPO_URL: "https://git.example.test/acme/widgets.git",
      COMMIT: PUSH_COMMIT,
      BRANCH: "main",
      FLAVOR: "default",
      REPO: "acme/widgets",
      EVENT: "push",
      TRUSTED: "true",
      PRIVATE: "true",
      CACHES: "npm=~/.npm",
    });
    const payload = JSON.parse(Buffer.from(String(job?.Payload), "base64").toString("utf8"));
    expect(payload).toEqual({ secrets: { DEPLOY_TOKEN }, deploy_key: DEPLOY_KEY });

    const status = await until(() => c.gitea.statuses.find((s) => s.sha === PUSH_COMMIT));
    expect(status).toMatchObject({ owner: "acme", repo: "widgets", status: "pending", context: "petrel/default", target_url: body.status });
    expect(c.gitea.requests.find((r) => r.method === "POST")?.authorization).toBe(`token ${GITEA_TOKEN}`);
  });

  it("answers a redelivery with 200 and the same build, and dispatches nothing new", async () => {
    const commit = "1111111111111111111111111111111111111111";
    const first = await c.deliver(pushOf(commit), "push");
    const again = await c.deliver(pushOf(commit), "push");
    expect(first.status).toBe(201);
    expect(again.status).toBe(200);
    expect(await again.json()).toEqual(await first.json());
    expect(c.nomad.children("builder").filter((id) => c.nomad.job(id)?.Meta?.COMMIT === commit)).toHaveLength(1);
  });

  it("a retried delivery that finds its build posts the dispatch-time pending once, if the first never got it to Gitea", async () => {
    const commit = "3131313131313131313131313131313131313131";
    await c.settle();
    c.gitea.failNext(1, 422);
    const first = await c.deliver(pushOf(commit), "push");
    expect(first.status).toBe(201);
    await c.settle();
    expect(c.gitea.statuses.filter((s) => s.sha === commit)).toHaveLength(0);
    for (let i = 0; i < 3; i++) expect((await c.deliver(pushOf(commit), "push")).status).toBe(200);
    await c.settle();
    const rows = c.gitea.statuses.filter((s) => s.sha === commit);
    expect(rows.map((s) => [s.status, s.description])).toEqual([["pending", "build dispatched"]]);
    // Read once for the commit, then known.
    expect(c.gitea.requests.filter((r) => r.method === "GET" && r.path.includes(`/commits/${commit}/status`))).toHaveLength(1);
  });

  it("gives one build for two concurrent identical deliveries, even on a Nomad that races", async () => {
    c.nomad.setDispatchRace(true);
    try {
      const commit = "2222222222222222222222222222222222222222";
      const answers = await Promise.all([c.deliver(pushOf(commit), "push"), c.deliver(pushOf(commit), "push")]);
      const bodies = (await Promise.all(answers.map((r) => r.json()))) as Array<{ build: string }>;
      expect(answers.map((r) => r.status).sort()).toEqual([200, 201]);
      expect(bodies[0]?.build).toBe(bodies[1]?.build);
      expect(c.nomad.children("builder").filter((id) => c.nomad.job(id)?.Meta?.COMMIT === commit)).toHaveLength(1);
    } finally {
      c.nomad.setDispatchRace(false);
    }
  });

  it("builds a fork pull request without secrets and marks it untrusted", async () => {
    const res = await c.deliver(FORK_PR, "pull_request");
    expect(res.status).toBe(201);
    const { build } = (await res.json()) as { build: string };
    const job = c.nomad.job(build);
    expect(job?.Meta).toMatchObject({
      COMMIT: "b1a2c3d4e5f60718293a4b5c6d7e8f9012345678",
      EVENT: "pull_request",
      PR: "17",
      TRUSTED: "false",
      REPO_URL: "https://git.example.test/acme/widgets.git",
    });
    expect(job?.Payload ?? null).toBeNull();
  });

  it("builds a tag push with the tag name", async () => {
    const res = await c.deliver(fixtureBytes("push.tag.json"), "push");
    expect(res.status).toBe(201);
    const { build } = (await res.json()) as { build: string };
    expect(c.nomad.job(build)?.Meta).toMatchObject({ EVENT: "tag", TAG: expect.any(String) });
  });

  it.each([
    ["push.tag-deleted.json", "push", /deleted/],
    ["delete.branch.json", "delete", /delete/],
    ["create.tag.json", "create", /create/],
    ["pull_request.closed.merged.json", "pull_request", /closed/],
    ["pull_request.label_updated.json", "pull_request", /label_updated/],
  ])("skips %s with a reason", async (file, event, reason) => {
    const before = c.nomad.children("builder").length;
    const res = await c.deliver(fixtureBytes(file), event);
    expect(res.status).toBe(200);
    const body = (await res.json()) as { status: string; reason: string };
    expect(body.status).toBe("skipped");
    expect(body.reason).toMatch(reason);
    expect(c.nomad.children("builder").length).toBe(before);
  });

  it.each([
    ["a wrong signature", { "x-gitea-signature": "0".repeat(64), "x-hub-signature-256": null }],
    ["no signature at all", { "x-gitea-signature": null, "x-hub-signature-256": null }],
    ["empty signature headers", { "x-gitea-signature": "", "x-hub-signature-256": "sha256=" }],
    ["a short signature", { "x-gitea-signature": "abc123", "x-hub-signature-256": null }],
    ["non-hex signature", { "x-gitea-signature": "z".repeat(64), "x-hub-signature-256": null }],
    ["sha256= on X-Gitea-Signature", { "x-gitea-signature": "sha256=PLACEHOLDER", "x-hub-signature-256": null }],
  ])("answers 401 for %s and dispatches nothing", async (_name, headers) => {
    const before = c.nomad.children("builder").length;
    const fixed = { ...headers } as Record<string, string | null>;
    if (fixed["x-gitea-signature"] === "sha256=PLACEHOLDER") {
      const { sign } = await import("../../src/gitea/signature.js");
      fixed["x-gitea-signature"] = `sha256=${sign(HOOK_SECRET, PUSH)}`;
    }
    const res = await c.deliver(PUSH, "push", { headers: fixed });
    expect(res.status).toBe(401);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe("unauthorized");
    expect(c.nomad.children("builder").length).toBe(before);
  });

  it("answers 401 for a payload signed with another repository's secret", async () => {
    const res = await c.deliver(PUSH, "push", { secret: "someone-elses-secret" });
    expect(res.status).toBe(401);
  });

  it("answers 404 for an unregistered repository", async () => {
    const other = Buffer.from(PUSH.toString("utf8").replaceAll("acme/widgets", "acme/gadgets"));
    const res = await c.deliver(other, "push");
    expect(res.status).toBe(404);
    const body = (await res.json()) as { error: { code: string; message: string } };
    expect(body.error.code).toBe("not_registered");
    expect(body.error.message).toContain("git.example.test/acme/gadgets");
  });

  it("answers 400 for a body that is not JSON, and for JSON without a repository", async () => {
    const bad = await c.deliver("{not json", "push");
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: { code: string } }).error.code).toBe("malformed_body");
    const norepo = await c.deliver(JSON.stringify({ ref: "refs/heads/main" }), "push");
    expect(norepo.status).toBe(400);
    expect(((await norepo.json()) as { error: { message: string } }).error.message).toMatch(/repository/);
  });

  it("answers 400 for a signed push whose fields are malformed", async () => {
    const broken = JSON.stringify({ ...JSON.parse(PUSH.toString()), after: 42 });
    const res = await c.deliver(broken, "push");
    expect(res.status).toBe(400);
  });

  it("answers 400 for an unknown flavor", async () => {
    const res = await c.deliver(PUSH, "push", { query: "?flavor=nix" });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { message: string } }).error.message).toMatch(/nix/);
  });

  it("answers 415 for a body that is neither JSON nor Gitea's form encoding", async () => {
    const res = await c.deliver(PUSH, "push", { headers: { "content-type": "text/plain" } });
    expect(res.status).toBe(415);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe("unsupported_media_type");
  });

  it("accepts Gitea's form encoding, where the signature covers the decoded payload", async () => {
    const commit = "3333333333333333333333333333333333333333";
    const json = pushOf(commit);
    const form = Buffer.from(`payload=${encodeURIComponent(json.toString("utf8"))}`);
    const { sign } = await import("../../src/gitea/signature.js");
    const res = await c.deliver(form, "push", {
      headers: {
        "content-type": "application/x-www-form-urlencoded",
        "x-gitea-signature": sign(HOOK_SECRET, json),
        "x-hub-signature-256": null,
      },
    });
    expect(res.status).toBe(201);
  });

  it("answers 413 for a body over 1 MiB", async () => {
    const big = Buffer.alloc(1024 * 1024 + 1, 0x20);
    const res = await c.deliver(big, "push");
    expect(res.status).toBe(413);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe("payload_too_large");
  });

  it("retries a Nomad 500 and then dispatches", async () => {
    c.nomad.failNext(1, 500, "rpc error: leader lost", { method: "POST", path: /dispatch/ });
    const res = await c.deliver(pushOf("4444444444444444444444444444444444444444"), "push");
    expect(res.status).toBe(201);
  });

  it("answers 502 with Nomad's message when Nomad refuses the dispatch for good", async () => {
    c.nomad.failNext(2, 500, "parameterized job not found", { method: "POST", path: /dispatch/ });
    const res = await c.deliver(pushOf("5555555555555555555555555555555555555555"), "push");
    expect(res.status).toBe(502);
    const body = (await res.json()) as { error: { code: string; message: string } };
    expect(body.error.code).toBe("upstream_error");
    expect(body.error.message).toContain("parameterized job not found");
    // Refused for good means tried once: the second queued failure answers the next delivery, then none is left.
    expect((await c.deliver(pushOf("5555555555555555555555555555555555555555"), "push")).status).toBe(502);
    expect((await c.deliver(pushOf("5555555555555555555555555555555555555555"), "push")).status).toBe(201);
  });

  it("logs a refused dispatch once, where it becomes the response", async () => {
    const before = c.logs().length;
    c.nomad.failNext(1, 403, "Permission denied", { method: "POST", path: /dispatch/ });
    const res = await c.deliver(pushOf("5656565656565656565656565656565656565656"), "push");
    expect(res.status).toBe(502);
    const records = c
      .logs()
      .slice(before)
      .split("\n")
      .filter((l) => l.includes("Permission denied"))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(records).toHaveLength(1);
    expect(records[0]).toMatchObject({ msg: "request failed", upstream: "nomad", upstreamStatus: 403, status: 502 });
  });

  it("keeps secrets, tokens and signatures out of the logs", async () => {
    await c.deliver(pushOf("6666666666666666666666666666666666666666"), "push");
    await c.deliver(PUSH, "push", { headers: { "x-gitea-signature": "f".repeat(64), "x-hub-signature-256": null } });
    await c.reporter.drain();
    const text = c.logs();
    expect(text).toContain("build dispatched");
    for (const secret of [HOOK_SECRET, GITEA_TOKEN, DEPLOY_TOKEN, "key-material-71b3d5f9", "f".repeat(64)]) {
      expect(text).not.toContain(secret);
    }
    const { sign } = await import("../../src/gitea/signature.js");
    expect(text).not.toContain(sign(HOOK_SECRET, PUSH));
  });

  it("counts deliveries by outcome in /metrics", async () => {
    const res = await c.app.request("/metrics");
    const text = await res.text();
    expect(text).toMatch(/petrel_webhook_deliveries_total\{outcome="dispatched"\} [1-9]/);
    expect(text).toMatch(/petrel_webhook_deliveries_total\{outcome="unauthorized"\} [1-9]/);
    expect(text).toMatch(/petrel_dispatch_duration_seconds_count\{result="ok"\} [1-9]/);
  });

  it("never answers 5xx or crashes for arbitrary bodies and headers", async () => {
    const before = c.nomad.children("builder").length;
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(fc.string(), fc.json(), fc.constant(PUSH.toString("utf8"))),
        fc.constantFrom("push", "pull_request", "delete", "", "issues"),
        fc.record({
          "content-type": fc.constantFrom("application/json", "application/x-www-form-urlencoded", "text/plain", ""),
          "x-gitea-signature": fc.oneof(fc.string(), fc.stringMatching(/^[0-9a-f]{64}$/)),
        }),
        async (body, event, headers) => {
          const res = await c.deliver(body, event, { headers: { ...headers, "x-hub-signature-256": null } });
          expect(res.status).toBeLessThan(500);
          const parsed = (await res.json()) as Record<string, unknown>;
          expect(typeof parsed).toBe("object");
        },
      ),
      { numRuns: 150 },
    );
    // Nothing arbitrary was signed with the secret, so nothing was dispatched.
    expect(c.nomad.children("builder").length).toBe(before);
  });

  it("answers correctly signed deliveries with hostile field values with 2xx or 4xx and a code, never building from payload names", async () => {
    const hostile = fc.oneof(
      fc.string(),
      fc.string({ unit: "binary" }),
      fc.constantFrom(
        "file:///etc",
        "/var/lib/petrel",
        "--upload-pack=touch /tmp/pwned",
        "https://evil.test/acme/widgets.git",
        "https://git.example.test/acme/secret-sauce.git",
        "https://git.example.test@evil.test/acme/widgets.git",
        "http://GIT.example.test:1/ACME/widgets",
        "ssh://git@git.example.test:2222/acme/widgets.git",
        "acme/secret-sauce",
        "ACME/Widgets",
        "refs/heads/-oProxyCommand=x",
        "refs/heads/main\r\nevent: state",
        "refs/heads/../../x",
        "refs/pull/1/head",
        "refs/tags/v1",
        "0".repeat(40),
        "",
        "\u0000",
        "x".repeat(5000),
      ),
      fc.integer(),
      fc.constant(null),
      fc.boolean(),
      fc.dictionary(fc.string(), fc.string()),
    );
    const pushPaths = [
      ["ref"],
      ["after"],
      ["head_commit", "id"],
      ["repository", "full_name"],
      ["repository", "clone_url"],
      ["repository", "ssh_url"],
      ["repository", "private"],
      ["sender", "login"],
    ];
    const prPaths = [
      ["action"],
      ["number"],
      ["pull_request", "head", "ref"],
      ["pull_request", "head", "sha"],
      ["pull_request", "head", "repo", "full_name"],
      ["pull_request", "head", "repo", "clone_url"],
      ["pull_request", "base", "repo", "full_name"],
      ["pull_request", "base", "repo", "clone_url"],
      ["pull_request", "base", "repo", "ssh_url"],
      ["repository", "full_name"],
      ["repository", "clone_url"],
      ["sender", "login"],
    ];
    const set = (json: Record<string, any>, path: string[], value: unknown) => {
      let at = json;
      for (const p of path.slice(0, -1)) {
        if (typeof at[p] !== "object" || at[p] === null) at[p] = {};
        at = at[p];
      }
      at[path[path.length - 1]!] = value;
    };
    const base = { push: JSON.parse(PUSH.toString("utf8")), pull_request: JSON.parse(FORK_PR.toString("utf8")) };
    // A warm registry, so a 503 can only come from the delivery (when this case runs alone it runs first).
    for (let i = 0; i < 50 && (await c.registry.get(REPO_KEY).catch(() => undefined)) === undefined; i++) await sleep(100);
    const seen = new Set(c.nomad.children("builder"));
    const statuses: number[] = [];
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom("push" as const, "pull_request" as const),
        fc.array(fc.tuple(fc.nat(), hostile), { minLength: 1, maxLength: 4 }),
        fc.string({ minLength: 40, maxLength: 40, unit: fc.constantFrom(..."0123456789abcdef") }),
        async (event, edits, commit) => {
          const json = structuredClone(base[event]) as Record<string, any>;
          // A fresh commit per run, so a run that passes the checks is a new build rather than a redelivery.
          if (event === "push") json.after = commit;
          else json.pull_request.head.sha = commit;
          const paths = event === "push" ? pushPaths : prPaths;
          for (const [index, value] of edits) set(json, paths[index % paths.length]!, value);
          const res = await c.deliver(JSON.stringify(json), event);
          statuses.push(res.status);
          expect(res.status).toBeGreaterThanOrEqual(200);
          expect(res.status).toBeLessThan(500);
          const answer = (await res.json()) as { error?: { code?: unknown }; build?: unknown; status?: unknown };
          if (res.status >= 400) expect(typeof answer.error?.code).toBe("string");
          else expect(answer.build ?? answer.status).toBeDefined();
        },
      ),
      { numRuns: 200 },
    );
    // Whatever got through was built from the entry's identity, never from a name in the payload.
    const dispatched = c.nomad.children("builder").filter((id) => !seen.has(id));
    for (const id of dispatched) {
      const meta = c.nomad.job(id)?.Meta ?? {};
      expect(meta.REPO).toBe("acme/widgets");
      expect(meta.REPO_URL).toMatch(/^https?:\/\/git\.example\.test(:\d+)?\/acme\/widgets\.git$/);
    }
    // The fuzzing reached past authentication: some runs were refused for their content, some built.
    expect(statuses.some((s) => s === 400)).toBe(true);
    expect(statuses.some((s) => s === 201 || s === 200)).toBe(true);
  });
});

describe("POST /hook when upstreams fail", () => {
  let c: Cluster;
  afterEach(async () => {
    await c.close();
  });

  it("answers 503 within Gitea's delivery timeout while Nomad is down, and dispatches after a redelivery", async () => {
    c = await startCluster({ budgetMs: 1500 });
    c.nomad.setDown(true);
    const started = Date.now();
    const res = await c.deliver(PUSH, "push");
    expect(res.status).toBe(503);
    expect(Date.now() - started).toBeLessThan(5000);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe("nomad_unavailable");
    expect(c.gitea.statuses).toHaveLength(0);
    c.nomad.setDown(false);
    const again = await c.deliver(PUSH, "push");
    expect(again.status).toBe(201);
  });

  it("keeps serving from the warm registry while Consul is down, without asking Consul", async () => {
    c = await startCluster();
    expect((await c.deliver(PUSH, "push")).status).toBe(201);
    const before = c.consul.requests.length;
    // Warm: a webhook costs no Consul request.
    expect((await c.deliver(pushOf("7777777777777777777777777777777777777777"), "push")).status).toBe(201);
    expect(c.consul.requests.filter((r) => !r.query.index).length).toBe(
      c.consul.requests.slice(0, before).filter((r) => !r.query.index).length,
    );
    await c.consul.setDown(true);
    // The registry has noticed the outage (its watch failed), and still serves from what it holds.
    await until(() => (c.registry.health().ok ? undefined : true));
    const res = await c.deliver(pushOf("8888888888888888888888888888888888888888"), "push");
    expect(res.status).toBe(201);
    expect(c.registry.health().ok).toBe(false);
    await c.consul.setDown(false);
  });

  it("answers 503 when Consul never answered and the registry is cold", async () => {
    c = await startCluster();
    await c.consul.setDown(true);
    // A fresh registry against a dead Consul: the cluster helper made one already warmed by nothing.
    const { createConsulRegistry } = await import("../../src/consul/registry.js");
    const { createConsulClient } = await import("../../src/consul/client.js");
    const { Agent } = await import("undici");
    const { captureLogs } = await import("../helpers/log-capture.js");
    const agent = new Agent();
    const { log } = captureLogs();
    const cold = createConsulRegistry({
      consul: createConsulClient({ addr: c.consul.url, dispatcher: agent, log, retry: { retries: 0 } }),
      defaultBuilder: "builder",
      log,
      firstLoadTimeoutMs: 300,
      watch: { wait: "1s", minIntervalMs: 20, backoff: { minMs: 20, maxMs: 50 } },
    });
    await expect(cold.get(REPO_KEY)).rejects.toMatchObject({ status: 503, code: "consul_unavailable" });
    await cold.close();
    await agent.close();
    await c.consul.setDown(false);
  });
});
