import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { createBuildOutput, mergedLogPath } from "../../src/executor/output.js";

// The executor's output writer (src/executor/output.ts) with real files and a real child's pipes.

function sink(): { chunks: string[]; write(c: string | Uint8Array): boolean; once(): void } {
  const chunks: string[] = [];
  return { chunks, write: (c) => (chunks.push(Buffer.from(c).toString()), true), once: () => undefined };
}

describe("the merged log", () => {
  it("lives at PETREL_MERGED_LOG, else under NOMAD_ALLOC_DIR, else nowhere", () => {
    expect(mergedLogPath({ PETREL_MERGED_LOG: "/d/all.log", NOMAD_ALLOC_DIR: "/alloc" })).toBe("/d/all.log");
    expect(mergedLogPath({ NOMAD_ALLOC_DIR: "/alloc" })).toBe("/alloc/petrel/all.log");
    expect(mergedLogPath({})).toBeUndefined();
  });

  it("gets a child's stdout and stderr as they arrive, with step lines, while each sink gets its own", async () => {
    const path = join(mkdtempSync(join(tmpdir(), "petrel-output-")), "petrel", "all.log");
    const out = sink();
    const err = sink();
    const output = createBuildOutput(path, out, err);
    output.stderr.write("==> run .petrel\n");
    const child = spawn("/bin/sh", ["-c", "echo a; sleep 0.2; echo b >&2; sleep 0.2; echo c"], { stdio: ["ignore", "pipe", "pipe"] });
    output.attach?.(child.stdout, child.stderr);
    await new Promise((r) => child.once("exit", r));
    await output.drain(1000);
    output.stderr.write("==> exit 0\n");
    output.close();
    expect(readFileSync(path, "utf8")).toBe("==> run .petrel\na\nb\nc\n==> exit 0\n");
    expect(out.chunks.join("")).toBe("a\nc\n");
    expect(err.chunks.join("")).toBe("==> run .petrel\nb\n==> exit 0\n");
  });

  it("stops at its size limit with one line saying so, while the sinks get everything", () => {
    const path = join(mkdtempSync(join(tmpdir(), "petrel-output-")), "all.log");
    const err = sink();
    const output = createBuildOutput(path, sink(), err, 10);
    output.stderr.write("12345678");
    output.stderr.write("abcdef");
    output.stderr.write("more");
    output.close();
    expect(readFileSync(path, "utf8")).toBe(
      "12345678\n==> the merged log stops here (10 bytes); stdout and stderr go on in their own logs\n",
    );
    expect(err.chunks.join("")).toBe("12345678abcdefmore");
  });

  it("takes no pipes without a file, so the build writes to the executor's own stdout and stderr", () => {
    const err = sink();
    const output = createBuildOutput(undefined, sink(), err);
    expect(output.attach).toBeUndefined();
    output.stderr.write("==> step\n");
    expect(err.chunks).toEqual(["==> step\n"]);
  });
});
