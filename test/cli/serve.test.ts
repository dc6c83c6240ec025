import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const BIN = fileURLToPath(new URL("../../bin/petrel.js", import.meta.url));

describe("petrel serve with a bad environment", () => {
  it.each([
    [{ NOMAD_ADDR: "127.0.0.1:4646", NOMAD_SKIP_VERIFY: "yes" }, "NOMAD_SKIP_VERIFY"],
    [{ PETREL_LISTEN: "nowhere" }, "PETREL_LISTEN"],
    [{ CONSUL_HTTP_TOKEN_FILE: "/nonexistent/token" }, "CONSUL_HTTP_TOKEN_FILE"],
  ])("stops with exit 2 and one line naming the variable (%o)", (env, variable) => {
    const run = spawnSync(process.execPath, [BIN, "serve"], { env: { PATH: process.env.PATH, ...env }, encoding: "utf8", timeout: 20_000 });
    expect(run.status).toBe(2);
    const lines = run.stderr.trim().split("\n");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(new RegExp(`^petrel: ${variable}: `));
  });

  it("stops with a line naming PETREL_LISTEN when the port is taken", async () => {
    const { createServer } = await import("node:net");
    const blocker = createServer();
    await new Promise<void>((r) => blocker.listen(0, "127.0.0.1", r));
    const port = (blocker.address() as { port: number }).port;
    const { mkdtempSync } = await import("node:fs");
    const { tmpdir } = await import("node:os");
    const { join } = await import("node:path");
    const dir = mkdtempSync(join(tmpdir(), "petrel-serve-"));
    const run = spawnSync(process.execPath, [BIN, "serve"], {
      env: { PATH: process.env.PATH, PETREL_LISTEN: `127.0.0.1:${port}`, PETREL_DATA_DIR: join(dir, "data"), PETREL_CONFIG: join(dir, "petrel.yaml"), LOG_LEVEL: "silent" },
      encoding: "utf8",
      timeout: 20_000,
    });
    blocker.close();
    expect(run.status).toBe(2);
    expect(run.stderr).toMatch(/PETREL_LISTEN: cannot listen on 127\.0\.0\.1:\d+ \(EADDRINUSE\)/);
  });
});
