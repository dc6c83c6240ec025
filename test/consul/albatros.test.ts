import pino from "pino";
import { Agent } from "undici";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { ConsulClient } from "../../src/consul/client.js";
import { createConsulClient } from "../../src/consul/client.js";
import type { ConsulRegistryOptions } from "../../src/consul/registry.js";
import { createConsulRegistry } from "../../src/consul/registry.js";
import type { Registry } from "../../src/registry/schema.js";
import type { ConsulFake } from "../fakes/consul.js";
import { startConsulFake } from "../fakes/consul.js";

// Albatros entries (SPEC §12) in the Consul fake, read and watched by the registry petrel serves from.

const KEY = "git.example.test/acme/widgets";
const URL_ = "https://git.example.test/acme/widgets";
const TOKEN = "albatros-hook-token-41c9";
const INJECT = "set +x\nexport DEPLOY_TOKEN=albatros-secret-7f3e";
const b64 = (s: string) => Buffer.from(s).toString("base64");

let fake: ConsulFake;
let agent: Agent;
let consul: ConsulClient;
let lines: string[];
let registry: Registry | undefined;

beforeEach(async () => {
  fake = await startConsulFake();
  agent = new Agent();
  lines = [];
  const log = pino({ level: "trace" }, { write: (line: string) => void lines.push(line) });
  consul = createConsulClient({ addr: fake.url, dispatcher: agent, log, retry: { retries: 0 } });
  registry = undefined;
  open.log = log;
});

afterEach(async () => {
  await registry?.close();
  await fake.close();
  await agent.close();
  const all = lines.join("");
  for (const secret of [TOKEN, "albatros-secret-7f3e"]) expect(all).not.toContain(secret);
});

function open(extra: Partial<ConsulRegistryOptions> = {}): Registry {
  registry = createConsulRegistry({
    consul,
    defaultBuilder: "builder",
    log: open.log,
    albatrosPrefix: "albatros",
    watch: { wait: "5s", minIntervalMs: 0, backoff: { minMs: 20, maxMs: 50 } },
    ...extra,
  });
  return registry;
}
open.log = pino({ level: "silent" });

function albatrosEntry(token = TOKEN, extra: Record<string, unknown> = {}): string {
  return JSON.stringify({ hook: { token }, trusted: { senders: ["dana"] }, inject: INJECT, ...extra });
}

function warnings(msg: RegExp): Array<Record<string, unknown>> {
  return lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.level === 40 && msg.test(String(l.msg)));
}

describe("Albatros entries in the Consul registry", () => {
  it("reads an entry under standard base64 of html_url as a token-only entry with its inject", async () => {
    fake.set(`albatros/${b64(URL_)}`, albatrosEntry());
    const entry = await open().get(KEY);
    expect(entry).toMatchObject({
      key: KEY,
      albatros: `albatros/${b64(URL_)}`,
      inject: INJECT,
      secrets: {},
      config: { hook: { token: TOKEN }, trusted: { senders: ["dana"] } },
    });
    expect(registry?.builders().has("builder")).toBe(true);
  });

  it.each([
    ["URL-safe base64 without padding", Buffer.from(`${URL_}.git`).toString("base64url")],
    ["standard base64 of the clone URL", b64(`${URL_}.git`)],
  ])("reads an entry under %s", async (_what, encoded) => {
    fake.set(`albatros/${encoded}`, albatrosEntry());
    expect((await open().get(KEY))?.config.hook.token).toBe(TOKEN);
  });

  it("lets a petrel entry win, with one warning naming both keys, however often the prefixes change", async () => {
    fake.set(`albatros/${b64(URL_)}`, albatrosEntry());
    fake.set(`petrel/repos/${KEY}`, JSON.stringify({ hook: { secret: "petrel-hook-secret-1" } }));
    const r = open();
    const entry = await r.get(KEY);
    expect(entry?.albatros).toBeUndefined();
    expect(entry?.config.hook.secret).toBe("petrel-hook-secret-1");
    fake.set(`petrel/repos/git.example.test/acme/other`, JSON.stringify({ hook: { secret: "petrel-hook-secret-2" } }));
    fake.set(`albatros/${b64("https://git.example.test/acme/third")}`, albatrosEntry());
    await r.get("git.example.test/acme/other");
    await waitFor(async () => (await r.get("git.example.test/acme/third")) !== undefined);
    const shadowed = warnings(/two registry entries/);
    expect(shadowed).toHaveLength(1);
    expect(shadowed[0]).toMatchObject({ repo: KEY, used: `petrel/repos/${KEY}`, ignored: `albatros/${b64(URL_)}` });
  });

  it("watches the prefix: an entry added, changed and removed after start is served at once", async () => {
    const r = open();
    expect(await r.get(KEY)).toBeUndefined();
    fake.set(`albatros/${b64(URL_)}`, albatrosEntry());
    await waitFor(async () => (await r.get(KEY))?.config.hook.token === TOKEN);
    fake.set(`albatros/${b64(URL_)}`, albatrosEntry("albatros-hook-token-rotated"));
    await waitFor(async () => (await r.get(KEY))?.config.hook.token === "albatros-hook-token-rotated");
    fake.delete(`albatros/${b64(URL_)}`);
    await waitFor(async () => (await r.get(KEY)) === undefined);
    // Blocking queries, as petrel's own prefixes are watched: each asks with the index it last saw.
    const albatrosReads = fake.requests.filter((q) => q.path === "/v1/kv/albatros/");
    expect(albatrosReads.some((q) => q.query.index !== undefined && q.query.recurse !== undefined)).toBe(true);
  });

  it("refuses an invalid entry or key with a warning naming the key, never the value", async () => {
    fake.set("albatros/bm90IGEgdXJs", albatrosEntry());
    fake.set(`albatros/${b64("https://git.example.test/acme/broken")}`, JSON.stringify({ hook: {}, inject: INJECT }));
    const r = open();
    expect(await r.list()).toEqual([]);
    const invalid = warnings(/invalid registry value/);
    expect(invalid.map((w) => w.key).sort()).toEqual(
      [`albatros/${b64("https://git.example.test/acme/broken")}`, "albatros/bm90IGEgdXJs"].sort(),
    );
  });

  it("reads nothing from the Albatros prefix when it is turned off", async () => {
    fake.set(`albatros/${b64(URL_)}`, albatrosEntry());
    const r = open({ albatrosPrefix: "" });
    expect(await r.get(KEY)).toBeUndefined();
    expect(fake.requests.some((q) => q.path.startsWith("/v1/kv/albatros"))).toBe(false);
  });
});

async function waitFor(check: () => Promise<boolean>, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 10));
  }
}
