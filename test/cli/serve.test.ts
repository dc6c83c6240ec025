import { spawn, spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync } from "node:fs";
import type { Server } from "node:net";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const BIN = fileURLToPath(new URL("../../bin/petrel.js", import.meta.url));

/** `petrel serve` as a supervisor runs it; resolves with its exit code and output, or kills it after `ms`. */
function serve(env: Record<string, string>, ms = 15_000): Promise<{ code: number | null; stdout: string; stderr: string; ms: number }> {
  const started = Date.now();
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, "serve"], { env: { PATH: process.env.PATH, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c: Buffer) => (stdout += c.toString("utf8")));
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString("utf8")));
    const timer = setTimeout(() => child.kill("SIGKILL"), ms);
    child.once("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr, ms: Date.now() - started });
    });
  });
}

/** The one line of a failed start: on stderr, in words, and no error record as JSON besides it. */
function expectOneLine(run: { stdout: string; stderr: string }, line: RegExp): void {
  const lines = run.stderr.trimEnd().split("\n");
  expect(lines).toHaveLength(1);
  expect(lines[0]).toMatch(line);
  expect(lines[0]).not.toMatch(/^\{/);
  const levels = run.stdout
    .split("\n")
    .filter(Boolean)
    .map((l) => (JSON.parse(l) as { level: number }).level);
  expect(levels.filter((level) => level >= 50)).toEqual([]);
}

describe("petrel serve with a bad environment", () => {
  it.each([
    [{ NOMAD_ADDR: "127.0.0.1:4646", NOMAD_SKIP_VERIFY: "yes" }, "NOMAD_SKIP_VERIFY"],
    [{ PETREL_LISTEN: "nowhere" }, "PETREL_LISTEN"],
    [{ PETREL_REQUEST_TIMEOUT: "0" }, "PETREL_REQUEST_TIMEOUT"],
    [{ PETREL_MAX_CONNECTIONS: "lots" }, "PETREL_MAX_CONNECTIONS"],
    [{ CONSUL_HTTP_TOKEN_FILE: "/nonexistent/token" }, "CONSUL_HTTP_TOKEN_FILE"],
    [{ NOMAD_ADDR: "127.0.0.1:4646", CONSUL_HTTP_TOKEN_FILE: "/" }, "CONSUL_HTTP_TOKEN_FILE"],
  ])("stops with exit 2 and one line naming the variable (%o)", (env, variable) => {
    const run = spawnSync(process.execPath, [BIN, "serve"], { env: { PATH: process.env.PATH, ...env }, encoding: "utf8", timeout: 20_000 });
    expect(run.status).toBe(2);
    const lines = run.stderr.trim().split("\n");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(new RegExp(`^petrel: ${variable}: `));
  });
});

describe("petrel serve that cannot start", () => {
  let blocker: Server;
  let port: number;
  let dead: number;
  const dir = mkdtempSync(join(tmpdir(), "petrel-serve-"));

  beforeAll(async () => {
    blocker = createServer((s) => s.destroy());
    await new Promise<void>((r) => blocker.listen(0, "127.0.0.1", r));
    port = (blocker.address() as { port: number }).port;
    // A port nobody listens on: Nomad and Consul that never answer.
    const probe = createServer();
    await new Promise<void>((r) => probe.listen(0, "127.0.0.1", r));
    dead = (probe.address() as { port: number }).port;
    await new Promise<void>((r) => probe.close(() => r()));
  });
  afterAll(() => blocker.close());

  it("exits 2 with one line when the port is taken (single machine)", async () => {
    const run = await serve({
      PETREL_LISTEN: `127.0.0.1:${port}`,
      PETREL_DATA_DIR: join(dir, "data"),
      PETREL_CONFIG: join(dir, "petrel.yaml"),
    });
    expect(run.code).toBe(2);
    expectOneLine(run, /^petrel: PETREL_LISTEN: cannot listen on 127\.0\.0\.1:\d+ \(EADDRINUSE\)$/);
  });

  it("exits 2 with one line when the port is taken in cluster mode, instead of retrying Nomad and Consul", async () => {
    const run = await serve({
      PETREL_LISTEN: `127.0.0.1:${port}`,
      NOMAD_ADDR: `http://127.0.0.1:${dead}`,
      CONSUL_HTTP_ADDR: `http://127.0.0.1:${dead}`,
    });
    expect(run.code).toBe(2);
    expect(run.ms).toBeLessThan(10_000);
    expectOneLine(run, /^petrel: PETREL_LISTEN: cannot listen on 127\.0\.0\.1:\d+ \(EADDRINUSE\)$/);
  });

  it("exits 2 with one line when petrel.yaml cannot be read", async () => {
    const unreadable = join(dir, "is-a-directory.yaml");
    mkdirSync(unreadable);
    const run = await serve({ PETREL_LISTEN: "127.0.0.1:0", PETREL_DATA_DIR: join(dir, "data"), PETREL_CONFIG: unreadable });
    expect(run.code).toBe(2);
    expectOneLine(run, /^petrel: .*is-a-directory\.yaml: cannot read: .*EISDIR/);
  });
});
