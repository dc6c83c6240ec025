import { randomUUID } from "node:crypto";
import { pino } from "pino";
import { Agent, request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { UpstreamError } from "../../src/errors.js";
import {
  clampDescription,
  createGiteaClient,
  createStatusReporter,
  type GiteaClient,
  MAX_DESCRIPTION,
  type PostStatusInput,
  type ReportOutcome,
} from "../../src/gitea/client.js";
import type { CommitState } from "../../src/gitea/schema.js";
import { type GiteaFake, startGiteaFake } from "../fakes/gitea.js";

/**
 * Contract tests run against the fake, or against a real Gitea/Forgejo when GITEA_URL is set together with
 * GITEA_TOKEN (write:repository), GITEA_REPO (owner/name) and GITEA_SHA (a commit of that repository).
 */
const REAL = process.env.GITEA_URL
  ? {
      baseUrl: process.env.GITEA_URL,
      token: process.env.GITEA_TOKEN ?? "",
      fullName: process.env.GITEA_REPO ?? "",
      sha: process.env.GITEA_SHA ?? "",
    }
  : undefined;
const fakeOnly = REAL ? it.skip : it;

const FAKE_TOKEN = "gitea-token-c0ffee";
const FAST = { retries: 3, minDelayMs: 5, maxDelayMs: 20 };

function capture() {
  const lines: string[] = [];
  const log = pino({ level: "debug" }, { write: (s: string) => void lines.push(s) });
  return { log, lines, records: () => lines.map((l) => JSON.parse(l) as Record<string, unknown>) };
}

let fake: GiteaFake | undefined;
let agent: Agent;
const allLines: string[] = [];
let target: { baseUrl: string; token: string; owner: string; repo: string; sha: string };

beforeAll(async () => {
  agent = new Agent();
  if (REAL) {
    const [owner = "", repo = ""] = REAL.fullName.split("/");
    target = { baseUrl: REAL.baseUrl, token: REAL.token, owner, repo, sha: REAL.sha };
  } else {
    fake = await startGiteaFake({ token: FAKE_TOKEN, readOnlyTokens: ["read-only-token"] });
    target = {
      baseUrl: fake.url,
      token: FAKE_TOKEN,
      owner: "acme",
      repo: "widgets",
      sha: "4c1d7e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d",
    };
  }
});

afterAll(async () => {
  await fake?.close();
  await agent.close();
  for (const secret of [FAKE_TOKEN, REAL?.token].filter(Boolean)) {
    for (const line of allLines) expect(line).not.toContain(secret);
  }
});

function client(retries = FAST): { gitea: GiteaClient; lines: string[]; records: () => Record<string, unknown>[] } {
  const { log, lines, records } = capture();
  const gitea = createGiteaClient({ dispatcher: agent, log, retries });
  return { gitea, lines: trackLines(lines), records };
}

function trackLines(lines: string[]): string[] {
  // Every log line of every test is checked for the token at the end.
  const push = lines.push.bind(lines);
  lines.push = (...items: string[]) => {
    allLines.push(...items);
    return push(...items);
  };
  return lines;
}

function status(over: Partial<PostStatusInput> = {}): PostStatusInput {
  return {
    ...target,
    state: "pending",
    context: `petrel-test/${randomUUID().slice(0, 8)}`,
    description: "build dispatched",
    targetUrl: "http://petrel.example.test/builds/builder%2Fdispatch-1700000000-1a2b3c4d",
    ...over,
  };
}

function resetFake(): void {
  if (!fake) return;
  fake.requests.length = 0;
  fake.failNext(0, 500);
  fake.unknownShaFor(0);
}

async function rejection(p: Promise<unknown>): Promise<UpstreamError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(UpstreamError);
  return err as UpstreamError;
}

describe("gitea client: commit statuses", () => {
  it("creates a status and the combined view shows it under its context", async () => {
    resetFake();
    const { gitea } = client();
    const input = status({ state: "success", description: "exit 0" });
    const created = await gitea.postStatus(input);
    expect(created).toMatchObject({ status: "success", context: input.context, description: "exit 0" });
    const combined = await gitea.combinedStatus({ ...target, ref: target.sha });
    const row = combined.statuses.find((s) => s.context === input.context);
    expect(row).toMatchObject({ status: "success", target_url: input.targetUrl });
  });

  fakeOnly("sends `Authorization: token <t>` in lower case and the create-status body", async () => {
    resetFake();
    const { gitea } = client();
    const input = status();
    await gitea.postStatus(input);
    const req = fake?.requests.at(-1);
    expect(req?.method).toBe("POST");
    expect(req?.path).toBe(`/api/v1/repos/acme/widgets/statuses/${target.sha}`);
    expect(req?.authorization).toBe(`token ${FAKE_TOKEN}`);
    expect(JSON.parse(req?.body ?? "")).toEqual({
      state: "pending",
      description: "build dispatched",
      context: input.context,
      target_url: input.targetUrl,
    });
  });

  it("cuts descriptions to 140 characters", async () => {
    resetFake();
    const { gitea } = client();
    const input = status({ description: `failed: ${"x".repeat(300)}` });
    const created = await gitea.postStatus(input);
    expect(created?.description).toHaveLength(MAX_DESCRIPTION);
    expect(created?.description?.endsWith("…")).toBe(true);
  });

  it("fails at once with Gitea's message on 401", async () => {
    resetFake();
    const { gitea } = client();
    const err = await rejection(gitea.postStatus(status({ token: "not-a-token" })));
    expect(err.upstreamStatus).toBe(401);
    expect(err.unavailable).toBe(false);
    if (fake) {
      expect(err.message).toContain("token is required");
      expect(fake.requests).toHaveLength(1);
    }
  });

  it("is refused with a capitalised `Token` scheme, which Gitea does not recognise", async () => {
    resetFake();
    const res = await request(`${target.baseUrl}/api/v1/repos/${target.owner}/${target.repo}/statuses/${target.sha}`, {
      method: "POST",
      dispatcher: agent,
      headers: { authorization: `Token ${target.token}`, "content-type": "application/json" },
      body: JSON.stringify({ state: "pending", context: "petrel-test/case", description: "" }),
    });
    const body = await res.body.json();
    expect(res.statusCode).toBe(401);
    expect(body).toHaveProperty("message");
  });

  fakeOnly("fails at once on 403 for a token without write access", async () => {
    resetFake();
    const { gitea } = client();
    const err = await rejection(gitea.postStatus(status({ token: "read-only-token" })));
    expect(err.upstreamStatus).toBe(403);
    expect(err.message).toContain("write:repository");
    expect(fake?.requests).toHaveLength(1);
  });

  fakeOnly("retries a 500 and then succeeds, logging each retry without the token", async () => {
    resetFake();
    fake?.failNext(2, 500);
    const { gitea, records } = client();
    const input = status();
    expect(await gitea.postStatus(input)).toMatchObject({ status: "pending" });
    expect(fake?.requests).toHaveLength(3);
    expect(fake?.statuses.filter((s) => s.context === input.context)).toHaveLength(1);
    const retries = records().filter((r) => r.msg === "gitea request failed; retrying");
    expect(retries).toHaveLength(2);
    expect(retries[0]).toMatchObject({ repo: "acme/widgets", sha: target.sha, state: "pending", status: 500, level: 40 });
  });

  fakeOnly("retries a 404 while the commit is not readable yet", async () => {
    resetFake();
    fake?.unknownShaFor(2);
    const { gitea } = client();
    expect(await gitea.postStatus(status())).toMatchObject({ status: "pending" });
    expect(fake?.requests).toHaveLength(3);
  });

  fakeOnly("gives up on a 404 that persists after its retries", async () => {
    resetFake();
    fake?.unknownShaFor(100);
    const { gitea } = client();
    const err = await rejection(gitea.postStatus(status()));
    expect(err.upstreamStatus).toBe(404);
    expect(fake?.requests).toHaveLength(FAST.retries + 1);
    fake?.unknownShaFor(0);
  });

  fakeOnly("does not retry a 422", async () => {
    resetFake();
    fake?.failNext(1, 422);
    const { gitea } = client();
    expect((await rejection(gitea.postStatus(status()))).upstreamStatus).toBe(422);
    expect(fake?.requests).toHaveLength(1);
  });

  it("reports an unreachable Gitea as unavailable after retrying", async () => {
    const down = await startGiteaFake({ token: FAKE_TOKEN });
    await down.close();
    const { gitea, records } = client();
    const err = await rejection(gitea.postStatus(status({ baseUrl: down.url })));
    expect(err.upstreamStatus).toBe(0);
    expect(err.unavailable).toBe(true);
    expect(records().filter((r) => r.msg === "gitea request failed; retrying")).toHaveLength(FAST.retries);
  });

  fakeOnly("stops retrying when its signal is aborted", async () => {
    resetFake();
    fake?.failNext(1000, 503);
    const { gitea } = client({ retries: 1000, minDelayMs: 20, maxDelayMs: 20 });
    const controller = new AbortController();
    setTimeout(() => controller.abort(new Error("shutting down")), 100);
    const started = performance.now();
    await expect(gitea.postStatus(status(), { signal: controller.signal })).rejects.toThrow("shutting down");
    expect(performance.now() - started).toBeLessThan(2000);
    fake?.failNext(0, 500);
  });

  fakeOnly("stops retrying when giveUp says so", async () => {
    resetFake();
    fake?.failNext(1000, 503);
    const { gitea } = client({ retries: 1000, minDelayMs: 1, maxDelayMs: 1 });
    let calls = 0;
    const input = status();
    const err = await rejection(gitea.postStatus(input, { giveUp: () => ++calls >= 2 }));
    expect(err.upstreamStatus).toBe(503);
    fake?.failNext(0, 500);
    // Count only this call's requests: an attempt aborted by the previous test can still reach the fake late.
    expect(fake?.requests.filter((r) => r.body.includes(input.context))).toHaveLength(2);
  });

  it("refuses a gitea URL that is not http(s)", async () => {
    const { gitea } = client();
    await expect(gitea.postStatus(status({ baseUrl: "ftp://git.example.test" }))).rejects.toMatchObject({
      code: "config_invalid",
    });
  });
});

describe("gitea client: reads", () => {
  it("reads the server version", async () => {
    const { gitea } = client();
    expect(await gitea.version({ baseUrl: target.baseUrl, token: target.token })).toMatch(/\S/);
  });

  fakeOnly("shows the latest status per context in the combined view", async () => {
    resetFake();
    const { gitea } = client();
    const context = "petrel/latest";
    const sha = "e7a3b5c9d1f2a4b6c8d0e2f4a6b8c0d2e4f6a8b0";
    await gitea.postStatus(status({ sha, context, state: "pending" }));
    await gitea.postStatus(status({ sha, context, state: "failure", description: "exit 2" }));
    const combined = await gitea.combinedStatus({ ...target, ref: sha });
    expect(combined).toMatchObject({ state: "failure", total_count: 1 });
    expect(combined.statuses.map((s) => s.status)).toEqual(["failure"]);
  });

  fakeOnly("reads an empty combined status from an older server's empty body", async () => {
    const old = await startGiteaFake({ token: FAKE_TOKEN, emptyCombinedBody: true });
    try {
      const { gitea } = client();
      const combined = await gitea.combinedStatus({ ...target, baseUrl: old.url, ref: target.sha });
      expect(combined).toEqual({ state: "", statuses: [] });
    } finally {
      await old.close();
    }
  });
});

describe("clampDescription", () => {
  it("keeps short text and never splits a surrogate pair", () => {
    expect(clampDescription("  ok  ")).toBe("ok");
    const long = "🙂".repeat(200);
    const cut = clampDescription(long);
    expect(Array.from(cut)).toHaveLength(MAX_DESCRIPTION);
    // A lone surrogate would not survive a UTF-8 round trip.
    expect(Buffer.from(cut, "utf8").toString("utf8")).toBe(cut);
  });
});

/** A client whose calls the test resolves or rejects by hand. */
function manualClient() {
  const calls: Array<{ input: PostStatusInput; resolve: () => void; reject: (e: unknown) => void }> = [];
  const gitea: GiteaClient = {
    postStatus: (input) => new Promise((resolve, reject) => calls.push({ input, resolve: () => resolve(undefined), reject })),
    combinedStatus: () => Promise.reject(new Error("unused")),
    version: () => Promise.reject(new Error("unused")),
  };
  return { gitea, calls };
}

function resultsRecorder() {
  const results: Array<[CommitState, boolean, ReportOutcome]> = [];
  return { results, onResult: (state: CommitState, ok: boolean, outcome: ReportOutcome) => void results.push([state, ok, outcome]) };
}

const report = (over: Partial<ReturnType<typeof status>> = {}) => {
  const { owner, repo, ...rest } = status(over);
  return { ...rest, fullName: `${owner}/${repo}` };
};

describe("status reporter", () => {
  it("returns at once, and drain waits for the report in flight", async () => {
    const { gitea, calls } = manualClient();
    const { log } = capture();
    const { results, onResult } = resultsRecorder();
    const reporter = createStatusReporter({ client: gitea, log, onResult });
    reporter.report(report());
    expect(results).toEqual([]);
    let drained = false;
    const draining = reporter.drain().then(() => (drained = true));
    await new Promise((r) => setTimeout(r, 20));
    expect(drained).toBe(false);
    expect(calls).toHaveLength(1);
    calls[0]?.resolve();
    await draining;
    expect(results).toEqual([["pending", true, "ok"]]);
  });

  it("never throws, even when the client throws synchronously or the repository name is bad", async () => {
    const { log, records } = capture();
    const { results, onResult } = resultsRecorder();
    const throwing: GiteaClient = {
      postStatus: () => {
        throw new Error("boom");
      },
      combinedStatus: () => Promise.reject(new Error("unused")),
      version: () => Promise.reject(new Error("unused")),
    };
    const reporter = createStatusReporter({ client: throwing, log, onResult });
    expect(() => reporter.report(report())).not.toThrow();
    expect(() => reporter.report({ ...report(), fullName: "no-slash" })).not.toThrow();
    await reporter.drain();
    expect(results.map((r) => r[2])).toEqual(["failed", "failed"]);
    expect(records().filter((r) => r.level === 50)).toHaveLength(2);
  });

  it("posts in order per commit and context", async () => {
    resetFake();
    const { log, lines } = capture();
    trackLines(lines);
    const reporter = createStatusReporter({ client: client().gitea, log });
    const context = `petrel/order-${randomUUID().slice(0, 6)}`;
    reporter.report(report({ context, state: "pending" }));
    await reporter.drain();
    reporter.report(report({ context, state: "success" }));
    await reporter.drain();
    const combined = await client().gitea.combinedStatus({ ...target, ref: target.sha });
    expect(combined.statuses.find((s) => s.context === context)?.status).toBe("success");
    if (fake) expect(fake.statuses.filter((s) => s.context === context).map((s) => s.status)).toEqual(["pending", "success"]);
  });

  fakeOnly("drops a status that a newer one for the same context replaced while it was retrying", async () => {
    resetFake();
    fake?.failNext(3, 503);
    const { log, lines } = capture();
    trackLines(lines);
    const { results, onResult } = resultsRecorder();
    const gitea = createGiteaClient({ dispatcher: agent, log, retries: { retries: 10, minDelayMs: 30, maxDelayMs: 30 } });
    const reporter = createStatusReporter({ client: gitea, log, onResult });
    const context = "petrel/superseded";
    reporter.report(report({ context, state: "pending" }));
    while ((fake?.requests.length ?? 0) < 1) await new Promise((r) => setTimeout(r, 2));
    reporter.report(report({ context, state: "success" }));
    reporter.report(report({ context: "petrel/other", state: "pending" }));
    await reporter.drain();
    expect(fake?.statuses.filter((s) => s.context === context).map((s) => s.status)).toEqual(["success"]);
    expect(fake?.statuses.some((s) => s.context === "petrel/other")).toBe(true);
    expect(results).toContainEqual(["pending", false, "superseded"]);
    expect(results).toContainEqual(["success", true, "ok"]);
  });

  fakeOnly("logs a refused token at error level with repo, sha and state but never the token", async () => {
    resetFake();
    const { log, lines, records } = capture();
    trackLines(lines);
    const { results, onResult } = resultsRecorder();
    const reporter = createStatusReporter({ client: client().gitea, log, onResult });
    reporter.report(report({ token: "wrong-token-123456", state: "failure" }));
    await reporter.drain();
    expect(results).toEqual([["failure", false, "failed"]]);
    const line = records().find((r) => r.msg === "commit status not posted");
    expect(line).toMatchObject({ level: 50, repo: "acme/widgets", sha: target.sha, state: "failure", status: 401 });
    expect(lines.join("\n")).not.toContain("wrong-token-123456");
    expect(lines.join("\n")).not.toContain(FAKE_TOKEN);
  });

  fakeOnly("logs an outage at warn level after its retries", async () => {
    resetFake();
    fake?.failNext(100, 502);
    const { log, records } = capture();
    const reporter = createStatusReporter({ client: client().gitea, log });
    reporter.report(report());
    await reporter.drain();
    expect(records().find((r) => r.msg === "commit status not posted")).toMatchObject({ level: 40, status: 502 });
    fake?.failNext(0, 500);
  });

  it("survives an onResult callback that throws", async () => {
    const { gitea, calls } = manualClient();
    const { log } = capture();
    const reporter = createStatusReporter({
      client: gitea,
      log,
      onResult: () => {
        throw new Error("metrics down");
      },
    });
    reporter.report(report());
    await new Promise((r) => setTimeout(r, 0));
    calls[0]?.resolve();
    await expect(reporter.drain()).resolves.toBeUndefined();
  });
});
