import { spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ApiBuild } from "../../src/cli/builds.js";
import {
  ALREADY_ENDED_EXIT,
  buildsCommand,
  buildsTable,
  cancelCommand,
  dispatchCommand,
  exitForBuild,
  logsCommand,
  rerunCommand,
} from "../../src/cli/builds.js";
import { EXIT } from "../../src/cli/ops.js";
import type { LocalPetrel } from "./harness.js";
import { ADMIN_TOKEN, captureIo, meta, runBin, startLocalPetrel, until } from "./harness.js";

const COMMIT = "4c1d7e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d";
const OTHER = "9f8e7d6c5b4a39281706f5e4d3c2b1a098765432";
// What the stand-in executor prints on stdout, byte for byte: ANSI colour and a byte that is not UTF-8.
const STDOUT = Buffer.concat([Buffer.from(`\x1b[32mbuilding\x1b[0m ${COMMIT}\n`), Buffer.from([0xff]), Buffer.from("raw\ndone\n")]);
// Its merged log: stdout and stderr (the step line) in the order it wrote them.
const MERGED = Buffer.concat([
  Buffer.from(`\x1b[32mbuilding\x1b[0m ${COMMIT}\n`),
  Buffer.from([0xff]),
  Buffer.from("raw\n==> step header\ndone\n"),
]);

/** The summary lines (`build <id>: ...`) among a command's stderr lines. */
function summaries(stderr: string, id: string): string[] {
  return stderr.split("\n").filter((l) => l.startsWith(`petrel: build ${id}: `));
}

let petrel: LocalPetrel;
let env: Record<string, string>;
let ok: string;
let failed: string;
let privateBuild: string;

async function finished(id: string): Promise<ApiBuild> {
  return until(async () => {
    const b = await petrel.backend.getBuild(id);
    return b !== undefined && b.state !== "queued" && b.state !== "running" ? (b as ApiBuild) : undefined;
  });
}

beforeAll(async () => {
  petrel = await startLocalPetrel();
  env = { PETREL_URL: petrel.url };
  ok = (await petrel.backend.dispatch({ builder: "builder", meta: meta("main"), idempotencyToken: "ok" })).id;
  await finished(ok);
  failed = (await petrel.backend.dispatch({ builder: "builder", meta: meta("fail-7", OTHER), idempotencyToken: "failed" })).id;
  await finished(failed);
  privateBuild = (
    await petrel.backend.dispatch({
      builder: "builder",
      meta: { ...meta("main", COMMIT, "acme/private"), PRIVATE: "true" },
      idempotencyToken: "p",
    })
  ).id;
  await finished(privateBuild);
});

afterAll(async () => {
  await petrel?.close();
});

describe("petrel builds", () => {
  it("prints a table of builds, newest first, with short commits", async () => {
    const c = captureIo();
    expect(await buildsCommand([], env, c.io)).toBe(0);
    const lines = c.stdout().trimEnd().split("\n");
    expect(lines[0]).toMatch(/^ID\s+STATE\s+REPO\s+REF\s+COMMIT\s+STARTED\s+TOOK\s+WHY$/);
    // The private repository's build is hidden without the token.
    expect(lines).toHaveLength(3);
    expect(lines[1]).toContain(failed);
    expect(lines[1]).toMatch(/failure\(7\)\s+acme\/widgets\s+fail-7\s+9f8e7d6\s+\d+s ago/);
    expect(lines[2]).toContain(ok);
    expect(lines[2]).toMatch(/success\s+acme\/widgets\s+main\s+4c1d7e0\s/);
    expect(c.stderr()).toContain(`GET ${petrel.url}/builds?limit=20`);
    expect(c.stderr()).toContain("1 build of private repositories hidden; set PETREL_ADMIN_TOKEN to see it\n");
  });

  it("passes the hidden count through with --json, still noting it on stderr", async () => {
    const c = captureIo();
    expect(await buildsCommand(["--json", "-q"], env, c.io)).toBe(0);
    expect((JSON.parse(c.stdout()) as { hidden: number }).hidden).toBe(1);
    expect(c.stderr()).toBe("1 build of private repositories hidden; set PETREL_ADMIN_TOKEN to see it\n");
  });

  it("says how to get the next page, and --cursor gets it", async () => {
    const admin = { ...env, PETREL_ADMIN_TOKEN: ADMIN_TOKEN };
    const first = captureIo();
    expect(await buildsCommand(["--json", "-q", "--limit", "1", "--repo", "acme/widgets"], admin, first.io)).toBe(0);
    const page = JSON.parse(first.stdout()) as { builds: ApiBuild[]; cursor: string };
    expect(page.builds.map((b) => b.id)).toEqual([failed]);
    expect(first.stderr()).toBe(`more builds: petrel builds --repo acme/widgets --limit 1 --cursor ${page.cursor}\n`);
    const second = captureIo();
    expect(await buildsCommand(["--limit", "1", "--repo", "acme/widgets", "--cursor", page.cursor], admin, second.io)).toBe(0);
    expect(second.stdout()).toContain(ok);
    expect(second.stdout()).not.toContain(failed);
  });

  it("prints petrel's JSON with --json and passes the filters on", async () => {
    const c = captureIo();
    expect(await buildsCommand(["--json", "--state", "failure", "--repo", "acme/widgets", "--token", ADMIN_TOKEN], env, c.io)).toBe(0);
    const body = JSON.parse(c.stdout()) as { builds: ApiBuild[] };
    expect(body.builds.map((b) => b.id)).toEqual([failed]);
    expect(body.builds[0]).toMatchObject({ state: "failure", exitCode: 7, commit: OTHER });
  });

  it("shows private builds to the admin token from PETREL_ADMIN_TOKEN", async () => {
    const c = captureIo();
    expect(await buildsCommand(["--json", "-q"], { ...env, PETREL_ADMIN_TOKEN: ADMIN_TOKEN }, c.io)).toBe(0);
    expect((JSON.parse(c.stdout()) as { builds: ApiBuild[] }).builds.map((b) => b.id)).toContain(privateBuild);
    expect(c.stderr()).toBe("");
  });

  it("exits 2 with petrel's message when a filter is invalid", async () => {
    const c = captureIo();
    expect(await buildsCommand(["--state", "sideways"], env, c.io)).toBe(EXIT.refused);
    expect(c.stderr()).toMatch(
      /petrel builds: petrel at http:\/\/127\.0\.0\.1:\d+ answered 400 to GET \/builds\?state=sideways&limit=20: state must be one of/,
    );
  });

  it("exits 5 naming the address when petrel is not reachable", async () => {
    const c = captureIo();
    expect(await buildsCommand([], { PETREL_LISTEN: "127.0.0.1:1" }, c.io)).toBe(EXIT.unreachable);
    expect(c.stderr()).toMatch(/cannot reach petrel at http:\/\/127\.0\.0\.1:1 \(GET \/builds\?limit=20\): .*ECONNREFUSED/);
  });

  it("formats a queued build without a start or duration", () => {
    const table = buildsTable(
      [
        {
          id: "builder/dispatch-1-0000000a",
          state: "queued",
          repo: "a/b",
          ref: "main",
          commit: "abcdef0123",
          createdAt: new Date(Date.now() - 125_000).toISOString(),
        } as ApiBuild,
      ],
      Date.now(),
    );
    expect(table.split("\n")[1]).toMatch(/queued\s+a\/b\s+main\s+abcdef0\s+2m ago\s+-$/);
  });
});

describe("petrel logs", () => {
  it("writes the merged log (stdout, stderr, step lines in write order) by default, and its summary once", async () => {
    const c = captureIo();
    expect(await logsCommand([ok], env, c.io)).toBe(0);
    expect(c.stdoutBytes().equals(MERGED)).toBe(true);
    expect(summaries(c.stderr(), ok)).toEqual([expect.stringContaining("success")]);
    expect(c.stderr()).toContain(`/builds/${encodeURIComponent(ok)}/logs?type=all&follow=false`);
    const all = captureIo();
    expect(await logsCommand(["--all", "-f", ok], env, all.io)).toBe(0);
    expect(all.stdoutBytes().equals(MERGED)).toBe(true);
    expect(summaries(all.stderr(), ok)).toHaveLength(1);
  });

  it("writes the stdout log byte for byte with --stdout", async () => {
    const c = captureIo();
    expect(await logsCommand(["--stdout", ok], env, c.io)).toBe(0);
    expect(c.stdoutBytes().equals(STDOUT)).toBe(true);
    expect(summaries(c.stderr(), ok)).toHaveLength(1);
  });

  it("refuses two log choices at once", async () => {
    const c = captureIo();
    expect(await logsCommand(["--stdout", "--stderr", ok], env, c.io)).toBe(EXIT.usage);
    expect(c.stderr()).toContain("cannot be combined");
  });

  it("says a queued build is waiting, then streams it once it runs, and sums it up once", async () => {
    const id = "builder/dispatch-1700000000-0000cafe";
    let buildReads = 0;
    const server = createServer((req, res) => {
      const url = new URL(req.url ?? "/", "http://x");
      if (url.pathname.endsWith("/logs")) {
        res.writeHead(200, { "content-type": "text/plain" });
        setTimeout(() => res.end("started at last\n"), 100);
        return;
      }
      buildReads++;
      res.writeHead(200, { "content-type": "application/json" });
      const state = buildReads === 1 ? "queued" : "success";
      res.end(JSON.stringify({ id, state, repo: "a/b", commit: COMMIT, ref: "main", createdAt: new Date().toISOString() }));
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    try {
      const c = captureIo();
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      expect(await logsCommand(["-f", id, "--url", url], {}, c.io)).toBe(0);
      expect(c.stdout()).toBe("started at last\n");
      const lines = summaries(c.stderr(), id);
      expect(lines).toEqual([expect.stringMatching(/queued; waiting for it to start$/), expect.stringMatching(/ success$/)]);
    } finally {
      await new Promise<void>((r) => server.close(() => r()));
    }
  });

  it("writes the stderr log with --stderr", async () => {
    const c = captureIo();
    expect(await logsCommand(["--stderr", "-q", ok], env, c.io)).toBe(0);
    expect(c.stdout()).toBe("==> step header\n");
    expect(c.stderr()).toBe("");
  });

  it("exits with the build's own exit code when it failed", async () => {
    const c = captureIo();
    expect(await logsCommand(["-f", failed], env, c.io)).toBe(7);
    expect(c.stderr()).toContain("exit code 7");
  });

  it("exits 4 for an ID that is not one of petrel's builds", async () => {
    const c = captureIo();
    expect(await logsCommand(["other-job/dispatch-1700000000-1a2b3c4d"], env, c.io)).toBe(EXIT.notFound);
    expect(c.stderr()).toContain("is not a petrel build");
    const unknown = captureIo();
    expect(await logsCommand(["builder/dispatch-1700000000-1a2b3c4d"], env, unknown.io)).toBe(EXIT.notFound);
  });

  it("exits 6 for a private repository's build without the token, and reads it with the token", async () => {
    const c = captureIo();
    expect(await logsCommand([privateBuild], env, c.io)).toBe(EXIT.unauthorized);
    expect(c.stderr()).toMatch(/answered 401 .*no token was sent: pass --token or set PETREL_ADMIN_TOKEN/);
    const t = captureIo();
    expect(await logsCommand([privateBuild], { ...env, PETREL_ADMIN_TOKEN: ADMIN_TOKEN }, t.io)).toBe(0);
    expect(t.stdout()).toContain("done\n");
  });

  it("follows a running build live with -f and returns when it ends", async () => {
    const { id } = await petrel.backend.dispatch({ builder: "builder", meta: meta("slow"), idempotencyToken: "slow" });
    const c = captureIo();
    const running = logsCommand(["-f", id], env, c.io);
    // The first bytes arrive while the build still waits for the gate.
    await until(() => c.stdout().includes("building"));
    expect((await petrel.backend.getBuild(id))?.state).toBe("running");
    writeFileSync(join(petrel.dir, "gate"), "");
    expect(await running).toBe(0);
    expect(c.stdout().endsWith("after gate\ndone\n")).toBe(true);
  });

  it("exits 7 without -f while the build runs, and 3 once it was cancelled", async () => {
    const { id } = await petrel.backend.dispatch({ builder: "builder", meta: meta("sleep"), idempotencyToken: "sleep" });
    await until(async () => (await petrel.backend.getBuild(id))?.state === "running");
    const c = captureIo();
    expect(await logsCommand([id], env, c.io)).toBe(EXIT.unfinished);
    const following = captureIo();
    const follow = logsCommand(["-f", id], env, following.io);
    await until(() => following.stdout().includes("building"));
    const cancel = captureIo();
    expect(await cancelCommand([id, "--token", ADMIN_TOKEN], env, cancel.io)).toBe(0);
    expect(await follow).toBe(EXIT.buildError);
    expect(following.stderr()).toContain("cancelled");
  });

  it("resumes at the byte offset it reached when the connection breaks mid-build", async () => {
    const id = "builder/dispatch-1700000000-0000abcd";
    const full = Buffer.from("line one\nline two\nline three\n");
    const requests: string[] = [];
    let logCalls = 0;
    const server = createServer((req, res) => {
      requests.push(req.url ?? "");
      const url = new URL(req.url ?? "/", "http://x");
      if (url.pathname.endsWith("/logs")) {
        logCalls++;
        const offset = Number(url.searchParams.get("offset") ?? 0);
        res.writeHead(200, { "content-type": "text/plain" });
        if (logCalls === 1) {
          // Half the log, then the connection dies without a proper end of the chunked body.
          res.write(full.subarray(0, 13));
          setTimeout(() => res.socket?.destroy(), 50);
          return;
        }
        res.end(full.subarray(offset));
        return;
      }
      res.writeHead(200, { "content-type": "application/json" });
      const state = logCalls >= 2 ? "success" : "running";
      res.end(JSON.stringify({ id, state, repo: "a/b", commit: COMMIT, ref: "main", createdAt: new Date().toISOString() }));
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    try {
      const c = captureIo();
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      expect(await logsCommand(["-f", id, "--url", url], {}, c.io)).toBe(0);
      expect(c.stdout()).toBe(full.toString());
      const logRequests = requests.filter((r) => r.includes("/logs"));
      expect(logRequests[0]).toBe(`/builds/${encodeURIComponent(id)}/logs?type=all&follow=true`);
      expect(logRequests[1]).toBe(`/builds/${encodeURIComponent(id)}/logs?type=all&follow=true&offset=13`);
      expect(c.stderr()).toContain("resuming at byte 13");
    } finally {
      await new Promise<void>((r) => server.close(() => r()));
    }
  });
});

describe("petrel cancel and dispatch", () => {
  it("refuses to cancel without the admin token, saying how to pass it", async () => {
    const c = captureIo();
    expect(await cancelCommand([ok], env, c.io)).toBe(EXIT.unauthorized);
    expect(c.stderr()).toMatch(
      /answered 401 to DELETE \/builds\/builder%2Fdispatch-.*: this endpoint needs Authorization: Bearer <PETREL_ADMIN_TOKEN> \(no token was sent/,
    );
  });

  it("says so when the build had already ended, with its own exit code", async () => {
    const c = captureIo();
    expect(await cancelCommand([ok], { ...env, PETREL_ADMIN_TOKEN: ADMIN_TOKEN }, c.io)).toBe(ALREADY_ENDED_EXIT);
    expect(ALREADY_ENDED_EXIT).toBe(8);
    expect(c.stdout()).toBe(`${ok} had already ended: success; nothing was cancelled\n`);
  });

  it("cancels a running build once; a second cancel says it had already ended (409 already_finished)", async () => {
    const admin = { ...env, PETREL_ADMIN_TOKEN: ADMIN_TOKEN };
    const { id } = await petrel.backend.dispatch({ builder: "builder", meta: meta("sleep", OTHER), idempotencyToken: "cancel-twice" });
    await until(async () => (await petrel.backend.getBuild(id))?.state === "running");
    const first = captureIo();
    expect(await cancelCommand([id, "-q"], admin, first.io)).toBe(0);
    expect(first.stdout()).toMatch(/^cancel(led| requested for)/);
    await finished(id);
    const res = await fetch(`${petrel.url}/builds/${encodeURIComponent(id)}`, {
      method: "DELETE",
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    expect(res.status).toBe(409);
    const body = (await res.json()) as { error: { code: string; message: string } };
    expect(body.error.code).toBe("already_finished");
    expect(body.error.message).toContain("had already ended: cancelled");
    const second = captureIo();
    expect(await cancelCommand([id, "--json"], admin, second.io)).toBe(ALREADY_ENDED_EXIT);
    expect(JSON.parse(second.stdout())).toMatchObject({ id, state: "cancelled" });
  });

  it("refuses to dispatch without the admin token", async () => {
    const c = captureIo();
    expect(await dispatchCommand(["acme/widgets", "main", "--commit", COMMIT], env, c.io)).toBe(EXIT.unauthorized);
    expect(c.stderr()).toContain("answered 401 to POST /builds");
  });

  it("dispatches a build, prints its ID first and its links, and the build exists", async () => {
    const c = captureIo();
    expect(await dispatchCommand(["acme/widgets", "main", "--commit", petrel.repo.main, "--token", ADMIN_TOKEN], env, c.io)).toBe(0);
    const [id, status, logs] = c.stdout().trimEnd().split("\n");
    expect(id).toMatch(/^builder\/dispatch-\d+-[0-9a-f]{8}$/);
    expect(status).toBe(`  status: https://ci.example.test/builds/${encodeURIComponent(id ?? "")}`);
    expect(logs).toBe(`  logs:   https://ci.example.test/builds/${encodeURIComponent(id ?? "")}/logs`);
    const build = await finished(id ?? "");
    expect(build).toMatchObject({ repo: "acme/widgets", commit: petrel.repo.main, ref: "main", event: "manual" });
  });

  it("follows the dispatched build with --follow and exits with its result", async () => {
    const c = captureIo();
    const code = await dispatchCommand(
      ["git.example.test/acme/widgets", "fail-3", "--commit", petrel.repo.fail3, "--follow", "--json"],
      { ...env, PETREL_ADMIN_TOKEN: ADMIN_TOKEN },
      c.io,
    );
    expect(code).toBe(3);
    const [json, ...rest] = c.stdout().split("\n");
    expect(JSON.parse(json ?? "")).toMatchObject({ build: expect.stringMatching(/^builder\/dispatch-/) });
    expect(rest.join("\n")).toContain("building");
    // The build's stderr log goes to stderr.
    expect(c.stderr()).toContain("==> step header\n");
  });

  it("dispatches <repo> <ref> with no flags: the commit from the ref, the clone URL from the entry", async () => {
    const c = captureIo();
    expect(await dispatchCommand(["acme/widgets", "main", "-q"], { ...env, PETREL_ADMIN_TOKEN: ADMIN_TOKEN }, c.io)).toBe(0);
    const id = c.stdout().split("\n")[0] ?? "";
    expect(await finished(id)).toMatchObject({ state: "success", commit: petrel.repo.main, repoUrl: petrel.repo.url, trusted: true });
  });

  it("no longer takes --repo-url", async () => {
    const c = captureIo();
    expect(await dispatchCommand(["acme/widgets", "main", "--repo-url", "file:///tmp/x.git"], env, c.io)).toBe(EXIT.usage);
    expect(c.stderr()).toContain("unknown option --repo-url");
  });

  it("exits 4 when the repository is not registered", async () => {
    const c = captureIo();
    expect(await dispatchCommand(["acme/unknown", "main", "--commit", COMMIT], { ...env, PETREL_ADMIN_TOKEN: ADMIN_TOKEN }, c.io)).toBe(
      EXIT.notFound,
    );
    expect(c.stderr()).toContain("repository acme/unknown is not registered with petrel");
  });
});

describe("petrel rerun", () => {
  it("starts the same build again as a new build, and follows it to the same result", async () => {
    const admin = { ...env, PETREL_ADMIN_TOKEN: ADMIN_TOKEN };
    const d = captureIo();
    expect(await dispatchCommand(["acme/widgets", "fail-3", "-q"], admin, d.io)).toBe(0);
    const original = d.stdout().split("\n")[0] ?? "";
    await finished(original);
    const c = captureIo();
    expect(await rerunCommand([original, "--follow", "--json", "-q"], admin, c.io)).toBe(3);
    const [json, ...rest] = c.stdout().split("\n");
    const answer = JSON.parse(json ?? "") as { build: string; rerun_of: string; trusted: boolean };
    expect(answer).toMatchObject({ rerun_of: original, trusted: true });
    expect(answer.build).not.toBe(original);
    expect(rest.join("\n")).toContain("building");
    const [a, b] = [await petrel.backend.getBuild(original), await petrel.backend.getBuild(answer.build)];
    for (const key of ["repoUrl", "commit", "ref", "flavor", "event", "trusted"] as const) expect(b?.[key]).toEqual(a?.[key]);
  });

  it("says on stderr when the re-run gets no secrets", async () => {
    const c = captureIo();
    // `ok` was dispatched without TRUSTED: its re-run is untrusted too.
    expect(await rerunCommand([ok, "-q"], { ...env, PETREL_ADMIN_TOKEN: ADMIN_TOKEN }, c.io)).toBe(0);
    const id = c.stdout().split("\n")[0] ?? "";
    expect(id).toMatch(/^builder\/dispatch-/);
    expect(c.stderr()).toBe(`petrel rerun: ${id} runs untrusted (no secrets): the original build was not trusted\n`);
    expect(await finished(id)).toMatchObject({ trusted: false, commit: COMMIT, ref: "main" });
  });

  it("exits 4 for an unknown build and 6 without the token", async () => {
    const unknown = captureIo();
    expect(await rerunCommand(["builder/dispatch-1731000000-00000000"], { ...env, PETREL_ADMIN_TOKEN: ADMIN_TOKEN }, unknown.io)).toBe(
      EXIT.notFound,
    );
    const anonymous = captureIo();
    expect(await rerunCommand([ok], env, anonymous.io)).toBe(EXIT.unauthorized);
    expect(anonymous.stderr()).toContain(`answered 401 to POST /builds/${encodeURIComponent(ok)}/rerun`);
  });
});

describe("exit codes", () => {
  it("map build results as documented", () => {
    expect(exitForBuild({ state: "success" })).toBe(0);
    expect(exitForBuild({ state: "failure", exitCode: 42 })).toBe(42);
    expect(exitForBuild({ state: "failure" })).toBe(1);
    expect(exitForBuild({ state: "failure", exitCode: 300 })).toBe(1);
    expect(exitForBuild({ state: "error" })).toBe(3);
    expect(exitForBuild({ state: "cancelled" })).toBe(3);
    expect(exitForBuild({ state: "running" })).toBe(7);
  });

  it("ends quietly with 141 when its reader closes the pipe mid-follow", async () => {
    const { id } = await petrel.backend.dispatch({ builder: "builder", meta: meta("chatty", OTHER), idempotencyToken: "pipe" });
    const child = spawn(process.execPath, [fileURLToPath(new URL("../../bin/petrel.js", import.meta.url)), "logs", "-f", "-q", id], {
      env: { PATH: process.env.PATH, PETREL_URL: petrel.url },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const stderr: Buffer[] = [];
    child.stderr.on("data", (c: Buffer) => stderr.push(c));
    // Like `| head -c 1`: read the first bytes, then close the pipe while the build still runs.
    child.stdout.once("data", () => child.stdout.destroy());
    const code = await new Promise<number | null>((resolve) => child.once("close", resolve));
    expect(code).toBe(EXIT.outputClosed);
    expect(Buffer.concat(stderr).toString()).toBe("");
    expect((await petrel.backend.getBuild(id))?.state).toBe("running");
    await petrel.backend.cancel(id);
  });

  it("are those of the compiled CLI too", async () => {
    const res = await runBin(["logs", failed], { PETREL_URL: petrel.url });
    expect(res.code).toBe(7);
    expect(res.stdout).toContain("building");
    const usage = await runBin(["logs"], {});
    expect(usage.code).toBe(EXIT.usage);
    expect(usage.stderr).toContain("missing argument");
  });
});
