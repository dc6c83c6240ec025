import { execFileSync } from "node:child_process";
import { chmodSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readConfig } from "../../src/config.js";
import { sign } from "../../src/gitea/signature.js";
import { startPetrel } from "../../src/main.js";
import { ADMIN_TOKEN, serveLocal, until } from "../cli/harness.js";
import { startConsulFake } from "../fakes/consul.js";
import { startNomadFake } from "../fakes/nomad.js";
import { fixtureBytes } from "../gitea/fixtures.js";
import { captureLogs } from "../helpers/log-capture.js";
import { builderJob } from "../nomad/target.js";

// POST /builds/<id>/rerun in both modes (issue 8, item 4), and the attack on it: a re-run must never hand the
// secrets to code the original build did not trust (a fork's pull request, a commit its ref no longer reaches).

const HOST = "git.example.test";
const KEY = `${HOST}/acme/widgets`;
const HOOK_SECRET = "rerun-hook-secret-0123456789";
const DEPLOY_TOKEN = "rerun-deploy-token-5e7a9c1b";
const PUSH_COMMIT = "4c1d7e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d";
const FORK_COMMIT = "b1a2c3d4e5f60718293a4b5c6d7e8f9012345678";
const GIT_ENV = {
  GIT_AUTHOR_NAME: "t",
  GIT_AUTHOR_EMAIL: "t@example.test",
  GIT_COMMITTER_NAME: "t",
  GIT_COMMITTER_EMAIL: "t@example.test",
};

interface Repo {
  url: string;
  main: string;
  /** Only on refs/pull/17/head, as a fork's pull request leaves it in the base repository. */
  fork: string;
}

function makeRepo(dir: string): Repo {
  const bare = join(dir, "widgets.git");
  const src = join(dir, "src");
  const git = (...args: string[]) => execFileSync("git", args, { cwd: src, env: { ...process.env, ...GIT_ENV }, encoding: "utf8" }).trim();
  execFileSync("git", ["init", "-q", "--bare", "-b", "main", bare]);
  execFileSync("git", ["init", "-q", "-b", "main", src]);
  git("commit", "-q", "--allow-empty", "-m", "main");
  const main = git("rev-parse", "HEAD");
  git("commit", "-q", "--allow-empty", "-m", "fork code");
  const fork = git("rev-parse", "HEAD");
  git("push", "-q", bare, `${main}:refs/heads/main`, `${main}:refs/tags/v1`, `${fork}:refs/pull/17/head`);
  return { url: `file://${bare}`, main, fork };
}

/** What a build was started with, read from where each backend keeps it. */
interface Dispatched {
  meta: Record<string, string>;
  /** The secrets payload the executor receives; null when there is none. */
  payload: unknown;
}

interface Mode {
  url: string;
  repo: Repo;
  dispatched(id: string): Promise<Dispatched>;
  /** Records a build the way anyone allowed to dispatch the builder could, bypassing petrel. */
  plant(meta: Record<string, string>): Promise<string>;
  /** Backend requests made so far that name `text` (Nomad mode only). */
  backendCalls(text: string): number;
  close(): Promise<void>;
}

const entryConfig = (repo: Repo) => ({
  hook: { secret: HOOK_SECRET },
  trusted: { senders: ["dana"] },
  logs: "token",
  clone_url: repo.url,
});

/** Single-machine mode: the local backend runs a stand-in executor that prints what it was given. */
async function localMode(): Promise<Mode> {
  const dir = mkdtempSync(join(tmpdir(), "petrel-rerun-local-"));
  const repo = makeRepo(dir);
  const script = join(dir, "executor.sh");
  writeFileSync(
    script,
    `#!/bin/sh
echo "TRUSTED=$NOMAD_META_TRUSTED"
# The local backend hands the payload over a pipe (PETREL_PAYLOAD_FD), never as a file.
if [ -n "\${PETREL_PAYLOAD_FD:-}" ]; then echo "PAYLOAD=$(eval "cat <&$PETREL_PAYLOAD_FD")"; else echo "PAYLOAD=none"; fi
`,
  );
  chmodSync(script, 0o755);
  const configPath = join(dir, "petrel.yaml");
  writeFileSync(configPath, JSON.stringify({ repos: { [KEY]: { ...entryConfig(repo), secrets: { DEPLOY_TOKEN } } } }));
  const server = await serveLocal({ dir, configPath, executor: [script], concurrency: 2 });
  const { backend } = server;
  // Every build the routes ask the backend for, so "refused before the backend is asked" can fail here too.
  const asked: string[] = [];
  const getBuild = backend.getBuild.bind(backend);
  backend.getBuild = (id, signal) => {
    asked.push(id);
    return getBuild(id, signal);
  };
  let planted = 0;
  return {
    url: server.url,
    repo,
    async dispatched(id) {
      const build = await until(async () => {
        const b = await backend.getBuild(id);
        return b !== undefined && b.state !== "queued" && b.state !== "running" ? b : undefined;
      });
      expect(build.state).toBe("success");
      const res = await fetch(`${server.url}/builds/${encodeURIComponent(id)}/logs?type=stdout&follow=false`, {
        headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
      });
      const text = await res.text();
      const line = /^PAYLOAD=(.*)$/m.exec(text)?.[1];
      const meta: Record<string, string> = { TRUSTED: /^TRUSTED=(.*)$/m.exec(text)?.[1] ?? "" };
      for (const [k, v] of Object.entries({
        REPO_URL: build.repoUrl,
        COMMIT: build.commit,
        BRANCH: build.ref,
        FLAVOR: build.flavor,
        EVENT: build.event,
      }))
        meta[k] = v;
      if (build.pr !== undefined) meta.PR = build.pr;
      return { meta, payload: line === undefined || line === "none" ? null : JSON.parse(line) };
    },
    async plant(meta) {
      return (await backend.dispatch({ builder: "builder", meta, idempotencyToken: `planted-${planted++}` })).id;
    },
    backendCalls: (text) => asked.filter((id) => id.includes(text)).length,
    async close() {
      await server.close();
    },
  };
}

/** Cluster mode: petrel as `petrel serve` starts it, against the Consul and Nomad fakes. */
async function nomadMode(): Promise<Mode> {
  const dir = mkdtempSync(join(tmpdir(), "petrel-rerun-nomad-"));
  const repo = makeRepo(dir);
  const consul = await startConsulFake();
  const nomad = await startNomadFake();
  nomad.registerJob(builderJob("builder"));
  consul.set(`petrel/repos/${KEY}`, JSON.stringify(entryConfig(repo)));
  consul.set(`petrel/secrets/${KEY}`, JSON.stringify({ DEPLOY_TOKEN }));
  const env = {
    NOMAD_ADDR: nomad.url,
    CONSUL_HTTP_ADDR: consul.url,
    PETREL_LISTEN: "127.0.0.1:0",
    PETREL_ADMIN_TOKEN: ADMIN_TOKEN,
    PETREL_URL: "https://ci.example.test",
  };
  const petrel = await startPetrel(readConfig(env), captureLogs("silent").log, env);
  return {
    url: petrel.url,
    repo,
    async dispatched(id) {
      const job = nomad.job(id);
      if (job === undefined) throw new Error(`no job ${id}`);
      return {
        meta: { ...(job.Meta as Record<string, string>) },
        payload: job.Payload === null ? null : JSON.parse(Buffer.from(job.Payload, "base64").toString("utf8")),
      };
    },
    async plant(meta) {
      const res = await fetch(`${nomad.url}/v1/job/builder/dispatch`, { method: "POST", body: JSON.stringify({ Meta: meta }) });
      return ((await res.json()) as { DispatchedJobID: string }).DispatchedJobID;
    },
    backendCalls: (text) => nomad.requests.filter((r) => decodeURIComponent(r.path).includes(text) || r.body.includes(text)).length,
    async close() {
      await petrel.stop();
      await Promise.all([consul.close(), nomad.close()]);
    },
  };
}

describe.each([
  ["single-machine mode (local backend)", localMode],
  ["cluster mode (Nomad fake)", nomadMode],
])("POST /builds/<id>/rerun in %s", (_name, start) => {
  let mode: Mode;
  beforeAll(async () => {
    mode = await start();
  }, 30_000);
  afterAll(async () => {
    await mode?.close();
  });

  const admin = { authorization: `Bearer ${ADMIN_TOKEN}` };

  async function deliver(body: Buffer, event: string): Promise<string> {
    const res = await fetch(`${mode.url}/hook`, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        "x-gitea-event": event,
        "x-gitea-event-type": event,
        "x-gitea-delivery": crypto.randomUUID(),
        "x-gitea-signature": sign(HOOK_SECRET, body),
      },
      body: new Uint8Array(body),
    });
    expect(res.status).toBe(201);
    return ((await res.json()) as { build: string }).build;
  }

  async function rerun(id: string, headers: Record<string, string> = admin): Promise<Response> {
    return fetch(`${mode.url}/builds/${encodeURIComponent(id)}/rerun`, { method: "POST", headers });
  }

  interface RerunAnswer {
    build: string;
    status: string;
    logs: string;
    rerun_of: string;
    trusted: boolean;
    untrusted_because?: string;
  }

  it("re-runs a trusted push with the same inputs as a new, trusted build with the secrets", async () => {
    const push = Buffer.from(fixtureBytes("push.json").toString("utf8").replaceAll(PUSH_COMMIT, mode.repo.main));
    const original = await deliver(push, "push");
    const res = await rerun(original);
    expect(res.status).toBe(201);
    const answer = (await res.json()) as RerunAnswer;
    expect(answer.build).not.toBe(original);
    expect(answer).toMatchObject({
      rerun_of: original,
      trusted: true,
      status: `https://ci.example.test/builds/${encodeURIComponent(answer.build)}`,
    });
    expect(answer.logs).toBe(`${answer.status}/logs`);
    const before = await mode.dispatched(original);
    const after = await mode.dispatched(answer.build);
    for (const key of ["REPO_URL", "COMMIT", "BRANCH", "FLAVOR", "EVENT"]) expect(after.meta[key]).toBe(before.meta[key]);
    expect(after.meta).toMatchObject({ REPO_URL: mode.repo.url, COMMIT: mode.repo.main, BRANCH: "main", EVENT: "push", TRUSTED: "true" });
    expect(after.payload).toEqual({ secrets: { DEPLOY_TOKEN } });
    // Each re-run is a build of its own.
    const again = (await (await rerun(original)).json()) as RerunAnswer;
    expect(again.build).not.toBe(answer.build);
  });

  it("ATTACK: a re-run of a fork's pull request build stays untrusted and gets no secrets", async () => {
    const fork = Buffer.from(fixtureBytes("pull_request.opened.fork.json").toString("utf8").replaceAll(FORK_COMMIT, mode.repo.fork));
    const original = await deliver(fork, "pull_request");
    expect((await mode.dispatched(original)).payload).toBeNull();
    const res = await rerun(original);
    expect(res.status).toBe(201);
    const answer = (await res.json()) as RerunAnswer;
    expect(answer).toMatchObject({ trusted: false, untrusted_because: "the original build was not trusted" });
    const after = await mode.dispatched(answer.build);
    expect(after.payload).toBeNull();
    expect(after.meta).toMatchObject({
      COMMIT: mode.repo.fork,
      EVENT: "pull_request",
      PR: "17",
      BRANCH: "fix/readme-typo",
      TRUSTED: "false",
    });
    expect(JSON.stringify(after)).not.toContain(DEPLOY_TOKEN);
  });

  it("ATTACK: a build record claiming trust for a commit its ref does not reach re-runs without secrets", async () => {
    // Anyone allowed to dispatch the builder can write TRUSTED=true next to the fork's commit on main.
    const planted = await mode.plant({
      REPO_URL: mode.repo.url,
      COMMIT: mode.repo.fork,
      BRANCH: "main",
      FLAVOR: "default",
      REPO: "acme/widgets",
      EVENT: "push",
      TRUSTED: "true",
    });
    const res = await rerun(planted);
    expect(res.status).toBe(201);
    const answer = (await res.json()) as RerunAnswer;
    expect(answer.trusted).toBe(false);
    expect(answer.untrusted_because).toMatch(/refs\/heads\/main/);
    const after = await mode.dispatched(answer.build);
    expect(after.payload).toBeNull();
    expect(after.meta).toMatchObject({ COMMIT: mode.repo.fork, TRUSTED: "false" });
  });

  it("re-runs a tag build at its tag, trusted while the tag still points at the commit", async () => {
    const original = await mode.plant({
      REPO_URL: mode.repo.url,
      COMMIT: mode.repo.main,
      BRANCH: "v1",
      TAG: "v1",
      FLAVOR: "default",
      REPO: "acme/widgets",
      EVENT: "tag",
      TRUSTED: "true",
    });
    const answer = (await (await rerun(original)).json()) as RerunAnswer;
    expect(answer.trusted).toBe(true);
    const after = await mode.dispatched(answer.build);
    expect(after.meta).toMatchObject({ COMMIT: mode.repo.main, BRANCH: "v1", EVENT: "tag", TRUSTED: "true" });
    expect(after.payload).toEqual({ secrets: { DEPLOY_TOKEN } });
  });

  it("answers 404 for an ID that is not petrel's without asking the backend, and for an unknown build", async () => {
    const foreign = await rerun("other-job/dispatch-1731000000-4276dbf4");
    expect(foreign.status).toBe(404);
    expect(((await foreign.json()) as { error: { code: string } }).error.code).toBe("not_found");
    expect(mode.backendCalls("other-job")).toBe(0);
    const unknown = await rerun("builder/dispatch-1731000000-00000000");
    expect(unknown.status).toBe(404);
  });

  it("needs the admin token", async () => {
    const res = await rerun("builder/dispatch-1731000000-00000000", {});
    expect(res.status).toBe(401);
  });
});
