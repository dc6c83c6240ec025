import { Agent } from "undici";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createForwardStatuses, statusRank } from "../../src/builds/forward.js";
import { createGiteaClient, createStatusReporter, type StatusReport } from "../../src/gitea/client.js";
import { type GiteaFake, startGiteaFake } from "../fakes/gitea.js";
import { captureLogs } from "../helpers/log-capture.js";

const TOKEN = "gitea-token-forward-1";
const SHA = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678";
const OLD = "builder/dispatch-1700000000-0a0a0a0a";
const NEW = "builder/dispatch-1700000500-0b0b0b0b";

describe("commit statuses only move forward (Gitea fake)", () => {
  let gitea: GiteaFake;
  let agent: Agent;
  beforeEach(async () => {
    gitea = await startGiteaFake({ token: TOKEN });
    agent = new Agent();
  });
  afterEach(async () => {
    await agent.close();
    await gitea.close();
  });

  /** A fresh process (a restart, or a new leader): nothing in memory, only what Gitea shows. */
  function replica() {
    const { log } = captureLogs("info");
    const client = createGiteaClient({ dispatcher: agent, log, retries: { retries: 0 } });
    const reporter = createStatusReporter({ client, log });
    const forward = createForwardStatuses({ client, reporter, log });
    const report = (build: string, state: StatusReport["state"], description: string, sha = SHA) =>
      forward.report({
        baseUrl: gitea.url,
        token: TOKEN,
        fullName: "acme/widgets",
        sha,
        state,
        context: "petrel/default",
        description,
        targetUrl: `https://ci.example.test/builds/${encodeURIComponent(build)}`,
        build,
      });
    const settle = async () => {
      await forward.settled();
      await reporter.drain();
    };
    return { forward, report, settle };
  }
  const shown = () => gitea.statuses.map((s) => [s.status, s.description]);
  const reads = () => gitea.requests.filter((r) => r.method === "GET").length;

  it("a restarted replica does not post again what Gitea already shows, nor anything older", async () => {
    const a = replica();
    a.report(OLD, "pending", "build dispatched");
    await a.settle();
    a.report(OLD, "pending", "running on worker-1");
    await a.settle();
    a.report(OLD, "success", "build succeeded");
    await a.settle();
    expect(shown()).toEqual([
      ["pending", "build dispatched"],
      ["pending", "running on worker-1"],
      ["success", "build succeeded"],
    ]);

    // What a new leader's first reconciliation reports, and a lagging replay of an older state.
    const b = replica();
    b.report(OLD, "success", "build succeeded");
    b.report(OLD, "pending", "running on worker-1");
    b.report(OLD, "pending", "build dispatched");
    await b.settle();
    expect(shown()).toHaveLength(3);
  });

  it("reads Gitea once per commit however many statuses it posts, and a newer build of the commit moves it on", async () => {
    const a = replica();
    const before = reads();
    a.report(OLD, "pending", "running on worker-1");
    await a.settle();
    a.report(OLD, "failure", "build failed with exit code 1");
    await a.settle();
    expect(reads() - before).toBe(1);

    const b = replica();
    b.report(NEW, "pending", "build dispatched");
    await b.settle();
    b.report(NEW, "pending", "running on worker-2");
    await b.settle();
    // The old build's state, replayed late, must not cover the new build's.
    b.report(OLD, "failure", "build failed with exit code 1");
    await b.settle();
    b.report(NEW, "success", "build succeeded");
    await b.settle();
    expect(shown()).toEqual([
      ["pending", "running on worker-1"],
      ["failure", "build failed with exit code 1"],
      ["pending", "build dispatched"],
      ["pending", "running on worker-2"],
      ["success", "build succeeded"],
    ]);
  });

  it("a reset (a new term) reads again: another leader may have posted meanwhile", async () => {
    const a = replica();
    const b = replica();
    a.report(OLD, "pending", "running on worker-1");
    await a.settle();
    b.report(OLD, "success", "build succeeded");
    await b.settle();
    a.report(OLD, "pending", "running on worker-1");
    await a.settle();
    a.forward.reset();
    a.report(OLD, "success", "build succeeded");
    await a.settle();
    expect(shown()).toEqual([
      ["pending", "running on worker-1"],
      ["success", "build succeeded"],
    ]);
  });

  it("does not post a status whose term ended before it could be checked", async () => {
    const a = replica();
    const term = new AbortController();
    term.abort();
    a.forward.report(
      {
        baseUrl: gitea.url,
        token: TOKEN,
        fullName: "acme/widgets",
        sha: SHA,
        state: "success",
        context: "petrel/default",
        description: "build succeeded",
        build: OLD,
      },
      term.signal,
    );
    await a.settle();
    expect(shown()).toEqual([]);
  });

  it("ranks what Gitea shows the way petrel words it", () => {
    expect(statusRank("pending", "build dispatched")).toBe(0);
    expect(statusRank("pending", "waiting for a client that can run it: missing drivers")).toBe(1);
    expect(statusRank("pending", "running on worker-1")).toBe(2);
    expect(statusRank("error", "build cancelled")).toBe(3);
  });
});
