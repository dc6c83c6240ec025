import { createServer, type IncomingMessage, request, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { migrateCommand } from "../../src/cli/migrate.js";
import { EXIT } from "../../src/cli/ops.js";
import type { ConsulFake } from "../fakes/consul.js";
import { startConsulFake } from "../fakes/consul.js";
import { captureIo } from "./harness.js";

const b64 = (s: string) => Buffer.from(s).toString("base64");
const WIDGETS = `albatros/${b64("https://git.example.test/acme/widgets")}`;
const GADGETS = `albatros/${Buffer.from("https://git.example.test/acme/gadgets.git").toString("base64url")}`;
const TOOLS = `albatros/${b64("https://git.example.test/acme/tools")}`;
const SECRETS = [
  "widgets-token-a1",
  "gitea-token-b2",
  "plain-secret-1",
  "quoted secret 2",
  "gadgets-token-c3",
  "inject-secret-3",
  "tools-token-d4",
];

function seed(fake: ConsulFake, giteaUrl = "https://git.example.test"): void {
  fake.set(
    WIDGETS,
    JSON.stringify({
      hook: { token: "widgets-token-a1" },
      gitea: { url: giteaUrl, token: "gitea-token-b2" },
      trusted: { senders: ["quentin", "lx"] },
      inject: "set +x\nexport DEPLOY_TOKEN=plain-secret-1\nexport NPM_TOKEN='quoted secret 2'\n",
    }),
  );
  fake.set(
    GADGETS,
    JSON.stringify({ hook: { token: "gadgets-token-c3" }, inject: "export A=1\ncurl -H 'x: inject-secret-3' https://x.test | sh" }),
  );
  fake.set(TOOLS, JSON.stringify({ hook: { token: "tools-token-d4" }, trusted: { senders: ["dana"] } }));
}

function value(fake: ConsulFake, key: string): unknown {
  const entry = fake.entry(key);
  return entry?.value == null ? undefined : JSON.parse(entry.value.toString("utf8"));
}

describe("petrel migrate albatros", () => {
  let fake: ConsulFake;
  let env: Record<string, string>;
  beforeEach(async () => {
    fake = await startConsulFake();
    env = { CONSUL_HTTP_ADDR: fake.url };
  });
  afterEach(async () => {
    await fake.close();
  });

  const run = async (...argv: string[]) => {
    const c = captureIo();
    const code = await migrateCommand(["albatros", ...argv], env, c.io);
    const all = c.stdout() + c.stderr();
    for (const secret of SECRETS) expect(all).not.toContain(secret);
    return { code, stdout: c.stdout(), stderr: c.stderr() };
  };

  it("lists every entry and the petrel keys it becomes, secret names only, and writes nothing (dry run)", async () => {
    seed(fake);
    const r = await run();
    expect(r.code).toBe(EXIT.ok);
    expect(r.stdout).toContain(`${WIDGETS}  (git.example.test/acme/widgets)`);
    expect(r.stdout).toContain("  petrel/repos/git.example.test/acme/widgets  hook.token, trusted.senders, gitea");
    expect(r.stdout).toContain("  petrel/repos/git.example.test/acme/gadgets  hook.token\n");
    expect(r.stdout).toContain("  petrel/secrets/git.example.test/acme/widgets  secrets DEPLOY_TOKEN, NPM_TOKEN");
    expect(r.stdout).toContain("  petrel/secrets/git.example.test/acme/gadgets  inject (kept as shell: not plain export lines)");
    expect(r.stdout).not.toContain("petrel/secrets/git.example.test/acme/tools");
    expect(r.stdout).toContain("3 Albatros entries: 3 would write");
    expect(r.stdout).toContain("dry run: nothing written");
    expect(fake.requests.filter((q) => q.method !== "GET")).toEqual([]);
    expect(fake.entry("petrel/repos/git.example.test/acme/widgets")).toBeUndefined();
  });

  it("writes the petrel keys with --apply, and a second --apply overwrites nothing", async () => {
    seed(fake);
    const r = await run("--apply", "--json", "-q");
    expect(r.code).toBe(EXIT.ok);
    const out = JSON.parse(r.stdout) as { applied: boolean; entries: Array<Record<string, unknown>> };
    expect(out.applied).toBe(true);
    const summary = out.entries.map((e) => [e.repo, e.status, e.secret_names, e.inject]);
    expect(summary.sort((x, y) => String(x[0]).localeCompare(String(y[0])))).toEqual([
      ["git.example.test/acme/gadgets", "written", [], true],
      ["git.example.test/acme/tools", "written", [], false],
      ["git.example.test/acme/widgets", "written", ["DEPLOY_TOKEN", "NPM_TOKEN"], false],
    ]);
    expect(value(fake, "petrel/repos/git.example.test/acme/widgets")).toEqual({
      hook: { token: "widgets-token-a1" },
      trusted: { senders: ["quentin", "lx"] },
      gitea: { url: "https://git.example.test", token: "gitea-token-b2" },
    });
    expect(value(fake, "petrel/secrets/git.example.test/acme/widgets")).toEqual({
      DEPLOY_TOKEN: "plain-secret-1",
      NPM_TOKEN: "quoted secret 2",
    });
    expect(value(fake, "petrel/secrets/git.example.test/acme/gadgets")).toEqual({
      inject: "export A=1\ncurl -H 'x: inject-secret-3' https://x.test | sh",
    });
    expect(fake.entry("petrel/secrets/git.example.test/acme/tools")).toBeUndefined();
    // Every write was a create-only check-and-set.
    const puts = fake.requests.filter((q) => q.method === "PUT");
    expect(puts).toHaveLength(5);
    expect(puts.every((q) => q.query.cas === "0")).toBe(true);
    // The Albatros entries stay (rolling back is deleting the petrel keys).
    expect(fake.entry(WIDGETS)).toBeDefined();

    const before = fake.entry("petrel/repos/git.example.test/acme/widgets")?.modifyIndex;
    const again = await run("--apply");
    expect(again.code).toBe(EXIT.refused);
    expect(again.stdout).toContain(
      "skipped: petrel/repos/git.example.test/acme/widgets and petrel/secrets/git.example.test/acme/widgets already exist; left alone",
    );
    expect(again.stdout).toContain("3 Albatros entries: 3 skipped");
    expect(fake.entry("petrel/repos/git.example.test/acme/widgets")?.modifyIndex).toBe(before);
  });

  it("reports invalid entries and a second key of one repository, and migrates the rest", async () => {
    seed(fake);
    fake.set(`albatros/${b64("https://git.example.test/acme/widgets.git")}`, JSON.stringify({ hook: { token: "widgets-token-a1" } }));
    fake.set("albatros/bm90IGEgdXJs", JSON.stringify({ hook: { token: "x" } }));
    fake.set(`albatros/${b64("https://git.example.test/acme/broken")}`, JSON.stringify({ hook: {} }));
    const r = await run("--apply", "--flavor", "nix=builder-nix");
    expect(r.code).toBe(EXIT.refused);
    expect(r.stdout).toContain("invalid: the key is not base64 of a repository URL");
    expect(r.stdout).toContain("invalid: hook.token:");
    expect(r.stdout).toMatch(/skipped: names the same repository as albatros\/\S+; only that one is migrated/);
    expect(r.stdout).toContain("3 written");
    expect((value(fake, "petrel/repos/git.example.test/acme/tools") as { flavors: unknown }).flavors).toEqual({
      default: { builder: "builder" },
      nix: { builder: "builder-nix" },
    });
  });

  it("loses a check-and-set race without overwriting, and takes back the secrets it wrote", async () => {
    seed(fake);
    const racer = JSON.stringify({ hook: { secret: "someone-else-wrote-this" } });
    // Between petrel's look and its write, someone else creates the widgets entry.
    const proxy = await raceProxy(fake, "/v1/kv/petrel/repos/git.example.test/acme/widgets", () =>
      fake.set("petrel/repos/git.example.test/acme/widgets", racer),
    );
    try {
      env = { CONSUL_HTTP_ADDR: proxy.url };
      const r = await run("--apply");
      expect(r.code).toBe(EXIT.refused);
      expect(r.stdout).toContain("skipped: petrel/repos/git.example.test/acme/widgets was created meanwhile; nothing written");
      expect(fake.entry("petrel/repos/git.example.test/acme/widgets")?.value?.toString("utf8")).toBe(racer);
      expect(fake.entry("petrel/secrets/git.example.test/acme/widgets")).toBeUndefined();
      expect(fake.entry("petrel/repos/git.example.test/acme/tools")).toBeDefined();
    } finally {
      await proxy.close();
    }
  });

  it("says what it wants for an unknown source or an empty prefix", async () => {
    const c = captureIo();
    expect(await migrateCommand(["jenkins"], env, c.io)).toBe(EXIT.usage);
    expect(c.stderr()).toContain('unknown source "jenkins"');
    expect((await run("--prefix", "/")).code).toBe(EXIT.usage);
    const none = await run("--prefix", "elsewhere");
    expect(none.stdout).toBe("no Albatros entries under elsewhere/\n");
  });
});

/** A loopback proxy to the fake that runs `before` once, just before forwarding the first PUT to `path`. */
async function raceProxy(fake: ConsulFake, path: string, before: () => void): Promise<{ url: string; close(): Promise<void> }> {
  let raced = false;
  const target = new URL(fake.url);
  const server: Server = createServer((req: IncomingMessage, res) => {
    if (!raced && req.method === "PUT" && (req.url ?? "").startsWith(path)) {
      raced = true;
      before();
    }
    const upstream = request(
      { host: target.hostname, port: target.port, path: req.url, method: req.method, headers: req.headers },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      },
    );
    req.pipe(upstream);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
