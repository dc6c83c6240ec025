import { spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { createLogger } from "../src/log.js";

const BIN = fileURLToPath(new URL("../bin/petrel.js", import.meta.url));

function sink(): { stream: Writable; text: () => string } {
  let text = "";
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      text += chunk.toString("utf8");
      done();
    },
  });
  return { stream, text: () => text };
}

/** Runs `petrel serve` until its start-up line, then stops it; `tty` runs it under script(1) on a pseudo-terminal. */
function serveOutput(tty: boolean): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), "petrel-log-"));
  const env = {
    PATH: process.env.PATH,
    PETREL_LISTEN: "127.0.0.1:0",
    PETREL_DATA_DIR: join(dir, "data"),
    PETREL_CONFIG: join(dir, "petrel.yaml"),
  };
  const [cmd, args] = tty ? ["script", ["-qfec", `${process.execPath} ${BIN} serve`, "/dev/null"]] : [process.execPath, [BIN, "serve"]];
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env, stdio: ["pipe", "pipe", "inherit"] });
    let out = "";
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`no start-up line in: ${out}`));
    }, 15_000);
    let stopping = false;
    child.stdout.on("data", (c: Buffer) => {
      out += c.toString("utf8");
      // Once: the terminal echoes ^C back, which would otherwise send another, and another.
      if (!stopping && out.includes("petrel listening")) {
        stopping = true;
        clearTimeout(timer);
        // Under script(1) the terminal's ^C is what stops petrel.
        if (tty) child.stdin.write("\x03");
        else child.kill("SIGTERM");
      }
    });
    child.once("close", () => resolve(out));
  });
}

describe("petrel's server output", () => {
  it("writes pretty lines when asked to, with the message and level for a person", () => {
    const out = sink();
    const log = createLogger({ level: "info", pretty: true, destination: out.stream });
    log.info({ listen: "127.0.0.1:8080" }, "petrel listening");
    log.info({ token: "hush-0123456789" }, "with a secret");
    const text = out.text();
    expect(text).toMatch(/INFO.*petrel listening/);
    expect(text).toContain("127.0.0.1:8080");
    expect(() => JSON.parse(text.split("\n")[0]!)).toThrow();
    expect(text).not.toContain("hush-0123456789");
  });

  it("writes JSON lines when stdout is not a terminal", async () => {
    const out = await serveOutput(false);
    const lines = out.split("\n").filter(Boolean);
    expect(lines.length).toBeGreaterThan(0);
    for (const line of lines) expect(() => JSON.parse(line)).not.toThrow();
    expect(lines.map((l) => (JSON.parse(l) as { msg: string }).msg)).toContain("petrel listening");
  });

  it("writes human-readable lines when stdout is a terminal", async () => {
    const out = await serveOutput(true);
    const listening = out.split(/\r?\n/).find((l) => l.includes("petrel listening"));
    expect(listening).toBeDefined();
    expect(listening).toMatch(/INFO/);
    expect(listening!.trimStart().startsWith("{")).toBe(false);
  });
});
