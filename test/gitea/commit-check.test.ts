import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { checkCommitOnRef, resolveRefHead } from "../../src/gitea/commit-check.js";

describe("checkCommitOnRef", () => {
  it("gives up after its timeout on a forge that never answers, and says so", async () => {
    const server = createServer(() => undefined);
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    const { port } = server.address() as AddressInfo;
    try {
      const started = Date.now();
      const check = await checkCommitOnRef({
        url: `http://127.0.0.1:${port}/acme/widgets.git`,
        ref: "refs/heads/main",
        commit: "4c1d7e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d",
        timeoutMs: 500,
      });
      expect(check).toMatchObject({ kind: "unreachable", message: expect.stringMatching(/longer than 0.5 s/) });
      expect(Date.now() - started).toBeLessThan(5000);
    } finally {
      server.closeAllConnections();
      server.close();
    }
  });

  it("refuses a URL that is not a clone URL without running git", async () => {
    const check = await checkCommitOnRef({
      url: "ext::sh -c touch% /tmp/petrel-pwned",
      ref: "refs/heads/main",
      commit: "abcdef0",
      timeoutMs: 1000,
    });
    expect(check.kind).toBe("unfetchable");
  });

  it("keeps credentials in the URL out of its messages", async () => {
    const check = await checkCommitOnRef({
      url: "https://user:tok3n-secret@127.0.0.1:1/acme/widgets.git",
      ref: "refs/heads/main",
      commit: "abcdef0",
      timeoutMs: 5000,
    });
    // Nothing listens on port 1: the forge is down, not the ref missing.
    expect(check.kind).toBe("unreachable");
    if (check.kind === "unreachable") expect(check.message).not.toContain("tok3n-secret");
  });

  it("tells a ref the repository does not have from a repository it cannot reach", async () => {
    const dir = mkdtempSync(join(tmpdir(), "petrel-commit-check-"));
    try {
      execFileSync("git", ["init", "-q", "--bare", "-b", "main", join(dir, "r.git")]);
      const check = await checkCommitOnRef({
        url: `file://${join(dir, "r.git")}`,
        ref: "refs/heads/nope",
        commit: "abcdef0",
        timeoutMs: 5000,
      });
      expect(check).toMatchObject({ kind: "unfetchable", message: expect.stringMatching(/cannot fetch refs\/heads\/nope/) });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("resolves a ref's head, and tells a missing ref from a forge that does not answer", async () => {
    const dir = mkdtempSync(join(tmpdir(), "petrel-resolve-"));
    try {
      const bare = join(dir, "r.git");
      const src = join(dir, "src");
      const env = { ...process.env, GIT_AUTHOR_NAME: "t", GIT_AUTHOR_EMAIL: "t@t", GIT_COMMITTER_NAME: "t", GIT_COMMITTER_EMAIL: "t@t" };
      execFileSync("git", ["init", "-q", "--bare", "-b", "main", bare]);
      execFileSync("git", ["init", "-q", "-b", "main", src]);
      execFileSync("git", ["commit", "-q", "--allow-empty", "-m", "x"], { cwd: src, env });
      execFileSync("git", ["push", "-q", bare, "main"], { cwd: src });
      const head = execFileSync("git", ["rev-parse", "HEAD"], { cwd: src, encoding: "utf8" }).trim();
      const url = `file://${bare}`;
      expect(await resolveRefHead({ url, ref: "refs/heads/main", timeoutMs: 5000 })).toEqual({ kind: "head", commit: head });
      expect(await resolveRefHead({ url, ref: "refs/heads/nope", timeoutMs: 5000 })).toMatchObject({ kind: "missing" });
      expect(await resolveRefHead({ url: "http://127.0.0.1:1/acme/x.git", ref: "refs/heads/main", timeoutMs: 5000 })).toMatchObject({
        kind: "unreachable",
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
