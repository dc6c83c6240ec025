import type { Logger } from "pino";
import pino from "pino";
import { Agent } from "undici";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { ConsulClient } from "../../src/consul/client.js";
import { createConsulClient } from "../../src/consul/client.js";
import type { ConsulRegistryOptions } from "../../src/consul/registry.js";
import { createConsulRegistry, deleteRepo, putRepo, repoKeyPath } from "../../src/consul/registry.js";
import { AppError, UpstreamError } from "../../src/errors.js";
import type { Registry, RegistryHealth } from "../../src/registry/schema.js";
import type { ConsulFake } from "../fakes/consul.js";
import { startConsulFake } from "../fakes/consul.js";

const HOOK_SECRET = "hook-secret-6f1c2a";
const BUILD_SECRET = "build-secret-9d8e7f";
const DEPLOY_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----deploy-key-body-42";
const WIDGETS = "git.example.test/acme/widgets";
const GADGETS = "git.example.test/acme/gadgets";

let fake: ConsulFake;
let agent: Agent;
let consul: ConsulClient;
let lines: string[];
let log: Logger;
let registry: Registry | undefined;

beforeEach(async () => {
  fake = await startConsulFake();
  agent = new Agent();
  lines = [];
  // No redaction here on purpose: the registry must keep secrets out of its log calls by itself.
  log = pino({ level: "trace" }, { write: (line: string) => void lines.push(line) });
  consul = createConsulClient({ addr: fake.url, dispatcher: agent, log, retry: { retries: 0 } });
  registry = undefined;
});

afterEach(async () => {
  await registry?.close();
  await fake.close();
  await agent.close();
  const all = lines.join("");
  for (const secret of [HOOK_SECRET, BUILD_SECRET, DEPLOY_KEY, "gitea-token-x1"]) expect(all).not.toContain(secret);
});

function open(extra: Partial<ConsulRegistryOptions> = {}): Registry {
  registry = createConsulRegistry({
    consul,
    defaultBuilder: "builder",
    log,
    watch: { wait: "5s", minIntervalMs: 0, backoff: { minMs: 20, maxMs: 50 } },
    ...extra,
  });
  return registry;
}

function setRepo(key: string, config: unknown, prefix = "petrel"): void {
  fake.set(`${prefix}/repos/${key}`, typeof config === "string" ? config : JSON.stringify(config));
}

function setSecrets(key: string, secrets: unknown): void {
  fake.set(`petrel/secrets/${key}`, typeof secrets === "string" ? secrets : JSON.stringify(secrets));
}

async function until(check: () => boolean | Promise<boolean>, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 10));
  }
}

const logged = (): Array<Record<string, unknown>> => lines.map((l) => JSON.parse(l) as Record<string, unknown>);

describe("consul registry", () => {
  it("serves a repository's config and secrets, with the deploy key apart and default flavors filled in", async () => {
    setRepo(WIDGETS, {
      hook: { secret: HOOK_SECRET },
      trusted: { senders: ["dana"] },
      gitea: { url: "https://git.example.test", token: "gitea-token-x1" },
    });
    setSecrets(WIDGETS, { NPM_TOKEN: BUILD_SECRET, deploy_key: DEPLOY_KEY });
    const r = open();
    const entry = await r.get(WIDGETS);
    expect(entry?.key).toBe(WIDGETS);
    expect(entry?.config.hook.secret).toBe(HOOK_SECRET);
    expect(entry?.config.trusted.senders).toEqual(["dana"]);
    expect(entry?.config.flavors).toEqual({ default: { builder: "builder" } });
    expect(entry?.secrets).toEqual({ NPM_TOKEN: BUILD_SECRET });
    expect(entry?.deployKey).toBe(DEPLOY_KEY);
    expect(await r.get(GADGETS)).toBeUndefined();
    expect(r.health()).toMatchObject({ ok: true, source: "consul", stalenessSeconds: 0, repositories: 1 });
  });

  it("answers lookups from memory once warm: zero Consul requests per webhook", async () => {
    setRepo(WIDGETS, { hook: { secret: HOOK_SECRET } });
    const r = open();
    await r.get(WIDGETS);
    await fake.waitForWaiting(2);
    const before = fake.requests.length;
    for (let i = 0; i < 100; i++) {
      await r.get(WIDGETS);
      await r.get(GADGETS);
    }
    await r.list();
    expect(fake.requests.length).toBe(before);
  });

  it("propagates additions, changes and removals without a restart", async () => {
    setRepo(WIDGETS, { hook: { secret: HOOK_SECRET } });
    const r = open();
    await r.get(WIDGETS);
    setRepo(GADGETS, { hook: { token: "t" } });
    await until(async () => (await r.get(GADGETS)) !== undefined);
    setRepo(WIDGETS, { hook: { secret: HOOK_SECRET }, trusted: { senders: ["erin"] } });
    await until(async () => (await r.get(WIDGETS))?.config.trusted.senders[0] === "erin");
    setSecrets(WIDGETS, { API: BUILD_SECRET });
    await until(async () => (await r.get(WIDGETS))?.secrets.API === BUILD_SECRET);
    fake.delete(`petrel/repos/${GADGETS}`);
    await until(async () => (await r.get(GADGETS)) === undefined);
    expect((await r.list()).map((e) => e.key)).toEqual([WIDGETS]);
  });

  it("accepts YAML values", async () => {
    setRepo(WIDGETS, `hook:\n  secret: ${HOOK_SECRET}\nlogs: public\n`);
    setSecrets(WIDGETS, `NPM_TOKEN: ${BUILD_SECRET}\n`);
    const entry = await open().get(WIDGETS);
    expect(entry?.config.logs).toBe("public");
    expect(entry?.secrets.NPM_TOKEN).toBe(BUILD_SECRET);
  });

  it("logs an invalid value with its key and field and leaves only that repository unregistered", async () => {
    setRepo(WIDGETS, { hook: { secret: HOOK_SECRET }, logs: "sometimes" });
    setRepo(GADGETS, { hook: { secret: HOOK_SECRET } });
    const r = open();
    expect(await r.get(WIDGETS)).toBeUndefined();
    expect(await r.get(GADGETS)).toBeDefined();
    const warning = logged().find((l) => l.msg === "invalid registry value; that repository is not registered");
    expect(warning).toMatchObject({ key: `petrel/repos/${WIDGETS}` });
    expect(String(warning?.problem)).toMatch(/^logs: /);
  });

  it("reports a broken value by line without quoting it", async () => {
    setRepo(WIDGETS, `hook:\n  secret: ${HOOK_SECRET}\n  - broken: [\n`);
    const r = open();
    expect(await r.get(WIDGETS)).toBeUndefined();
    const warning = logged().find((l) => l.key === `petrel/repos/${WIDGETS}`);
    expect(String(warning?.problem)).toMatch(/neither JSON nor YAML: line \d+/);
  });

  it("does not register a repository whose secrets are invalid, naming the secret but not its value", async () => {
    setRepo(WIDGETS, { hook: { secret: HOOK_SECRET } });
    setSecrets(WIDGETS, { NPM_TOKEN: BUILD_SECRET, PORT: 8080 });
    const r = open();
    expect(await r.get(WIDGETS)).toBeUndefined();
    const warning = logged().find((l) => l.key === `petrel/secrets/${WIDGETS}`);
    expect(String(warning?.problem)).toMatch(/^PORT: /);
  });

  it("logs an invalid value once, not on every later change of other keys", async () => {
    setRepo(WIDGETS, { hook: {} });
    const r = open();
    await r.get(WIDGETS);
    setRepo(GADGETS, { hook: { secret: HOOK_SECRET } });
    await until(async () => (await r.get(GADGETS)) !== undefined);
    const warnings = logged().filter((l) => l.key === `petrel/repos/${WIDGETS}`);
    expect(warnings).toHaveLength(1);
    expect(String(warnings[0]?.problem)).toMatch(/^hook: needs a secret, a token, or both/);
  });

  it("ignores keys that are not <host>/<owner>/<name>", async () => {
    fake.set("petrel/repos/Git.Example.test/Acme", JSON.stringify({ hook: { secret: HOOK_SECRET } }));
    fake.set("petrel/repos/folder/", null);
    setRepo(WIDGETS, { hook: { secret: HOOK_SECRET } });
    const r = open();
    expect((await r.list()).map((e) => e.key)).toEqual([WIDGETS]);
    expect(logged().some((l) => l.key === "petrel/repos/Git.Example.test/Acme")).toBe(true);
  });

  it("keeps serving the last known entries while Consul is down and reports staleness, logged once", async () => {
    let clock = 1_000_000;
    const stale: RegistryHealth[] = [];
    setRepo(WIDGETS, { hook: { secret: HOOK_SECRET } });
    // Counts the watches' failed attempts, so the test waits for several of them instead of a guessed while.
    let failed = 0;
    const counting: typeof consul = {
      ...consul,
      watch: (key, o) => consul.watch(key, { ...o, onError: (err, d) => (failed++, o.onError?.(err, d)) }),
    };
    const r = open({ consul: counting, now: () => clock, onStale: (h) => void stale.push(h) });
    await r.get(WIDGETS);
    await fake.waitForWaiting(2);
    await fake.setDown(true);
    await until(() => r.health().ok === false);
    clock += 42_000;
    const sofar = failed;
    await until(() => failed >= sofar + 4);
    expect((await r.get(WIDGETS))?.config.hook.secret).toBe(HOOK_SECRET);
    const h = r.health();
    expect(h).toMatchObject({ ok: false, stalenessSeconds: 42, repositories: 1 });
    expect(h.lastError).toMatch(/consul/);
    const outageLines = logged().filter((l) => l.msg === "consul unreachable; serving the last known registry");
    expect(outageLines).toHaveLength(1);
    expect(stale).toHaveLength(1);
    expect(stale[0]?.ok).toBe(false);

    await fake.setDown(false);
    await until(() => r.health().ok);
    expect(r.health().stalenessSeconds).toBe(0);
    expect(stale.at(-1)?.ok).toBe(true);
    expect(logged().some((l) => l.msg === "consul reachable again; registry current")).toBe(true);
  });

  it("answers 503 consul_unavailable when Consul never answered within the first-load timeout", async () => {
    await fake.setDown(true);
    const r = open({ firstLoadTimeoutMs: 300 });
    const started = Date.now();
    const err = await r.get(WIDGETS).catch((e: unknown) => e);
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
    expect(err).toBeInstanceOf(UpstreamError);
    expect(err).toMatchObject({ code: "consul_unavailable", status: 503 });
    // Past the deadline, lookups fail at once instead of holding the webhook again.
    const again = Date.now();
    await expect(r.get(WIDGETS)).rejects.toBeInstanceOf(UpstreamError);
    expect(Date.now() - again).toBeLessThan(100);
    expect(r.health()).toMatchObject({ ok: false, repositories: 0 });
  });

  it("waits for the first load instead of answering not registered", async () => {
    await fake.setDown(true);
    setRepo(WIDGETS, { hook: { secret: HOOK_SECRET } });
    const r = open({ firstLoadTimeoutMs: 5_000 });
    const pending = r.get(WIDGETS);
    await new Promise((resolve) => setTimeout(resolve, 100));
    await fake.setDown(false);
    expect((await pending)?.key).toBe(WIDGETS);
  });

  it("reads under a custom prefix", async () => {
    setRepo(WIDGETS, { hook: { secret: HOOK_SECRET } }, "ci/petrel");
    expect((await open({ prefix: "ci/petrel" }).get(WIDGETS))?.key).toBe(WIDGETS);
  });

  it("stops watching on close", async () => {
    const r = open();
    await r.list();
    await fake.waitForWaiting(2);
    await r.close();
    const count = fake.requests.length;
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(fake.requests.length).toBe(count);
    expect(fake.waiting()).toBe(0);
  });
});

describe("repoKeyPath, putRepo, deleteRepo", () => {
  it("builds the documented key paths", () => {
    expect(repoKeyPath("petrel", "repos", WIDGETS)).toBe(`petrel/repos/${WIDGETS}`);
    expect(repoKeyPath("ci/petrel/", "secrets", WIDGETS)).toBe(`ci/petrel/secrets/${WIDGETS}`);
    expect(() => repoKeyPath("petrel", "repos", "acme/widgets")).toThrow(AppError);
  });

  it("writes the secrets before the config, as JSON a registry reads back", async () => {
    await putRepo(consul, "petrel", WIDGETS, { hook: { secret: HOOK_SECRET } }, { NPM_TOKEN: BUILD_SECRET });
    const puts = fake.requests.filter((r) => r.method === "PUT").map((r) => r.path);
    expect(puts).toEqual([`/v1/kv/petrel/secrets/${WIDGETS}`, `/v1/kv/petrel/repos/${WIDGETS}`]);
    const entry = await open().get(WIDGETS);
    expect(entry?.secrets).toEqual({ NPM_TOKEN: BUILD_SECRET });
  });

  it("refuses an invalid config before writing anything, naming the field", async () => {
    const err = await putRepo(consul, "petrel", WIDGETS, { hook: { secret: HOOK_SECRET }, logs: "x" as "public" }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: "entry_invalid" });
    expect((err as Error).message).toContain(`petrel/repos/${WIDGETS}: logs:`);
    expect(fake.requests.filter((r) => r.method === "PUT")).toHaveLength(0);
  });

  it("removes config and secrets, and says when there was nothing to remove", async () => {
    await putRepo(consul, "petrel", WIDGETS, { hook: { secret: HOOK_SECRET } }, { A: "b" });
    expect(await deleteRepo(consul, "petrel", WIDGETS)).toBe(true);
    expect(fake.entry(`petrel/repos/${WIDGETS}`)).toBeUndefined();
    expect(fake.entry(`petrel/secrets/${WIDGETS}`)).toBeUndefined();
    expect(await deleteRepo(consul, "petrel", WIDGETS)).toBe(false);
  });
});
