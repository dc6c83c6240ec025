import { createHash, randomUUID } from "node:crypto";
import { chmodSync, mkdtempSync, writeFileSync } from "node:fs";
import { request as httpRequest, type IncomingMessage } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Agent } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createApp } from "../../src/app.js";
import type { Build, BuildBackend, BuildReader, LogRequest } from "../../src/builds/backend.js";
import type { BuildWatch } from "../../src/builds/watch.js";
import { createBuildWatch } from "../../src/builds/watch.js";
import type { StatusReporter } from "../../src/gitea/client.js";
import type { LocalBackend } from "../../src/local/backend.js";
import { createLocalBackend } from "../../src/local/backend.js";
import { createMetrics } from "../../src/metrics.js";
import { createNomadBuildReader } from "../../src/nomad/builds.js";
import { createNomadClient } from "../../src/nomad/client.js";
import { createFileRegistry } from "../../src/registry/file.js";
import type { Registry } from "../../src/registry/schema.js";
import { listen } from "../cli/harness.js";
import type { NomadFake } from "../fakes/nomad.js";
import { startNomadFake } from "../fakes/nomad.js";
import { captureLogs } from "../helpers/log-capture.js";
import { createSseParser, type SseEvent } from "../helpers/sse.js";
import { eventually } from "../helpers/wait.js";
import { builderJob } from "../nomad/target.js";

// One watch per running build (issue 12): any number of viewers, SSE or plain text, of one running build cost
// one upstream log stream per log type and one read of the build per interval. Real HTTP throughout: petrel's
// app on a socket, against the Nomad fake (cluster mode) and the local backend running a shell script.

const ADMIN = "admin-token-0123456789abcdef";
const AUTH = { authorization: `Bearer ${ADMIN}` };
const META = { REPO_URL: "https://git.example.test/acme/widgets.git", COMMIT: "4c1d7e0", BRANCH: "main", FLAVOR: "default" };
const POLL_MS = 100;
const BUFFER = 64 * 1024;
const NO_REPORTS: StatusReporter = { report: () => undefined, drain: async () => undefined };
const NO_BACKEND: BuildBackend = {
  kind: "nomad",
  parameterized: () => Promise.reject(new Error("not in this test")),
  dispatch: () => Promise.reject(new Error("not in this test")),
  health: async () => ({ ok: true }),
};

async function fileRegistry(): Promise<Registry> {
  const dir = mkdtempSync(join(tmpdir(), "petrel-watch-"));
  const config = join(dir, "petrel.yaml");
  writeFileSync(config, `repos:\n  git.example.test/acme/widgets:\n    hook: { secret: "route-hook-secret-0123456789" }\n`);
  return createFileRegistry({ path: config, defaultBuilder: "builder", log: captureLogs("silent").log });
}

function serveApp(reader: BuildReader, registry: Registry, watch: BuildWatch) {
  return listen(
    createApp({
      log: captureLogs("silent").log,
      metrics: createMetrics({ staleness: () => ({ seconds: 0, ok: true }) }),
      registry,
      backend: NO_BACKEND,
      reader,
      watch,
      reporter: NO_REPORTS,
      publicUrl: "https://ci.example.test",
      defaultBuilder: "builder",
      adminToken: ADMIN,
    }),
  );
}

/** A viewer reading as it comes: SSE events, or the raw bytes of a plain-text follow. */
interface Viewer {
  bytes: () => Buffer;
  events: SseEvent[];
  done: Promise<"ended" | Error>;
  stop(): void;
}

function view(base: string, id: string, type: string, sse: boolean, headers: Record<string, string> = {}, query = ""): Viewer {
  const abort = new AbortController();
  const parts: Buffer[] = [];
  const events: SseEvent[] = [];
  const parser = createSseParser();
  const decoder = new TextDecoder();
  const done = (async () => {
    const res = await fetch(`${base}/builds/${encodeURIComponent(id)}/logs?type=${type}${query}`, {
      headers: { ...AUTH, ...headers, ...(sse ? { accept: "text/event-stream" } : {}) },
      signal: abort.signal,
    });
    if (res.status !== 200) throw new Error(`status ${res.status}: ${await res.text()}`);
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      parts.push(Buffer.from(chunk));
      if (sse) events.push(...parser.push(decoder.decode(chunk, { stream: true })));
    }
    if (sse) events.push(...parser.end());
    return "ended" as const;
  })().catch((err: unknown) => err as Error);
  return { bytes: () => Buffer.concat(parts), events, done, stop: () => abort.abort() };
}

const logOf = (events: SseEvent[]) =>
  events
    .filter((e) => e.event === "log")
    .map((e) => e.data)
    .join("");
const seen = (v: Viewer, sse: boolean) => (sse ? logOf(v.events) : v.bytes().toString("latin1"));

describe("one watch per running build, shared by its viewers (cluster mode, Nomad fake)", () => {
  let nomad: NomadFake;
  let agent: Agent;
  let registry: Registry;
  let watch: BuildWatch;
  let server: { url: string; close(): Promise<void> };

  beforeAll(async () => {
    nomad = await startNomadFake({ logBatchMs: 0 });
    nomad.registerJob(builderJob("builder"));
    agent = new Agent({ connections: null });
    const log = captureLogs("silent").log;
    const client = createNomadClient({ addr: nomad.url, dispatcher: agent, log });
    const reader = createNomadBuildReader({ nomad: client, builders: () => new Set(["builder"]), log });
    registry = await fileRegistry();
    watch = createBuildWatch({ reader, log, pollMs: POLL_MS, bufferBytes: BUFFER, lingerMs: 0 });
    server = await serveApp(reader, registry, watch);
  });

  afterAll(async () => {
    await server.close();
    await watch.close();
    await registry.close();
    await agent.close();
    await nomad.close();
  });

  async function running(): Promise<{ id: string; allocId: string }> {
    const res = await fetch(`${nomad.url}/v1/job/builder/dispatch`, {
      method: "POST",
      body: JSON.stringify({ Meta: META, IdempotencyToken: randomUUID() }),
    });
    const id = ((await res.json()) as { DispatchedJobID: string }).DispatchedJobID;
    const allocId = nomad.placeAlloc(id);
    nomad.startTask(id);
    return { id, allocId };
  }

  const follows = (allocId: string, type: string) =>
    nomad.requests.filter((r) => r.path === `/v1/client/fs/logs/${allocId}` && r.query.type === type && r.query.follow === "true").length;
  const jobReads = (id: string, from: number) =>
    nomad.requests.slice(from).filter((r) => r.method === "GET" && decodeURIComponent(r.path) === `/v1/job/${id}`).length;

  it("serves any number of SSE and text viewers from one log stream per type and one build read per interval", async () => {
    const { id, allocId } = await running();
    nomad.writeLog(id, "stdout", "line 1\n");
    nomad.writeLog(id, "stderr", "warn 1\n");
    const kinds = [true, false, true, false, true, false, true, false, true, false];
    const out = kinds.map((sse) => ({ sse, v: view(server.url, id, "stdout", sse) }));
    const err = [true, false, false].map((sse) => ({ sse, v: view(server.url, id, "stderr", sse) }));
    await eventually(() => out.every(({ sse, v }) => seen(v, sse) === "line 1\n"), 10_000, "every stdout viewer's first line");
    await eventually(() => err.every(({ sse, v }) => seen(v, sse) === "warn 1\n"), 10_000, "every stderr viewer's first line");
    expect(follows(allocId, "stdout")).toBe(1);
    expect(follows(allocId, "stderr")).toBe(1);
    expect(nomad.openLogStreams()).toBe(2);
    expect(watch.streams()).toBe(2);

    // Eight SSE viewers watch the state; each polling on its own would read the job eight times an interval.
    const from = nomad.requests.length;
    const since = Date.now();
    await eventually(() => jobReads(id, from) >= 5, 10_000, "five reads of the build");
    expect(jobReads(id, from)).toBeLessThanOrEqual(Math.ceil((Date.now() - since) / POLL_MS) + 1);

    nomad.writeLog(id, "stdout", "line 2\n");
    nomad.finishTask(id, 0);
    const ends = await Promise.all([...out, ...err].map(({ v }) => v.done));
    expect(ends.every((e) => e === "ended")).toBe(true);
    for (const { sse, v } of out) expect(seen(v, sse)).toBe("line 1\nline 2\n");
    for (const { sse, v } of err) expect(seen(v, sse)).toBe("warn 1\n");
    for (const { v } of [...out, ...err].filter((x) => x.sse)) {
      expect(v.events.at(-1)?.event).toBe("end");
      const states = v.events.filter((e) => e.event === "state").map((e) => (JSON.parse(e.data) as Build).state);
      expect(states[0]).toBe("running");
      expect(states.at(-1)).toBe("success");
    }
    expect(follows(allocId, "stdout")).toBe(1);
    await eventually(() => watch.streams() === 0, 5000, "the streams to close with the build");
  });

  it("gives a late joiner (from the start, or from an offset) the same bytes a lone follower gets", async () => {
    const { id, allocId } = await running();
    const first = view(server.url, id, "stdout", false);
    let expected = "";
    // Far more than the buffer holds, in many frames: the joiner's first bytes are gone from memory.
    for (let i = 0; i < 200; i++) {
      const line = `${String(i).padStart(4, "0")} ${"é".repeat(300)}\r\n`;
      expected += line;
      nomad.writeLog(id, "stdout", line);
    }
    const total = Buffer.byteLength(expected);
    await eventually(() => first.bytes().length === total, 10_000, "the first viewer's bytes");
    const late = view(server.url, id, "stdout", false);
    const resumed = view(server.url, id, "stdout", false, {}, "&offset=1000");
    const lateSse = view(server.url, id, "stdout", true, { "last-event-id": "1000" });
    await eventually(() => late.bytes().length === total, 10_000, "the late viewer's bytes");
    nomad.writeLog(id, "stdout", "tail\n");
    expected += "tail\n";
    nomad.finishTask(id, 0);
    await Promise.all([first.done, late.done, resumed.done, lateSse.done]);

    const solo = Buffer.from(
      await (await fetch(`${server.url}/builds/${encodeURIComponent(id)}/logs?type=stdout`, { headers: AUTH })).arrayBuffer(),
    );
    expect(solo.toString("utf8")).toBe(expected);
    expect(first.bytes().equals(solo)).toBe(true);
    expect(late.bytes().equals(solo)).toBe(true);
    expect(resumed.bytes().equals(solo.subarray(1000))).toBe(true);
    // SSE gives line ends as \n; byte 1000 is a character boundary here (ASCII prefix + 2-byte é).
    expect(logOf(lateSse.events)).toBe(solo.subarray(1000).toString("utf8").replaceAll("\r\n", "\n"));
    expect(lateSse.events.filter((e) => e.event === "log").at(-1)?.id).toBe(String(solo.length));
    expect(follows(allocId, "stdout")).toBe(1);
  });

  it("lets a fast viewer run on while a slow one stalls, then cuts the slow one off where it can resume", async () => {
    const { id, allocId } = await running();
    const fast = view(server.url, id, "stdout", false);
    const slow = await new Promise<IncomingMessage>((resolve, reject) => {
      const req = httpRequest(`${server.url}/builds/${encodeURIComponent(id)}/logs?type=stdout`, { headers: AUTH }, (res) => {
        res.pause();
        resolve(res);
      });
      req.on("error", reject);
      req.end();
    });
    // More than the kernel's socket buffers and the watch's buffer can hold for a viewer that reads nothing.
    const piece = (i: number) => Buffer.from(`${String(i).padStart(8, "0")} ${"x".repeat(96 * 1024 - 10)}\n`);
    const pieces = 256;
    const hash = createHash("sha256");
    for (let i = 0; i < pieces; i++) {
      hash.update(piece(i));
      nomad.writeLog(id, "stdout", piece(i));
    }
    const total = pieces * piece(0).length;
    await eventually(() => fast.bytes().length === total, 30_000, "the fast viewer's bytes while the slow one reads nothing");
    expect(createHash("sha256").update(fast.bytes()).digest("hex")).toBe(hash.digest("hex"));

    const got: Buffer[] = [];
    slow.on("data", (c: Buffer) => got.push(c));
    const cut = await new Promise<boolean>((resolve) => {
      slow.on("close", () => resolve(!slow.complete));
      slow.resume();
    });
    expect(cut).toBe(true);
    const prefix = Buffer.concat(got);
    expect(prefix.length).toBeLessThan(total);
    expect(prefix.equals(fast.bytes().subarray(0, prefix.length))).toBe(true);

    nomad.finishTask(id, 0);
    const rest = Buffer.from(
      await (
        await fetch(`${server.url}/builds/${encodeURIComponent(id)}/logs?type=stdout&offset=${prefix.length}`, { headers: AUTH })
      ).arrayBuffer(),
    );
    expect(Buffer.concat([prefix, rest]).equals(fast.bytes())).toBe(true);
    expect(await fast.done).toBe("ended");
    expect(follows(allocId, "stdout")).toBe(1);
  });

  it("closes the upstream stream when the last viewer leaves, and reads the build no more", async () => {
    const { id, allocId } = await running();
    nomad.writeLog(id, "stdout", "hello\n");
    const viewers = [view(server.url, id, "stdout", true), view(server.url, id, "stdout", false), view(server.url, id, "stdout", true)];
    await eventually(() => viewers.every((v, i) => seen(v, i !== 1) === "hello\n"), 10_000, "every viewer's line");
    expect(nomad.openLogStreams()).toBe(1);
    viewers[0]?.stop();
    viewers[1]?.stop();
    await Promise.all([viewers[0]?.done, viewers[1]?.done]);
    // One viewer is left: the stream stays.
    nomad.writeLog(id, "stdout", "still\n");
    await eventually(() => logOf(viewers[2]?.events ?? []) === "hello\nstill\n", 10_000, "the remaining viewer's line");
    expect(nomad.openLogStreams()).toBe(1);
    viewers[2]?.stop();
    await eventually(() => nomad.openLogStreams() === 0 && watch.streams() === 0, 5000, "the upstream to close");
    // No viewer left: the build is read no more (a poll in flight may still land).
    const from = nomad.requests.length;
    const closed = view(server.url, id, "stdout", false);
    await eventually(() => closed.bytes().length === "hello\nstill\n".length, 10_000, "a new viewer's bytes");
    closed.stop();
    await closed.done;
    expect(jobReads(id, from)).toBeLessThanOrEqual(2);
    expect(follows(allocId, "stdout")).toBe(2);
    await eventually(() => watch.streams() === 0, 5000, "the upstream to close again");
  });
});

describe("one watch per running build (local backend)", () => {
  let backend: LocalBackend;
  let registry: Registry;
  let watch: BuildWatch;
  let server: { url: string; close(): Promise<void> };
  let gate: string;
  const asked: LogRequest[] = [];

  beforeAll(async () => {
    const dir = mkdtempSync(join(tmpdir(), "petrel-watch-local-"));
    gate = join(dir, "gate");
    const executor = join(dir, "executor.sh");
    writeFileSync(executor, `#!/bin/sh\necho first\nwhile [ ! -e ${gate} ]; do sleep 0.02; done\necho second\nexit 0\n`);
    chmodSync(executor, 0o755);
    const log = captureLogs("silent").log;
    let feed: (b: Build) => void = () => undefined;
    backend = await createLocalBackend({
      dataDir: join(dir, "data"),
      concurrency: 1,
      log,
      executor: [executor],
      env: { PATH: process.env.PATH, HOME: process.env.HOME, PETREL_ADMIN_TOKEN: "x".repeat(32) },
      onTransition: (b) => feed(b),
    });
    // Counts the backend's log reads; everything else is the backend itself.
    const reader: BuildReader = {
      listBuilds: (f, s) => backend.listBuilds(f, s),
      getBuild: (id, s) => backend.getBuild(id, s),
      logs: (id, request) => {
        asked.push(request);
        return backend.logs(id, request);
      },
      cancel: (id, s) => backend.cancel(id, s),
    };
    registry = await fileRegistry();
    // Polls too rarely to matter here: states come from the backend's transitions.
    watch = createBuildWatch({ reader, log, pollMs: 60_000, lingerMs: 0 });
    feed = (b) => watch.onBuild(b);
    server = await serveApp(reader, registry, watch);
  });

  afterAll(async () => {
    await server.close();
    await watch.close();
    await backend.close();
    await registry.close();
  });

  it("reads the log once for all viewers and pushes the state transitions the backend reports", async () => {
    // The first build holds the only slot, so the second waits queued while its viewers arrive.
    const blocker = await backend.dispatch({ builder: "builder", meta: { ...META, REPO: "acme/widgets" }, idempotencyToken: "w0" });
    const { id } = await backend.dispatch({ builder: "builder", meta: { ...META, REPO: "acme/widgets" }, idempotencyToken: "w1" });
    expect((await backend.getBuild(id))?.state).toBe("queued");
    const viewers = [true, true, true, false, false, false].map((sse) => ({ sse, v: view(server.url, id, "stdout", sse) }));
    await eventually(
      () => viewers.every(({ sse, v }) => !sse || v.events.some((e) => e.event === "state")),
      10_000,
      "every SSE viewer's first state",
    );
    await eventually(() => asked.some((r) => r.follow), 10_000, "the shared log stream");
    writeFileSync(gate, "");
    await Promise.all(viewers.map(({ v }) => v.done));
    for (const { sse, v } of viewers) {
      expect(seen(v, sse)).toBe("first\nsecond\n");
      if (!sse) continue;
      // The build is read every 60 s only: "running" can only have come from the backend's transition.
      const states = v.events.filter((e) => e.event === "state").map((e) => (JSON.parse(e.data) as Build).state);
      expect(states).toEqual(["queued", "running", "success"]);
      expect(v.events.at(-1)?.event).toBe("end");
    }
    expect(asked.filter((r) => r.follow)).toHaveLength(1);
    expect((await backend.getBuild(blocker.id))?.state).toBe("success");
  });
});
