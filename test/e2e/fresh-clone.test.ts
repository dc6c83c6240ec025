import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));

describe("a fresh clone", () => {
  it("comes up with `npm ci && npm start` and no Nomad or Consul", async () => {
    const dir = mkdtempSync(join(tmpdir(), "petrel-clone-"));
    const clone = join(dir, "petrel");
    // The committed tree, as CI and a newcomer get it (uncommitted work is not part of a clone).
    execFileSync("git", ["clone", "-q", ROOT, clone]);
    execFileSync("npm", ["ci", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error"], { cwd: clone, stdio: "ignore" });
    const port = 20000 + Math.floor(Math.random() * 30000);
    const child = spawn("npm", ["start", "--silent"], {
      cwd: clone,
      env: { PATH: process.env.PATH, HOME: process.env.HOME, PETREL_LISTEN: `127.0.0.1:${port}` },
      stdio: "ignore",
      detached: true,
    });
    try {
      let health: Response | undefined;
      for (let i = 0; i < 600 && health === undefined; i++) {
        health = await fetch(`http://127.0.0.1:${port}/health`).catch(() => undefined);
        if (health === undefined) await sleep(100);
      }
      expect(health?.status).toBe(200);
      expect(await health?.json()).toMatchObject({ status: "ok", mode: "local" });
    } finally {
      process.kill(-child.pid!, "SIGTERM");
    }
  }, 240_000);
});
