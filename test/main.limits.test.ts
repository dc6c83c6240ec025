import { mkdtempSync } from "node:fs";
import type { Socket } from "node:net";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterEach, describe, expect, it, vi } from "vitest";
import { readConfig } from "../src/config.js";
import { sign } from "../src/gitea/signature.js";
import type { RunningPetrel } from "../src/main.js";
import { startPetrel } from "../src/main.js";
import { startConsulFake } from "./fakes/consul.js";
import { startGiteaFake } from "./fakes/gitea.js";
import { startNomadFake } from "./fakes/nomad.js";
import { fixtureBytes } from "./gitea/fixtures.js";
import { GITEA_TOKEN, HOOK_SECRET, seedFakes } from "./helpers/cluster.js";
import { captureLogs } from "./helpers/log-capture.js";

/** A single-machine petrel on a free port with the given extra settings, its logs captured at debug. */
async function start(extra: Record<string, string> = {}): Promise<{ petrel: RunningPetrel; logs: ReturnType<typeof captureLogs> }> {
  const dir = mkdtempSync(join(tmpdir(), "petrel-limits-"));
  const env = { PETREL_LISTEN: "127.0.0.1:0", PETREL_DATA_DIR: join(dir, "data"), PETREL_CONFIG: join(dir, "petrel.yaml"), ...extra };
  const logs = captureLogs("debug");
  return { petrel: await startPetrel(readConfig(env, dir), logs.log, env), logs };
}

function open(url: string): Promise<Socket> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname, () => resolve(socket));
    socket.once("error", reject);
  });
}

/** Resolves with everything the server sent once it closed the connection (or after `ms`). */
function untilClosed(socket: Socket, ms: number): Promise<{ closed: boolean; text: string }> {
  return new Promise((resolve) => {
    let text = "";
    socket.on("data", (c: Buffer) => (text += c.toString("utf8")));
    socket.on("error", () => undefined);
    const timer = setTimeout(() => resolve({ closed: false, text }), ms);
    socket.once("close", () => {
      clearTimeout(timer);
      resolve({ closed: true, text });
    });
  });
}

/**
 * Sends the head of a request with `Expect: 100-continue` and resolves once the server answers 100 Continue:
 * Node does so when it hands the request to the app, so the request is in flight from then on.
 */
function sendHead(socket: Socket, head: string): Promise<void> {
  return new Promise((resolve, reject) => {
    let seen = "";
    const onData = (c: Buffer) => {
      seen += c.toString("utf8");
      if (!seen.startsWith("HTTP/1.1 100 ")) return reject(new Error(`expected 100 Continue, got ${JSON.stringify(seen)}`));
      if (!seen.includes("\r\n\r\n")) return;
      socket.off("data", onData);
      resolve();
    };
    socket.on("data", onData);
    socket.write(head.replace(/\r\n\r\n$/, "\r\nExpect: 100-continue\r\n\r\n"));
  });
}

async function metric(url: string, line: RegExp): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const m = text.split("\n").find((l) => line.test(l));
  return m === undefined ? 0 : Number(m.split(" ").at(-1));
}

describe("petrel's HTTP server under hostile clients", () => {
  let running: RunningPetrel | undefined;
  afterEach(async () => {
    await running?.stop();
    running = undefined;
  });

  it("logs a client that hangs up mid-body on POST /hook at debug, without a stack, and counts it as aborted", async () => {
    const { petrel, logs } = await start();
    running = petrel;
    const socket = await open(petrel.url);
    await sendHead(
      socket,
      "POST /hook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Gitea-Event: push\r\nContent-Length: 1000\r\n\r\n",
    );
    // Hang up once the partial body has left: the server is reading the body when the connection goes.
    await new Promise<void>((r) => socket.write('{"ref": "refs/heads/main", "repository": {', () => r()));
    socket.destroy();

    await expect.poll(() => metric(petrel.url, /^petrel_webhook_deliveries_total\{outcome="aborted"\}/), { timeout: 5000 }).toBe(1);
    expect(await metric(petrel.url, /^petrel_webhook_deliveries_total\{outcome="internal"\}/)).toBe(0);
    const records = logs.lines.map((l) => JSON.parse(l) as { level: number; code?: string; err?: unknown; msg: string });
    const aborted = records.filter((r) => r.code === "aborted");
    expect(aborted).toHaveLength(1);
    expect(aborted[0]!.level).toBe(20); // debug
    expect(records.filter((r) => r.level >= 50)).toEqual([]);
    expect(logs.text()).not.toMatch(/"stack"|\n\s+at /);
  });

  it("logs a client that hangs up mid-body on POST /builds at debug, without a stack", async () => {
    const { petrel, logs } = await start({ PETREL_ADMIN_TOKEN: "admin-token-0123456789abcdef" });
    running = petrel;
    const socket = await open(petrel.url);
    await sendHead(
      socket,
      "POST /builds HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer admin-token-0123456789abcdef\r\nContent-Length: 500\r\n\r\n",
    );
    await new Promise<void>((r) => socket.write('{"repo": "acme/', () => r()));
    socket.destroy();
    await expect.poll(() => logs.lines.some((l) => l.includes('"request failed"')), { timeout: 5000 }).toBe(true);
    const records = logs.lines.map((l) => JSON.parse(l) as { level: number; code?: string });
    expect(records.filter((r) => r.level >= 40)).toEqual([]);
    expect(records.find((r) => r.code !== undefined)).toMatchObject({ code: "aborted", level: 20 });
    expect(logs.text()).not.toMatch(/"stack"/);
  });

  it("cuts off a slow body after PETREL_REQUEST_TIMEOUT", async () => {
    const { petrel } = await start({ PETREL_REQUEST_TIMEOUT: "1" });
    running = petrel;
    const socket = await open(petrel.url);
    const started = Date.now();
    socket.write(
      "POST /hook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Gitea-Event: push\r\nContent-Length: 1000\r\n\r\n{",
    );
    // One byte every 200 ms: never idle long enough for a socket timeout, yet far too slow to finish.
    const drip = setInterval(() => socket.writable && socket.write(" "), 200);
    const end = await untilClosed(socket, 8000);
    clearInterval(drip);
    expect(end.closed).toBe(true);
    const took = Date.now() - started;
    expect(took).toBeGreaterThanOrEqual(900);
    expect(took).toBeLessThan(4000);
    expect(end.text).toMatch(/^HTTP\/1\.1 408 /);
  });

  it("cuts off a client that never finishes its headers", async () => {
    const { petrel } = await start({ PETREL_REQUEST_TIMEOUT: "1" });
    running = petrel;
    const socket = await open(petrel.url);
    socket.write("GET /health HTTP/1.1\r\nHost: x\r\n");
    const drip = setInterval(() => socket.writable && socket.write("X-Slow: 1\r\n"), 200);
    const end = await untilClosed(socket, 8000);
    clearInterval(drip);
    expect(end.closed).toBe(true);
  });

  it("drops connections beyond PETREL_MAX_CONNECTIONS and counts them", async () => {
    const { petrel } = await start({ PETREL_MAX_CONNECTIONS: "3", PETREL_REQUEST_TIMEOUT: "30" });
    running = petrel;
    // Three idle connections fill the cap; each is held open by a request that never finishes its headers.
    const held = await Promise.all([0, 1, 2].map(() => open(petrel.url)));
    for (const s of held) s.write("GET /health HTTP/1.1\r\nHost: x\r\n");
    await sleep(100);
    const extra = await Promise.all([0, 1].map(() => open(petrel.url)));
    const ends = await Promise.all(extra.map((s) => untilClosed(s, 3000)));
    expect(ends.map((e) => e.closed)).toEqual([true, true]);
    expect(ends.map((e) => e.text)).toEqual(["", ""]);
    // One held connection finishes: room again for /metrics.
    held[0]!.destroy();
    // Until the server has seen that close, /metrics is itself dropped (and counted): ask until it answers.
    let refused = 0;
    const dropped = () => metric(petrel.url, /^petrel_http_connections_dropped_total /).catch(() => void refused++);
    let answer: number | undefined;
    await expect.poll(async () => (answer = (await dropped()) ?? undefined), { timeout: 5000 }).toBeTypeOf("number");
    expect(answer).toBe(2 + refused);
    for (const s of held) s.destroy();
  });
});

describe("stopping petrel while a client follows a build's log", () => {
  it("breaks the transfer off with a plain log line and no stack trace anywhere", async () => {
    const consul = await startConsulFake();
    const nomad = await startNomadFake();
    const gitea = await startGiteaFake({ token: GITEA_TOKEN });
    seedFakes(consul, nomad, gitea.url);
    const token = "admin-token-0123456789abcdef";
    const env = { NOMAD_ADDR: nomad.url, CONSUL_HTTP_ADDR: consul.url, PETREL_LISTEN: "127.0.0.1:0", PETREL_ADMIN_TOKEN: token };
    const logs = captureLogs("debug");
    // @hono/node-server prints a failed response stream with console.error: watch the console too.
    const printed: unknown[] = [];
    const spies = (["error", "warn", "info", "log"] as const).map((m) =>
      vi.spyOn(console, m).mockImplementation((...args) => void printed.push(...args)),
    );
    try {
      const petrel = await startPetrel(readConfig(env), logs.log, env);
      const body = fixtureBytes("push.json");
      const res = await fetch(`${petrel.url}/hook`, {
        method: "POST",
        headers: { "content-type": "application/json", "x-gitea-event": "push", "x-gitea-signature": sign(HOOK_SECRET, body) },
        body: new Uint8Array(body),
      });
      const { build } = (await res.json()) as { build: string };
      nomad.placeAlloc(build);
      nomad.startTask(build);
      nomad.writeLog(build, "stdout", "still going\n");
      const follower = await fetch(`${petrel.url}/builds/${encodeURIComponent(build)}/logs?type=stdout`, {
        headers: { authorization: `Bearer ${token}` },
      });
      const reader = (follower.body as ReadableStream<Uint8Array>).getReader();
      expect(new TextDecoder().decode((await reader.read()).value)).toBe("still going\n");
      const rest = (async () => {
        for (;;) if ((await reader.read()).done) return "ended cleanly";
      })().catch((err: unknown) => err);

      await petrel.stop();
      // A broken transfer, not a clean end: the client knows to resume.
      expect(await rest).toBeInstanceOf(Error);
      expect(printed).toEqual([]);
      expect(logs.text()).not.toMatch(/"stack"|\n\s+at /);
      const cut = logs.lines.map((l) => JSON.parse(l) as { level: number; msg: string }).find((r) => r.msg.includes("shutting down"));
      expect(cut).toMatchObject({ level: 30, msg: "log stream cut off: petrel is shutting down" });
    } finally {
      for (const spy of spies) spy.mockRestore();
      await Promise.all([consul.close(), nomad.close(), gitea.close()]);
    }
  });
});
