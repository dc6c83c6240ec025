import { mkdtempSync, readFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { runBin } from "./harness.js";

const VERSION = (JSON.parse(readFileSync(fileURLToPath(new URL("../../package.json", import.meta.url)), "utf8")) as { version: string })
  .version;

/** A port something else listens on while `body` runs: a `petrel serve` that really started would answer on it. */
async function withTakenPort<T>(body: (port: number) => Promise<T>): Promise<T> {
  const blocker = createServer((socket) => socket.destroy());
  await new Promise<void>((r) => blocker.listen(0, "127.0.0.1", r));
  try {
    return await body((blocker.address() as { port: number }).port);
  } finally {
    blocker.close();
  }
}

describe("petrel's command line", () => {
  it.each([["--help"], ["-h"], ["help"]])("`petrel %s` prints the usage and exits 0", async (flag) => {
    const run = await runBin([flag], {});
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(/^usage: petrel <command>/);
    expect(run.stdout).toContain("serve");
    expect(run.stderr).toBe("");
  });

  it("`petrel --version` prints package.json's version", async () => {
    const run = await runBin(["--version"], {});
    expect(run.code).toBe(0);
    expect(run.stdout).toBe(`petrel ${VERSION}\n`);
  });

  it.each([[["serve", "--help"]], [["serve", "-h"]], [["help", "serve"]]])(
    "`petrel %j` prints serve's usage and exits 0 without starting",
    async (args) => {
      const dir = mkdtempSync(join(tmpdir(), "petrel-help-"));
      // Were the server to start, it would fail on the taken port with exit 2, or keep running until the timeout.
      const run = await withTakenPort((port) =>
        runBin(args, { PETREL_LISTEN: `127.0.0.1:${port}`, PETREL_DATA_DIR: join(dir, "data"), PETREL_CONFIG: join(dir, "petrel.yaml") }),
      );
      expect(run.code).toBe(0);
      expect(run.stdout).toMatch(/^usage: petrel serve/);
      expect(run.stderr).toBe("");
      expect(run.stdout).not.toContain("petrel listening");
    },
  );

  it.each([
    ["builds", "usage: petrel builds"],
    ["logs", "usage: petrel logs"],
    ["cancel", "usage: petrel cancel"],
    ["dispatch", "usage: petrel dispatch"],
    ["executor", "usage: petrel executor"],
    ["run", "usage: petrel run"],
    ["replay", "usage: petrel replay"],
    ["repo", "usage: petrel repo"],
    ["builder", "usage: petrel builder"],
  ])("`petrel %s --help` prints its usage and exits 0", async (command, start) => {
    // NOMAD_ADDR points nowhere: a command that did its work instead of answering --help would fail.
    const run = await runBin([command, "--help"], { NOMAD_ADDR: "http://127.0.0.1:1", PETREL_URL: "http://127.0.0.1:1" });
    expect(run.code).toBe(0);
    expect(run.stdout.startsWith(start)).toBe(true);
    expect(run.stderr).toBe("");
  });

  it.each([
    [["--bogus"], /^petrel: unknown option --bogus; see `petrel --help`$/],
    [["frobnicate"], /^petrel: unknown command "frobnicate"; see `petrel --help`$/],
    [["builds", "--bogus"], /^petrel builds: unknown option --bogus; see `petrel builds --help`$/],
    [["builds", "--limit"], /^petrel builds: --limit needs a value; see `petrel builds --help`$/],
    [["builds", "--json=yes"], /^petrel builds: --json takes no value; see `petrel builds --help`$/],
    [["logs"], /^petrel logs: missing argument; see `petrel logs --help`$/],
    [["cancel", "a", "b"], /^petrel cancel: unexpected argument "b"; see `petrel cancel --help`$/],
    [["serve", "--port=9"], /^petrel serve: unknown option --port; see `petrel serve --help`$/],
    [["serve", "now"], /^petrel serve: unexpected argument "now"; see `petrel serve --help`$/],
    [["run", "--flavor"], /^petrel run: --flavor needs a value; see `petrel run --help`$/],
    [["executor", "-x"], /^petrel executor: unknown option -x; see `petrel executor --help`$/],
    [["repo", "add", "--nope"], /^petrel repo add: unknown option --nope; see `petrel repo add --help`$/],
    [["repo", "frob"], /^petrel repo: unknown subcommand "frob"; see `petrel repo --help`$/],
  ])("`petrel %j` says what is wrong in one line of its own and exits 64", async (args, line) => {
    const run = await runBin(args, { PETREL_URL: "http://127.0.0.1:1" });
    expect(run.code).toBe(64);
    expect(run.stdout).toBe("");
    const lines = run.stderr.trimEnd().split("\n");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(line);
    // Node's own parser wording must not leak through.
    expect(run.stderr).not.toMatch(/ERR_PARSE_ARGS|To specify an option argument|Unknown option '/);
  });

  it("`petrel` alone shows the usage on stderr and exits 64", async () => {
    const run = await runBin([], {});
    expect(run.code).toBe(64);
    expect(run.stderr).toMatch(/^usage: petrel <command>/);
  });
});
