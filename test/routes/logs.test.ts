import { getEventListeners, once } from "node:events";
import { mkdtempSync, writeFileSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createApp } from "../../src/app.js";
import type { Build, BuildBackend, BuildReader, LogRequest } from "../../src/builds/backend.js";
import { type BuildWatch, createBuildWatch } from "../../src/builds/watch.js";
import type { StatusReporter } from "../../src/gitea/client.js";
import { createMetrics } from "../../src/metrics.js";
import { createFileRegistry } from "../../src/registry/file.js";
import type { Registry } from "../../src/registry/schema.js";
import { listen } from "../cli/harness.js";
import { captureLogs } from "../helpers/log-capture.js";
import { createSseParser, readSse } from "../helpers/sse.js";
import { eventually } from "../helpers/wait.js";

// The log endpoints of src/routes/builds.ts over a real socket, with a reader whose chunks the tests choose
// byte for byte, so the SSE framing is tested at every boundary a build's output can have.

const ID = "builder/dispatch-1700000000-1a2b3c4d";

function build(state: Build["state"]): Build {
  return {
    id: ID,
    builder: "builder",
    repo: "acme/widgets",
    repoUrl: "https://git.example.test/acme/widgets.git",
    commit: "4c1d7e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d",
    ref: "main",
    flavor: "default",
    event: "push",
    trusted: true,
    private: false,
    state,
    createdAt: "2026-01-01T00:00:00.000Z",
  };
}

const NO_REPORTS: StatusReporter = { report: () => undefined, drain: async () => undefined };
const NO_BACKEND: BuildBackend = {
  kind: "local",
  parameterized: () => Promise.reject(new Error("not in this test")),
  dispatch: () => Promise.reject(new Error("not in this test")),
  health: async () => ({ ok: true }),
};

let chunks: Record<string, Uint8Array[]> = {};
/** Lives as long as the server, as petrel's own shutdown signal does. */
const shutdown = new AbortController();
const asked: LogRequest[] = [];
let state: Build["state"] = "failure";
/** When set, the reader waits for it before it yields chunk `i`, so a test decides which chunks arrive together. */
let pace: ((i: number) => Promise<void>) | undefined;
/** An SSE request for the build's stdout on a raw socket (`extra`: more header lines), collecting every byte. */
function rawSse(base: string, extra = ""): { socket: Socket; received: Buffer[] } {
  const socket = connect(Number(new URL(base).port), "127.0.0.1");
  const received: Buffer[] = [];
  socket.on("data", (d: Buffer) => received.push(d));
  const path = `/builds/${encodeURIComponent(ID)}/logs?type=stdout`;
  socket.write(`GET ${path} HTTP/1.1\r\nHost: petrel.test\r\nAccept: text/event-stream\r\n${extra}\r\n`);
  return { socket, received };
}

/** Lets the reader's first `n` chunks through and holds the rest until the returned function is called. */
function holdAfter(n: number): () => void {
  let open: () => void = () => undefined;
  const gate = new Promise<void>((resolve) => {
    open = resolve;
  });
  pace = (i) => (i < n ? Promise.resolve() : gate);
  return () => open();
}
/** When set, the reader throws it after its last chunk. */
let failure: Error | undefined;
/** Reads of the build: one per request that reached the route. */
let gets = 0;
const reader: BuildReader = {
  listBuilds: async () => ({ builds: [build(state)], hidden: 0 }),
  getBuild: async (id) => {
    gets++;
    return id === ID ? build(state) : undefined;
  },
  async *logs(_id, request) {
    asked.push(request);
    let skip = request.offset;
    for (const [i, chunk] of (chunks[request.type] ?? []).entries()) {
      if (skip >= chunk.length) {
        skip -= chunk.length;
        continue;
      }
      await pace?.(i);
      yield chunk.subarray(skip);
      skip = 0;
    }
    if (failure !== undefined) throw failure;
  },
  cancel: async () => undefined,
};

/** A log whose chunk boundaries split a \r\n, a UTF-8 character and an escape sequence. */
const LIVE_LOG = [
  Buffer.from("one\r\ntwo\rthree\n\u001b[32mok\u001b[0m\r", "latin1"),
  Buffer.from([0x0a, 0x61, 0xc3]),
  Buffer.from([0xa9, 0x0d, 0x0a, 0xe2, 0x82]),
  Buffer.from([0xac, 0x0d]),
  Buffer.from("\r\nlast\rX"),
];

let server: { url: string; close(): Promise<void> };
let registry: Registry;

beforeAll(async () => {
  const dir = mkdtempSync(join(tmpdir(), "petrel-logs-route-"));
  const config = join(dir, "petrel.yaml");
  writeFileSync(
    config,
    `repos:\n  git.example.test/acme/widgets:\n    hook: { secret: "route-hook-secret-0123456789" }\n    logs: public\n`,
  );
  const { log } = captureLogs("silent");
  registry = await createFileRegistry({ path: config, defaultBuilder: "builder", log });
  const app = createApp({
    log,
    metrics: createMetrics({ staleness: () => ({ seconds: 0, ok: true }) }),
    registry,
    backend: NO_BACKEND,
    reader,
    reporter: NO_REPORTS,
    publicUrl: "https://ci.example.test",
    defaultBuilder: "builder",
    shutdown: shutdown.signal,
  });
  server = await listen(app);
});

afterAll(async () => {
  await server.close();
  await registry.close();
});

const logsUrl = (query: string) => `${server.url}/builds/${encodeURIComponent(ID)}/logs${query}`;
const sse = (query = "", headers: Record<string, string> = {}) =>
  fetch(logsUrl(query), { headers: { accept: "text/event-stream", ...headers } });
const bytes = (...parts: string[]) => parts.map((p) => Buffer.from(p, "latin1"));
const logText = (events: { event: string; data: string }[]) =>
  events
    .filter((e) => e.event === "log")
    .map((e) => e.data)
    .join("");

describe("GET /builds/<id>/logs?type=all", () => {
  it("serves the merged log as text/plain, byte for byte, and passes offset and follow on", async () => {
    chunks = { all: bytes("==> run .petrel\n", "out\n", "err\n", "out2\n==> exit 0\n") };
    asked.length = 0;
    const res = await fetch(logsUrl("?type=all&follow=false&offset=16"));
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("text/plain; charset=utf-8");
    expect(await res.text()).toBe("out\nerr\nout2\n==> exit 0\n");
    expect(asked[0]).toMatchObject({ type: "all", follow: false, offset: 16 });
  });

  it("refuses an unknown type with 400, and type=all at Albatros's /build address", async () => {
    const bad = await fetch(logsUrl("?type=both"));
    expect(bad.status).toBe(400);
    expect(await bad.json()).toEqual({ error: { code: "bad_request", message: "log type must be all, stdout or stderr" } });
    const albatros = await fetch(`${server.url}/build?job=${encodeURIComponent(ID)}&log=all`);
    expect(albatros.status).toBe(400);
    expect(((await albatros.json()) as { error: { code: string } }).error.code).toBe("bad_request");
  });
});

describe("log streams and petrel's shutdown signal", () => {
  it("leave no listener behind on it once they ended", async () => {
    state = "success";
    chunks = { stdout: bytes("one\n", "two\n") };
    for (let i = 0; i < 12; i++) {
      expect(await (await fetch(logsUrl("?type=stdout"))).text()).toBe("one\ntwo\n");
      await readSse(await sse("?type=stdout"));
    }
    // Each stream let go of the signal: nothing accumulates over petrel's lifetime.
    await eventually(() => getEventListeners(shutdown.signal, "abort").length === 0, 5000, "the streams to let go");
    expect(getEventListeners(shutdown.signal, "abort")).toHaveLength(0);
  });
});

describe("SSE framing of any bytes (issue 9, finding 7)", () => {
  it("turns \\r\\n, lone \\r and \\n into line ends inside one event, never into fields of their own", async () => {
    state = "failure";
    chunks = { all: bytes('a\r\nb\rc\nevent: state\rdata: {"state":"success"}\r\r\rid: 999\nretry: 1\r:comment\rd') };
    const res = await sse("?type=all");
    expect(res.headers.get("content-type")).toMatch(/^text\/event-stream/);
    const events = await readSse(res);
    expect(events.map((e) => e.event)).toEqual(["state", "log", "end"]);
    expect(JSON.parse(events[0]?.data ?? "")).toMatchObject({ state: "failure" });
    expect(logText(events)).toBe('a\nb\nc\nevent: state\ndata: {"state":"success"}\n\n\nid: 999\nretry: 1\n:comment\nd');
    // id is the byte offset reached, not anything the build printed.
    expect(events[1]?.id).toBe(String(chunks.all?.[0]?.length));
  });

  it("keeps a \\r\\n split across two chunks one line end, and ids at the bytes each event covers", async () => {
    chunks = { all: bytes("progress 10%\r", "\nnext\r", "progress 20%\r") };
    const events = await readSse(await sse("?type=all"));
    const logs = events.filter((e) => e.event === "log");
    expect(logText(events)).toBe("progress 10%\nnext\nprogress 20%\n");
    // A held-back \r is counted with the event that carries it.
    expect(logs.map((e) => Number(e.id))).toEqual([12, 18, 31, 32]);
    expect(logs.at(-1)?.id).toBe(String(Buffer.concat(chunks.all ?? []).length));
  });

  it("never splits a UTF-8 character between events, so ids stay on character boundaries", async () => {
    chunks = { stdout: [Buffer.from([0x61, 0xc3]), Buffer.from([0xa9, 0x0a, 0xe2, 0x82]), Buffer.from([0xac, 0x0a])] };
    const events = (await readSse(await sse("?type=stdout"))).filter((e) => e.event === "log");
    expect(events.map((e) => e.data).join("")).toBe("aé\n€\n");
    expect(events.map((e) => Number(e.id))).toEqual([1, 4, 8]);
  });

  it("passes other control characters (ANSI colours, tabs, NUL) through inside the data", async () => {
    chunks = { stdout: bytes("\u001b[31mred\u001b[0m\tX\u0000Y\u000bZ\n") };
    const events = await readSse(await sse("?type=stdout"));
    expect(logText(events)).toBe("\u001b[31mred\u001b[0m\tX\u0000Y\u000bZ\n");
  });

  it("resumes after Last-Event-ID at that byte", async () => {
    chunks = { stderr: bytes("one\r\n", "two\n") };
    asked.length = 0;
    const events = await readSse(await sse("?type=stderr", { "last-event-id": "5" }));
    expect(asked[0]).toMatchObject({ type: "stderr", offset: 5, follow: true });
    expect(logText(events)).toBe("two\n");
    expect(events.find((e) => e.event === "log")?.id).toBe("9");
  });
});

describe("SSE bytes on the wire (issue 12: frames encoded once for every viewer)", () => {
  // Captured from the hono `streamSSE`/`writeSSE` implementation before frames were encoded by petrel itself:
  // any change to these bytes is a change to the SSE contract.
  const LOG = LIVE_LOG;
  const stateEvent = (s: string) =>
    `event: state\ndata: {"id":"builder/dispatch-1700000000-1a2b3c4d","builder":"builder","repo":"acme/widgets","repoUrl":"https://git.example.test/acme/widgets.git","commit":"4c1d7e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d","ref":"main","flavor":"default","event":"push","trusted":true,"private":false,"state":"${s}","createdAt":"2026-01-01T00:00:00.000Z","links":{"self":"https://ci.example.test/builds/builder%2Fdispatch-1700000000-1a2b3c4d","logs":"https://ci.example.test/builds/builder%2Fdispatch-1700000000-1a2b3c4d/logs"}}\n\n`;
  const LOG_EVENTS =
    "event: log\ndata: one\ndata: two\ndata: three\ndata: \u001b[32mok\u001b[0m\nid: 26\n\n" +
    "event: log\ndata: \ndata: a\nid: 29\n\n" +
    "event: log\ndata: é\ndata: \nid: 33\n\n" +
    "event: log\ndata: €\nid: 36\n\n" +
    "event: log\ndata: \ndata: \ndata: last\ndata: X\nid: 45\n\n";
  const raw = async (res: Response) => Buffer.from(await res.arrayBuffer()).toString("utf8");

  it("are the same bytes and headers for a finished build's log", async () => {
    state = "failure";
    chunks = { stdout: LOG };
    const res = await sse("?type=stdout");
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("text/event-stream");
    expect(res.headers.get("cache-control")).toBe("no-cache");
    expect(res.headers.get("x-accel-buffering")).toBe("no");
    expect(res.headers.get("transfer-encoding")).toBe("chunked");
    expect(await raw(res)).toBe(`${stateEvent("failure")}${LOG_EVENTS}event: end\ndata: {}\n\n`);
  });

  it("are the same bytes for a running build's log, through the shared watch, for every viewer", async () => {
    state = "running";
    chunks = { stdout: LOG };
    const bodies = ["", "", ""];
    const frames = (body: string) => body.split("\n\n").length - 1;
    // Each chunk only once every viewer has the previous one's event: every viewer sees the chunks one by one.
    pace = (i) => eventually(() => bodies.every((b) => frames(b) >= i + 1), 5000, `every viewer's event ${i}`);
    try {
      await Promise.all(
        bodies.map(async (_, v) => {
          const decoder = new TextDecoder();
          for await (const chunk of (await sse("?type=stdout")).body as unknown as AsyncIterable<Uint8Array>)
            bodies[v] += decoder.decode(chunk, { stream: true });
        }),
      );
    } finally {
      pace = undefined;
    }
    for (const body of bodies) expect(body).toBe(`${stateEvent("running")}${LOG_EVENTS}event: end\ndata: {}\n\n`);
  });

  it("are the same bytes for SSE requests pipelined on one connection, the second queued behind the first", async () => {
    // petrel writes a live frame straight to the connection when the response owns it; a response queued
    // behind another (HTTP/1.1 pipelining) has no connection yet, and its frames must wait their turn.
    state = "running";
    chunks = { stdout: LOG };
    gets = 0;
    const open = holdAfter(0);
    try {
      const { port } = new URL(server.url);
      const socket = connect(Number(port), "127.0.0.1");
      const request = `GET /builds/${encodeURIComponent(ID)}/logs?type=stdout HTTP/1.1\r\nHost: petrel.test\r\nAccept: text/event-stream\r\n\r\n`;
      socket.write(request + request);
      const responses = readHttpResponses(socket, 2);
      // Both requests reached the route (each reads the build) before the log moves on.
      await eventually(() => gets >= 2, 5000, "both requests to read the build");
      await new Promise((r) => setTimeout(r, 50));
      open();
      const [first, second] = await responses;
      socket.destroy();
      for (const response of [first, second]) {
        expect(response?.head).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
        expect(response?.head.toLowerCase()).toContain("transfer-encoding: chunked\r\n");
        expect(response?.body.toString("utf8")).toBe(`${stateEvent("running")}${LOG_EVENTS}event: end\ndata: {}\n\n`);
      }
    } finally {
      pace = undefined;
    }
  });

  it("answers HEAD with the headers only, and the connection serves the next request", async () => {
    state = "failure";
    chunks = { stdout: LOG };
    const { port } = new URL(server.url);
    const socket = connect(Number(port), "127.0.0.1");
    const path = `/builds/${encodeURIComponent(ID)}/logs?type=stdout`;
    socket.write(`HEAD ${path} HTTP/1.1\r\nHost: petrel.test\r\nAccept: text/event-stream\r\n\r\n`);
    socket.write(`GET ${path} HTTP/1.1\r\nHost: petrel.test\r\nAccept: text/event-stream\r\n\r\n`);
    const [head, get] = await readHttpResponses(socket, 2, [true, false]);
    socket.destroy();
    expect(head?.head).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    expect(head?.head.toLowerCase()).toContain("content-type: text/event-stream\r\n");
    expect(head?.body.length).toBe(0);
    expect(get?.body.toString("utf8")).toBe(`${stateEvent("failure")}${LOG_EVENTS}event: end\ndata: {}\n\n`);
  });

  it("are the same bytes when resuming inside a line, after Last-Event-ID", async () => {
    state = "failure";
    chunks = { stdout: LOG };
    expect(await raw(await sse("?type=stdout", { "last-event-id": "23" }))).toBe(
      `${stateEvent("failure")}event: log\ndata: [0m\nid: 26\n\n${LOG_EVENTS.slice(LOG_EVENTS.indexOf("event: log\ndata: \ndata: a"))}event: end\ndata: {}\n\n`,
    );
  });

  it("are the same bytes for an upstream failure's error event", async () => {
    state = "failure";
    chunks = { stdout: LOG };
    failure = new Error("upstream broke\nline two");
    try {
      expect(await raw(await sse("?type=stdout"))).toBe(
        `${stateEvent("failure")}${LOG_EVENTS}event: error\ndata: {"message":"upstream broke\\nline two"}\n\n`,
      );
    } finally {
      failure = undefined;
    }
  });
});

describe("SSE review attacks (shared frames, direct socket writes)", () => {
  // A second app over the same reader, with a watch that reads the build every few ms: state events then land
  // between log frames (string frames through the response, log frames straight to the socket).
  let flipping = false;
  let flip = false;
  let second: { url: string; close(): Promise<void> };
  let secondWatch: BuildWatch;
  const secondShutdown = new AbortController();
  beforeAll(async () => {
    const { log } = captureLogs("silent");
    const flipReader: BuildReader = {
      ...reader,
      getBuild: async (id) => {
        if (id !== ID) return undefined;
        if (!flipping) return build(state);
        flip = !flip;
        return build(flip ? "running" : "queued");
      },
    };
    secondWatch = createBuildWatch({ reader: flipReader, log, pollMs: 3, lingerMs: 0 });
    second = await listen(
      createApp({
        log,
        metrics: createMetrics({ staleness: () => ({ seconds: 0, ok: true }) }),
        registry,
        backend: NO_BACKEND,
        reader: flipReader,
        reporter: NO_REPORTS,
        publicUrl: "https://ci.example.test",
        defaultBuilder: "builder",
        shutdown: secondShutdown.signal,
        watch: secondWatch,
      }),
    );
  });
  afterAll(async () => {
    flipping = false;
    await second.close();
  });

  it("a viewer's fractional Last-Event-ID cannot shift the bytes other viewers of the shared stream get", async () => {
    state = "running";
    chunks = { stdout: LIVE_LOG };
    asked.length = 0;
    const open = holdAfter(1);
    try {
      // The first viewer starts the build's shared stream at its offset.
      const first = sse("?type=stdout", { "last-event-id": "23.5" }).then(readSse);
      await eventually(() => asked.length >= 1, 5000, "the first viewer's stream to open");
      const other = sse("?type=stdout").then(readSse);
      // The second viewer reads the bytes before the shared stream's start itself, then joins it.
      await new Promise((r) => setTimeout(r, 200));
      open();
      const [, events] = await Promise.all([first, other]);
      expect(logText(events)).toBe(
        Buffer.concat(LIVE_LOG)
          .toString("utf8")
          .replace(/\r\n|\r/g, "\n"),
      );
    } finally {
      open();
      pace = undefined;
    }
  });

  it("a viewer holding back a \\r and one resuming after it each get their own frame of the same live chunk", async () => {
    state = "running";
    chunks = { stdout: bytes("ab\r", "\ncd\r", "\nef") };
    asked.length = 0;
    const open = holdAfter(1);
    try {
      const fromStart = sse("?type=stdout").then(readSse);
      await eventually(() => asked.length >= 1, 5000, "the shared stream to open");
      await new Promise((r) => setTimeout(r, 100));
      // Resumes right after the held-back \r: no \r of its own, at the same live chunk as the first viewer.
      const resumed = sse("?type=stdout&offset=3").then(readSse);
      await new Promise((r) => setTimeout(r, 150));
      open();
      const [a, b] = await Promise.all([fromStart, resumed]);
      expect(logText(a)).toBe("ab\ncd\nef");
      expect(logText(b)).toBe("\ncd\nef");
      expect(a.filter((e) => e.event === "log").map((e) => e.id)).toEqual(["2", "6", "10"]);
      expect(b.filter((e) => e.event === "log").map((e) => e.id)).toEqual(["6", "10"]);
    } finally {
      open();
      pace = undefined;
    }
  });

  it("state events written between log frames keep the HTTP chunks and the events whole, in order", async () => {
    state = "running";
    const parts = Array.from({ length: 200 }, (_, i) => Buffer.from(`line ${i} ${"x".repeat(i % 37)}\n`));
    chunks = { stdout: parts };
    pace = () => new Promise((r) => setImmediate(r));
    flipping = true;
    try {
      const { port } = new URL(second.url);
      const socket = connect(Number(port), "127.0.0.1");
      const path = `/builds/${encodeURIComponent(ID)}/logs?type=stdout`;
      socket.write(`GET ${path} HTTP/1.1\r\nHost: petrel.test\r\nAccept: text/event-stream\r\n\r\n`);
      const responses = readHttpResponses(socket, 2);
      // Keep-alive: the connection serves the next request once the stream ended.
      await eventually(() => asked.length > 0, 5000, "the stream to start");
      socket.write(`GET ${path} HTTP/1.1\r\nHost: petrel.test\r\nAccept: text/event-stream\r\n\r\n`);
      const all = await responses;
      socket.destroy();
      for (const response of all) {
        const parser = createSseParser();
        const events = [...parser.push(response.body.toString("utf8")), ...parser.end()];
        expect(events.at(-1)?.event).toBe("end");
        expect(logText(events)).toBe(Buffer.concat(parts).toString("utf8"));
        const ids = events.filter((e) => e.event === "log").map((e) => Number(e.id));
        expect(ids).toEqual([...ids].sort((a, b) => a - b));
        expect(events.filter((e) => e.event === "state").length).toBeGreaterThan(0);
      }
    } finally {
      flipping = false;
      pace = undefined;
    }
  });

  it("a stalled viewer adds no listener per frame written while its connection is full", async () => {
    state = "running";
    const mb = Buffer.alloc(1024 * 1024, "x");
    chunks = { stdout: Array.from({ length: 8 }, () => mb) };
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(`${w.name}: ${w.message}`);
    process.on("warning", onWarning);
    const { port } = new URL(second.url);
    const socket = connect(Number(port), "127.0.0.1");
    socket.pause();
    try {
      const path = `/builds/${encodeURIComponent(ID)}/logs?type=stdout`;
      socket.write(`GET ${path} HTTP/1.1\r\nHost: petrel.test\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n`);
      // The viewer reads nothing: its connection fills, and every state the watch reads is written behind it.
      flipping = true;
      await new Promise((r) => setTimeout(r, 600));
      flipping = false;
      const received: Buffer[] = [];
      socket.on("data", (d: Buffer) => received.push(d));
      const closed = once(socket, "close");
      socket.resume();
      await closed;
      const response = Buffer.concat(received);
      const body = dechunk(response.subarray(response.indexOf("\r\n\r\n") + 4));
      const parser = createSseParser();
      const events = [...parser.push(body.toString("utf8")), ...parser.end()];
      expect(events.at(-1)?.event).toBe("end");
      expect(logText(events).length).toBe(8 * mb.length);
      expect(events.filter((e) => e.event === "state").length).toBeGreaterThan(12);
      expect(warnings.filter((w) => w.includes("MaxListenersExceeded"))).toEqual([]);
    } finally {
      flipping = false;
      process.off("warning", onWarning);
      socket.destroy();
    }
  });
  describe.each([
    ["closes its connection mid-frame", (socket: Socket) => socket.destroy()],
    ["half-closes its connection (sends FIN, keeps reading)", (socket: Socket) => socket.end()],
  ])("a viewer that %s", (_, leave) => {
    it("lets go of the shared stream and the shutdown signal, and the server serves the next viewer", async () => {
      state = "running";
      const mb = Buffer.alloc(1024 * 1024, "y");
      // The log keeps coming after the viewer left.
      chunks = { stdout: [mb, mb, mb, mb, Buffer.from("tail\n")] };
      const open = holdAfter(2);
      const { port } = new URL(second.url);
      const socket = connect(Number(port), "127.0.0.1");
      socket.on("error", () => undefined);
      try {
        const path = `/builds/${encodeURIComponent(ID)}/logs?type=stdout`;
        socket.write(`GET ${path} HTTP/1.1\r\nHost: petrel.test\r\nAccept: text/event-stream\r\n\r\n`);
        let got = 0;
        socket.on("data", (d: Buffer) => {
          got += d.length;
        });
        // Part of a 1 MiB frame arrived: the viewer leaves in the middle of it.
        await eventually(() => got > 300_000, 5000, "part of the first frame");
        leave(socket);
        await new Promise((r) => setTimeout(r, 50));
        open();
        await eventually(() => secondWatch.streams() === 0, 5000, "the shared stream to end");
        await eventually(() => getEventListeners(secondShutdown.signal, "abort").length === 0, 5000, "the signal to be let go");
      } finally {
        open();
        pace = undefined;
        socket.destroy();
      }
      chunks = { stdout: bytes("next\n") };
      const events = await readSse(
        await fetch(`${second.url}/builds/${encodeURIComponent(ID)}/logs?type=stdout`, { headers: { accept: "text/event-stream" } }),
      );
      expect(logText(events)).toBe("next\n");
    });
  });

  it("cuts a stalled viewer off where it can resume once others outran it by the buffer, holding no more of the log", async () => {
    state = "running";
    const parts = Array.from({ length: 8 }, (_, i) => Buffer.alloc(1024 * 1024, String.fromCharCode(0x61 + i)));
    chunks = { stdout: parts };
    const { port } = new URL(second.url);
    const path = `/builds/${encodeURIComponent(ID)}/logs?type=stdout`;
    const request = `GET ${path} HTTP/1.1\r\nHost: petrel.test\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n`;
    const slow = connect(Number(port), "127.0.0.1");
    const fast = connect(Number(port), "127.0.0.1");
    try {
      slow.pause();
      const slowData: Buffer[] = [];
      slow.on("data", (d: Buffer) => slowData.push(d));
      slow.write(request);
      await new Promise((r) => setTimeout(r, 100));
      const fastData: Buffer[] = [];
      fast.on("data", (d: Buffer) => fastData.push(d));
      const fastClosed = once(fast, "close");
      fast.write(request);
      await fastClosed;
      const readAll = (data: Buffer[]) => {
        const response = Buffer.concat(data);
        const parser = createSseParser();
        return [...parser.push(dechunk(response.subarray(response.indexOf("\r\n\r\n") + 4)).toString("latin1")), ...parser.end()];
      };
      expect(logText(readAll(fastData))).toBe(Buffer.concat(parts).toString("latin1"));
      const slowClosed = once(slow, "close");
      slow.resume();
      await slowClosed;
      const events = readAll(slowData);
      const logs = events.filter((e) => e.event === "log");
      expect(events.at(-1)?.event).toBe("error");
      expect(events.at(-1)?.data).toContain("resume from offset");
      // What it got is the log up to its last id, whole: it resumes there.
      const lastId = Number(logs.at(-1)?.id ?? 0);
      expect(logText(events)).toBe(Buffer.concat(parts).subarray(0, lastId).toString("latin1"));
      expect(lastId).toBeLessThan(8 * 1024 * 1024);
    } finally {
      slow.destroy();
      fast.destroy();
    }
  });

  it("closes the connection after the response when the client asked for Connection: close", async () => {
    state = "failure";
    chunks = { stdout: bytes("done\n") };
    const started = Date.now();
    const { socket, received } = rawSse(second.url, "Connection: close\r\n");
    try {
      await once(socket, "close");
      // Not held open until the keep-alive timeout (5 s) after a response that said it would close.
      expect(Date.now() - started).toBeLessThan(2000);
      const response = Buffer.concat(received).toString("latin1");
      expect(response.toLowerCase()).toContain("\r\nconnection: close\r\n");
      expect(response.endsWith("\r\n0\r\n\r\n")).toBe(true);
    } finally {
      socket.destroy();
    }
  });

  // Last: petrel's shutdown signal, once aborted, stays so.
  it("ends a live viewer's response at petrel's shutdown with a last chunk, nothing after it", async () => {
    state = "running";
    chunks = { stdout: bytes("before\n", "after\n") };
    const open = holdAfter(1);
    const { socket, received } = rawSse(second.url);
    try {
      await eventually(() => Buffer.concat(received).includes("before"), 5000, "the first frame");
      secondShutdown.abort();
      await eventually(() => Buffer.concat(received).toString("latin1").endsWith("\r\n0\r\n\r\n"), 5000, "the response to end");
      open();
      await new Promise((r) => setTimeout(r, 100));
      const response = Buffer.concat(received);
      const body = dechunk(response.subarray(response.indexOf("\r\n\r\n") + 4));
      // The last chunk ends the bytes: a frame written after it would be read as the next response.
      expect(response.toString("latin1").endsWith("\r\n0\r\n\r\n")).toBe(true);
      const parser = createSseParser();
      expect(logText([...parser.push(body.toString("utf8")), ...parser.end()])).toBe("before\n");
    } finally {
      open();
      pace = undefined;
      socket.destroy();
    }
  });
});

/** A whole chunked body (ending with its last chunk), decoded. */
function dechunk(buf: Buffer): Buffer {
  const parts: Buffer[] = [];
  let at = 0;
  for (;;) {
    const line = buf.indexOf("\r\n", at);
    const size = Number.parseInt(buf.subarray(at, line).toString("latin1"), 16);
    if (Number.isNaN(size)) throw new Error(`not a chunk size at ${at}`);
    if (buf.subarray(line + 2 + size, line + 4 + size).toString("latin1") !== "\r\n") throw new Error("a chunk does not end with CRLF");
    if (size === 0) return Buffer.concat(parts);
    parts.push(buf.subarray(line + 2, line + 2 + size));
    at = line + 4 + size;
  }
}

/**
 * Reads `count` HTTP/1.1 responses from a raw connection, undoing the chunked transfer coding by hand, so a
 * test sees exactly the bytes on the wire. `headOnly[i]`: response `i` answers a HEAD and has no body.
 */
function readHttpResponses(socket: Socket, count: number, headOnly: boolean[] = []): Promise<{ head: string; body: Buffer }[]> {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    const out: { head: string; body: Buffer }[] = [];
    let head: string | undefined;
    let parts: Buffer[] = [];
    const step = (): boolean => {
      if (head === undefined) {
        const end = buf.indexOf("\r\n\r\n");
        if (end === -1) return false;
        head = buf.subarray(0, end + 2).toString("latin1");
        buf = buf.subarray(end + 4);
        if (headOnly[out.length]) {
          out.push({ head, body: Buffer.alloc(0) });
          head = undefined;
        }
        return true;
      }
      const line = buf.indexOf("\r\n");
      if (line === -1) return false;
      const size = Number.parseInt(buf.subarray(0, line).toString("latin1"), 16);
      if (Number.isNaN(size)) throw new Error(`not a chunk size: ${JSON.stringify(buf.subarray(0, 20).toString("latin1"))}`);
      if (buf.length < line + 2 + size + 2) return false;
      if (buf.subarray(line + 2 + size, line + 4 + size).toString("latin1") !== "\r\n") throw new Error("a chunk does not end with CRLF");
      parts.push(buf.subarray(line + 2, line + 2 + size));
      buf = buf.subarray(line + 4 + size);
      if (size === 0) {
        out.push({ head, body: Buffer.concat(parts) });
        head = undefined;
        parts = [];
      }
      return true;
    };
    socket.on("data", (data: Buffer) => {
      buf = Buffer.concat([buf, data]);
      try {
        while (out.length < count && step());
      } catch (err) {
        reject(err);
      }
      if (out.length === count) resolve(out);
    });
    socket.on("error", reject);
    socket.on("close", () => reject(new Error(`connection closed after ${out.length} of ${count} responses`)));
  });
}
