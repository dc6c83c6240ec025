import { execFileSync } from "node:child_process";
import { chmodSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { LocalBackend } from "../../src/local/backend.js";
import { ADMIN_TOKEN, serveLocal } from "../cli/harness.js";

// POST /builds without extra fields (issue 8, item 4): where the clone URL comes from, which entry `owner/name`
// names, a strict body, and the privacy a manual build carries.

const GIT_ENV = {
  GIT_AUTHOR_NAME: "t",
  GIT_AUTHOR_EMAIL: "t@example.test",
  GIT_COMMITTER_NAME: "t",
  GIT_COMMITTER_EMAIL: "t@example.test",
};
// Port 9 (discard) on loopback: nothing listens, so git fails at once and names the URL it tried.
const GADGETS_KEY = "127.0.0.1_9/acme/gadgets";
const GADGETS_FORGE_URL = "https://127.0.0.1:9/acme/gadgets.git";

let url: string;
let backend: LocalBackend;
let close: () => Promise<void>;
let main: string;

beforeAll(async () => {
  const dir = mkdtempSync(join(tmpdir(), "petrel-manual-"));
  const bare = join(dir, "widgets.git");
  const src = join(dir, "src");
  execFileSync("git", ["init", "-q", "--bare", "-b", "main", bare]);
  execFileSync("git", ["init", "-q", "-b", "main", src]);
  execFileSync("git", ["commit", "-q", "--allow-empty", "-m", "main"], { cwd: src, env: { ...process.env, ...GIT_ENV } });
  main = execFileSync("git", ["rev-parse", "HEAD"], { cwd: src, encoding: "utf8" }).trim();
  execFileSync("git", ["push", "-q", bare, `${main}:refs/heads/main`], { cwd: src });
  const script = join(dir, "executor.sh");
  writeFileSync(script, "#!/bin/sh\nexit 0\n");
  chmodSync(script, 0o755);
  const hook = { secret: "manual-hook-secret-0123456789" };
  const config = {
    repos: {
      "git.example.test/acme/widgets": { hook, clone_url: `file://${bare}`, private: true },
      "git.example.test/acme/open": { hook, clone_url: `file://${bare}` },
      "git.example.test/acme/twin": { hook, clone_url: `file://${bare}` },
      "git.other.test/acme/twin": { hook, clone_url: `file://${bare}` },
      [GADGETS_KEY]: { hook },
    },
  };
  const configPath = join(dir, "petrel.yaml");
  writeFileSync(configPath, JSON.stringify(config));
  const served = await serveLocal({ dir, configPath, executor: [script], concurrency: 2 });
  ({ url, backend, close } = served);
});

afterAll(async () => {
  await close?.();
});

async function trigger(body: unknown): Promise<{ status: number; body: { build?: string; error?: { code: string; message: string } } }> {
  const res = await fetch(`${url}/builds`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${ADMIN_TOKEN}` },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: (await res.json()) as { build?: string; error?: { code: string; message: string } } };
}

describe("POST /builds", () => {
  it("builds owner/name at a branch with nothing else given, from the entry's clone_url", async () => {
    const res = await trigger({ repo: "acme/widgets", ref: "main" });
    expect(res.status).toBe(201);
    const build = await backend.getBuild(res.body.build as string);
    expect(build).toMatchObject({ repo: "acme/widgets", commit: main, ref: "main", event: "manual", trusted: true });
  });

  it("refuses unknown fields, naming them, and the retired repo_url among them, without building", async () => {
    const before = (await backend.listBuilds({ limit: 500 })).builds.length;
    for (const [field, value] of [
      ["repo_url", "file:///tmp/evil.git"],
      ["comit", main],
    ] as const) {
      const res = await trigger({ repo: "acme/widgets", ref: "main", [field]: value });
      expect(res.status).toBe(400);
      expect(res.body.error?.code).toBe("bad_request");
      expect(res.body.error?.message).toContain(`"${field}"`);
    }
    expect((await backend.listBuilds({ limit: 500 })).builds.length).toBe(before);
  });

  it("answers 400 naming the candidates when owner/name matches two entries, and builds with the full key", async () => {
    const res = await trigger({ repo: "acme/twin", ref: "main" });
    expect(res.status).toBe(400);
    expect(res.body.error?.message).toContain("git.example.test/acme/twin, git.other.test/acme/twin");
    expect((await trigger({ repo: "git.other.test/acme/twin", ref: "main" })).status).toBe(201);
  });

  it("carries PRIVATE from the entry's private field, and leaves privacy unknown (token needed) without it", async () => {
    const closed = await trigger({ repo: "acme/widgets", ref: "main" });
    const open = await trigger({ repo: "acme/open", ref: "main" });
    expect((await backend.getBuild(closed.body.build as string))?.private).toBe(true);
    expect((await backend.getBuild(open.body.build as string))?.private).toBeUndefined();
    for (const id of [closed.body.build, open.body.build]) {
      expect((await fetch(`${url}/builds/${encodeURIComponent(id as string)}`)).status).toBe(401);
    }
  });

  it("takes the clone URL from the forge, then from the repository's latest build of its own forge", async () => {
    const first = await trigger({ repo: "acme/gadgets", ref: "main" });
    // Nothing answers there: the forge is unavailable (503), not the request wrong.
    expect(first.status).toBe(503);
    expect(first.body.error?.code).toBe("gitea_unavailable");
    expect(first.body.error?.message).toContain(`reach ${GADGETS_FORGE_URL}`);
    const viaBuild = "http://127.0.0.1:9/mirror/acme/gadgets.git";
    const meta = (repoUrl: string) => ({ REPO_URL: repoUrl, COMMIT: main, BRANCH: "main", FLAVOR: "default", REPO: "acme/gadgets" });
    await backend.dispatch({ builder: "builder", meta: meta(viaBuild), idempotencyToken: "gadgets-1" });
    const second = await trigger({ repo: "acme/gadgets", ref: "main" });
    expect(second.body.error?.message).toContain(`reach ${viaBuild}`);
    // A newer build that clones from elsewhere (its meta is anyone's to set) is passed over.
    const submitted = Date.now();
    while (Date.now() === submitted) await new Promise((r) => setImmediate(r));
    await backend.dispatch({ builder: "builder", meta: meta("http://localhost:9/evil/gadgets.git"), idempotencyToken: "gadgets-2" });
    const third = await trigger({ repo: "acme/gadgets", ref: "main" });
    expect(third.body.error?.message).toContain(`reach ${viaBuild}`);
  });
});
