import { randomUUID } from "node:crypto";
import { Agent, request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createNomadClient, type NomadClient } from "../../src/nomad/client.js";
import { type EventStreamBatch, followEvents } from "../../src/nomad/events.js";
import { type NomadFake, type NomadFakeOptions, startNomadFake } from "../fakes/nomad.js";
import { captureLogs } from "../helpers/log-capture.js";
import { eventually } from "../helpers/wait.js";
import { createLifecycleDriver } from "./driver.js";
import { builderJob, type NomadTarget, realNomad, startTarget } from "./target.js";

// The event-stream consumer (https://developer.hashicorp.com/nomad/api-docs/events) against the fake in both of Nomad's framings, and the
// stream's wire facts against the fake or a real Nomad.

const META = { REPO_URL: "https://git.example.test/acme/widgets", COMMIT: "4c1d7e0", BRANCH: "main", FLAVOR: "default" };

/** The first bytes of a streamed answer, then the request is dropped. */
async function firstBytes(addr: string, path: string, token: string | undefined): Promise<{ status: number; text: string }> {
  const controller = new AbortController();
  const dispatcher = new Agent();
  try {
    const res = await request(`${addr}${path}`, {
      dispatcher,
      signal: controller.signal,
      headers: token ? { "x-nomad-token": token } : {},
    });
    if (res.statusCode !== 200) return { status: res.statusCode, text: await res.body.text() };
    let text = "";
    for await (const chunk of res.body) {
      text += Buffer.from(chunk as Buffer).toString();
      if (text.includes("\n")) break;
    }
    controller.abort();
    return { status: res.statusCode, text };
  } finally {
    await dispatcher.destroy();
  }
}

describe("event stream wire facts (fake or real Nomad)", () => {
  let t: NomadTarget;
  beforeAll(async () => {
    t = await startTarget();
  });
  afterAll(() => t.close());

  it("greets with {} at once", async () => {
    const res = await firstBytes(t.addr, "/v1/event/stream?topic=Job:*", t.token);
    expect(res.status).toBe(200);
    expect(res.text.split("\n")[0]).toBe("{}");
  });

  it("hands over a build's lifecycle as batches in index order, ending with its allocation's end", async () => {
    const drive = createLifecycleDriver(t);
    const builder = t.jobId("builder");
    await drive.registerBuilder(builder);
    const nomad = createNomadClient({ addr: t.addr, dispatcher: t.dispatcher, ...(t.token ? { token: t.token } : {}) });
    const batches: EventStreamBatch[] = [];
    const controller = new AbortController();
    const done = followEvents({
      nomad,
      log: captureLogs().log,
      topics: ["Job:*", "Allocation:*"],
      index: 0,
      signal: controller.signal,
      onBatch: (b) => void batches.push(b),
      onGap: () => undefined,
      retryMinMs: 20,
      retryMaxMs: 100,
    });
    type Seen = { Topic: string; Key: string; Payload?: { Allocation?: { JobID?: string; ClientStatus?: string } } };
    try {
      const id = await drive.dispatch(builder, META);
      await drive.run(id, { stdout: "built\n", exitCode: 3 });
      const mine = () => batches.flatMap((b) => b.events as Seen[]).filter((e) => e.Key === id || e.Payload?.Allocation?.JobID === id);
      const ended = (e: Seen) => e.Topic === "Allocation" && e.Payload?.Allocation?.ClientStatus === "failed";
      await eventually(() => mine().some(ended), 30_000, "the allocation's failure event");
      const indexes = batches.map((b) => b.index);
      expect(indexes).toEqual([...new Set(indexes)].sort((x, y) => x - y));
      expect(mine().some((e) => e.Topic === "Job" && e.Key === id)).toBe(true);
    } finally {
      controller.abort();
      await done;
    }
  });

  it("answers 400 to an index that is not a number", async () => {
    const res = await t.http("GET", "/v1/event/stream?index=soon&topic=Job:*");
    expect(res.status).toBe(400);
    expect(res.text).toMatch(/^Unable to parse index: /);
  });
});

describe.skipIf(realNomad).each(["close", "chunked"] as const)("following events (fake, %s-delimited)", (framing) => {
  let fake: NomadFake;
  let nomad: NomadClient;
  let agent: Agent;

  const start = async (opts: NomadFakeOptions = {}) => {
    fake = await startNomadFake({ eventFraming: framing, eventHeartbeatMs: 100, ...opts });
    agent = new Agent();
    nomad = createNomadClient({ addr: fake.url, dispatcher: agent });
    fake.registerJob(builderJob("builder"));
  };
  const stop = async () => {
    await fake.close();
    await agent.close();
  };

  function consume(index: number, extra: { onGap?: (d: { requested: number; received: number }) => void } = {}) {
    const batches: EventStreamBatch[] = [];
    const gaps: { requested: number; received: number }[] = [];
    let reconnects = 0;
    const controller = new AbortController();
    const capture = captureLogs();
    const done = followEvents({
      nomad,
      log: capture.log,
      topics: ["Job:*", "Allocation:*"],
      index,
      signal: controller.signal,
      onBatch: (b) => void batches.push(b),
      onGap: (d) => {
        gaps.push(d);
        extra.onGap?.(d);
      },
      onReconnect: () => void reconnects++,
      retryMinMs: 20,
      retryMaxMs: 100,
    });
    return { batches, gaps, reconnects: () => reconnects, logs: capture, stop: () => (controller.abort(), done), done };
  }

  const dispatch = () => nomad.dispatch("builder", { meta: META, idempotencyToken: randomUUID() });

  it("hands over each batch once, in order, and resumes at last + 1 after a cut", async () => {
    await start();
    try {
      const seen: number[] = [];
      fake.subscribe((index, events) => {
        if (events.some((e) => e.Topic === "Job" || e.Topic === "Allocation")) seen.push(index);
      });
      const from = fake.index() + 1;
      const c = consume(from);
      const a = await dispatch();
      fake.placeAlloc(a.id);
      await eventually(() => c.batches.length >= 2);
      const lastBefore = c.batches.at(-1)?.index ?? 0;
      expect(fake.cutEventStreams()).toBe(1);
      fake.startTask(a.id);
      fake.finishTask(a.id, 0);
      const b = await dispatch();
      await eventually(() => c.batches.some((x) => x.events.some((e) => e.Key === b.id)));
      await c.stop();
      const indexes = c.batches.map((x) => x.index);
      expect(indexes).toEqual([...new Set(indexes)].sort((x, y) => x - y));
      expect(indexes).toEqual(seen);
      expect(c.reconnects()).toBeGreaterThanOrEqual(1);
      const streamCalls = fake.requests.filter((r) => r.path === "/v1/event/stream");
      expect(streamCalls[0]?.query.index).toBe(String(from));
      expect(streamCalls.map((r) => Number(r.query.index))).toContain(lastBefore + 1);
      expect(c.gaps).toEqual([]);
    } finally {
      await stop();
    }
  });

  it("reports a gap when the server's buffer no longer reaches back to the index asked for", async () => {
    await start({ eventBufferSize: 3 });
    try {
      const c = consume(fake.index() + 1);
      await dispatch();
      await eventually(() => c.batches.length >= 1);
      const seen = c.batches.at(-1)?.index ?? 0;
      // While the agent is unreachable, more batches happen than it keeps (registered directly, not over HTTP).
      fake.setDown(true);
      for (let i = 0; i < 6; i++) fake.registerJob(builderJob(`other-${i}`));
      // No wait here: the batches are gone from the buffer whenever the consumer comes back.
      fake.setDown(false);
      await eventually(() => c.gaps.length > 0);
      await c.stop();
      expect(c.gaps[0]?.requested).toBe(seen + 1);
      expect(c.gaps[0]?.received).toBeGreaterThan(seen + 1);
      expect(c.batches.at(-1)?.events.some((e) => e.Key === "other-5")).toBe(true);
    } finally {
      await stop();
    }
  });

  it("reports no gap when the buffer still holds everything missed", async () => {
    await start();
    try {
      const c = consume(fake.index() + 1);
      await dispatch();
      await eventually(() => c.batches.length >= 1);
      fake.setDown(true);
      for (let i = 0; i < 3; i++) fake.registerJob(builderJob(`more-${i}`));
      fake.setDown(false);
      await eventually(() => c.batches.some((b) => b.events.some((e) => e.Key === "more-2")));
      await c.stop();
      expect(c.gaps).toEqual([]);
      expect(c.batches.filter((b) => b.events.some((e) => e.Key.startsWith("more-")))).toHaveLength(3);
    } finally {
      await stop();
    }
  });

  it("skips the newest batch the server re-delivers when nothing happened since the last one seen", async () => {
    await start();
    try {
      const newest = fake.index();
      const c = consume(newest + 1);
      // Connected and greeted: whatever the server re-delivers comes before the dispatch's batch below.
      await eventually(() => fake.openEventStreams() === 1);
      const a = await dispatch();
      await eventually(() => c.batches.length > 0);
      await c.stop();
      expect(c.batches.every((b) => b.index > newest)).toBe(true);
      expect(c.batches[0]?.events[0]?.Key).toBe(a.id);
      expect(c.gaps).toEqual([]);
    } finally {
      await stop();
    }
  });

  it("treats a 200 that closes before the first {} as a failure and retries", async () => {
    await start();
    try {
      fake.failEventStreams(2);
      const c = consume(fake.index() + 1);
      await eventually(() => fake.openEventStreams() === 1);
      const a = await dispatch();
      await eventually(() => c.batches.some((b) => b.events.some((e) => e.Key === a.id)));
      await c.stop();
      expect(c.reconnects()).toBe(2);
      expect(c.logs.text()).toContain("event stream closed before its first heartbeat");
      await eventually(() => fake.openEventStreams() === 0);
    } finally {
      await stop();
    }
  });
});
