import { mkdtempSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { EXIT } from "../../src/cli/ops.js";
import { repoCommand } from "../../src/cli/repo.js";
import { parseRegistryFile } from "../../src/registry/file.js";
import type { ConsulFake } from "../fakes/consul.js";
import { startConsulFake } from "../fakes/consul.js";
import { captureIo } from "./harness.js";

const URL_ = "https://git.example.test/Acme/Widgets";
const KEY = "git.example.test/acme/widgets";
const DEPLOY_TOKEN = "deploy-token-value-7d1c2e9f40";
const DEPLOY_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nkey-material-5e8a\n-----END OPENSSH PRIVATE KEY-----";

function files(): { dir: string; tokenFile: string; keyFile: string; giteaFile: string } {
  const dir = mkdtempSync(join(tmpdir(), "petrel-repo-"));
  const tokenFile = join(dir, "deploy-token");
  const keyFile = join(dir, "id_ed25519");
  const giteaFile = join(dir, "gitea-token");
  writeFileSync(tokenFile, `${DEPLOY_TOKEN}\n`);
  writeFileSync(keyFile, DEPLOY_KEY);
  writeFileSync(giteaFile, "gitea-token-abcdef0123456789\n");
  return { dir, tokenFile, keyFile, giteaFile };
}

/** The hex secret printed on the `Secret` line of `repo add`. */
function printedSecret(stdout: string): string {
  const m = /^ {2}Secret {8}([0-9a-f]+)$/m.exec(stdout);
  if (!m?.[1]) throw new Error(`no secret in ${stdout}`);
  return m[1];
}

describe("petrel repo against the YAML file (single-machine mode)", () => {
  let dir: string;
  let env: Record<string, string>;
  let f: ReturnType<typeof files>;
  beforeEach(() => {
    f = files();
    dir = f.dir;
    env = { PETREL_CONFIG: join(dir, "petrel.yaml"), PETREL_URL: "https://ci.example.test" };
  });

  it("adds an entry with a generated secret, prints the webhook once, and writes the file with mode 0600", async () => {
    const c = captureIo();
    const code = await repoCommand(
      [
        "add",
        URL_,
        "--trusted",
        "dana, erin",
        "--flavor",
        "default=builder",
        "--flavor",
        "nix=builder-nix",
        "--cache",
        "npm=~/.npm",
        "--secret",
        `DEPLOY_TOKEN=@${f.tokenFile}`,
        "--secret",
        `deploy_key=@${f.keyFile}`,
        "--logs",
        "token",
        "--gitea-url",
        "https://git.example.test/",
        "--gitea-token-from-file",
        f.giteaFile,
      ],
      env,
      c.io,
    );
    expect(c.stderr()).toContain(`reading ${env.PETREL_CONFIG}`);
    expect(code).toBe(0);
    const secret = printedSecret(c.stdout());
    expect(secret).toMatch(/^[0-9a-f]{64}$/);
    expect(c.stdout()).toContain("  Target URL    https://ci.example.test/hook\n");
    expect(c.stdout()).toContain("https://ci.example.test/hook?flavor=nix");
    expect(c.stdout().split(secret)).toHaveLength(2);
    expect(c.stderr()).not.toContain(secret);
    expect(statSync(env.PETREL_CONFIG as string).mode & 0o777).toBe(0o600);
    const entry = parseRegistryFile("petrel.yaml", readFileSync(env.PETREL_CONFIG as string, "utf8"), "builder").get(KEY);
    expect(entry?.config).toMatchObject({
      hook: { secret },
      trusted: { senders: ["dana", "erin"] },
      flavors: { default: { builder: "builder" }, nix: { builder: "builder-nix" } },
      caches: { npm: "~/.npm" },
      logs: "token",
      gitea: { url: "https://git.example.test", token: "gitea-token-abcdef0123456789" },
    });
    // One trailing newline is dropped from a value; a deploy key gets the one OpenSSH needs.
    expect(entry?.secrets).toEqual({ DEPLOY_TOKEN });
    expect(entry?.deployKey).toBe(`${DEPLOY_KEY}\n`);
  });

  it("refuses to overwrite an entry without --force, and --force replaces it but keeps its build secrets", async () => {
    expect(await repoCommand(["add", URL_, "--secret", `DEPLOY_TOKEN=@${f.tokenFile}`, "-q"], env, captureIo().io)).toBe(0);
    const before = readFileSync(env.PETREL_CONFIG as string, "utf8");
    const again = captureIo();
    expect(await repoCommand(["add", URL_], env, again.io)).toBe(EXIT.refused);
    expect(again.stderr()).toContain(`petrel repo add: ${KEY} is already registered`);
    expect(again.stderr()).toContain("--force");
    expect(readFileSync(env.PETREL_CONFIG as string, "utf8")).toBe(before);

    const forced = captureIo();
    expect(await repoCommand(["add", URL_, "--force", "--token"], env, forced.io)).toBe(0);
    const secret = printedSecret(forced.stdout());
    const entry = parseRegistryFile("p", readFileSync(env.PETREL_CONFIG as string, "utf8"), "builder").get(KEY);
    expect(entry?.config.hook.secret).toBe(secret);
    expect(before).not.toContain(secret);
    expect(entry?.config.hook.token).toMatch(/^[0-9a-f]{64}$/);
    expect(forced.stdout()).toContain(`https://ci.example.test/hook?token=${entry?.config.hook.token}`);
    expect(forced.stdout()).toContain("The webhook secret changed");
    expect(entry?.secrets).toEqual({ DEPLOY_TOKEN });
  });

  it("takes the webhook secret from a file and does not print it", async () => {
    const secretFile = join(dir, "hook-secret");
    writeFileSync(secretFile, "  my-own-webhook-secret-value \n");
    const c = captureIo();
    expect(await repoCommand(["add", KEY, "--secret-from-file", secretFile], env, c.io)).toBe(0);
    expect(c.stdout()).not.toContain("my-own-webhook-secret-value");
    expect(c.stdout()).toContain(`the content of ${secretFile}`);
    const entry = parseRegistryFile("p", readFileSync(env.PETREL_CONFIG as string, "utf8"), "builder").get(KEY);
    expect(entry?.config.hook.secret).toBe("my-own-webhook-secret-value");
  });

  it("reads a secret from stdin with NAME=@-", async () => {
    const c = captureIo("from-stdin-value\n");
    expect(await repoCommand(["add", URL_, "--secret", "NPM_TOKEN=@-", "-q"], env, c.io)).toBe(0);
    const entry = parseRegistryFile("p", readFileSync(env.PETREL_CONFIG as string, "utf8"), "builder").get(KEY);
    expect(entry?.secrets).toEqual({ NPM_TOKEN: "from-stdin-value" });
  });

  it("never takes a secret value from the command line, and does not echo it", async () => {
    const c = captureIo();
    expect(await repoCommand(["add", URL_, "--secret", "NPM_TOKEN=plain-value-typed-in"], env, c.io)).toBe(EXIT.usage);
    expect(c.stderr()).toContain("--secret wants NAME=@file");
    expect(c.stderr()).not.toContain("plain-value-typed-in");
    expect(() => statSync(env.PETREL_CONFIG as string)).toThrow();
  });

  it("refuses what is not a repository URL or an invalid option value", async () => {
    const bad = captureIo();
    expect(await repoCommand(["add", "not a url"], env, bad.io)).toBe(EXIT.usage);
    expect(bad.stderr()).toContain("is neither <host>/<owner>/<name> nor a repository URL");
    const flavor = captureIo();
    expect(await repoCommand(["add", URL_, "--flavor", "bad name=builder"], env, flavor.io)).toBe(EXIT.usage);
    expect(flavor.stderr()).toContain("--flavor: flavor names are letters, digits");
  });

  it("shows an entry with secrets and tokens masked", async () => {
    const add = captureIo();
    await repoCommand(
      ["add", URL_, "--token", "--secret", `DEPLOY_TOKEN=@${f.tokenFile}`, "--secret", `deploy_key=@${f.keyFile}`],
      env,
      add.io,
    );
    const secret = printedSecret(add.stdout());
    const c = captureIo();
    expect(await repoCommand(["show", URL_], env, c.io)).toBe(0);
    const out = c.stdout();
    expect(out).toContain(`# ${KEY} (${env.PETREL_CONFIG}, repos.${KEY})`);
    expect(out).toContain(`secret: ${secret.slice(0, 4)}…(64 chars)`);
    expect(out).toContain(`DEPLOY_TOKEN: ${DEPLOY_TOKEN.slice(0, 4)}…(${DEPLOY_TOKEN.length} chars)`);
    expect(out).not.toContain(secret);
    expect(out).not.toContain(DEPLOY_TOKEN);
    expect(out).not.toContain("key-material");
    const json = captureIo();
    expect(await repoCommand(["show", KEY, "--json"], env, json.io)).toBe(0);
    const parsed = JSON.parse(json.stdout()) as { key: string; entry: { hook: { secret: string; token: string } } };
    expect(parsed.key).toBe(KEY);
    expect(parsed.entry.hook.secret).toBe(`${secret.slice(0, 4)}…(64 chars)`);
    expect(parsed.entry.hook.token).toMatch(/^[0-9a-f]{4}…\(64 chars\)$/);
    expect(json.stdout()).not.toContain(secret);
  });

  it("lists entries and removes one; removing it again exits 4", async () => {
    await repoCommand(["add", URL_, "--trusted", "dana", "-q"], env, captureIo().io);
    await repoCommand(["add", "https://git.example.test/acme/gadgets", "--token", "-q"], env, captureIo().io);
    const list = captureIo();
    expect(await repoCommand(["list"], env, list.io)).toBe(0);
    const lines = list.stdout().trimEnd().split("\n");
    expect(lines[0]).toMatch(/^KEY\s+AUTH\s+TRUSTED\s+FLAVORS\s+LOGS\s+SECRETS$/);
    expect(lines[1]).toMatch(/^git\.example\.test\/acme\/gadgets\s+secret\+token\s+-\s+default/);
    expect(lines[2]).toMatch(/^git\.example\.test\/acme\/widgets\s+secret\s+dana\s/);
    const rm = captureIo();
    expect(await repoCommand(["rm", URL_], env, rm.io)).toBe(0);
    expect(rm.stdout()).toBe(`removed ${KEY} from file ${env.PETREL_CONFIG}\n`);
    const json = captureIo();
    await repoCommand(["list", "--json"], env, json.io);
    expect((JSON.parse(json.stdout()) as { repos: { key: string }[] }).repos.map((r) => r.key)).toEqual(["git.example.test/acme/gadgets"]);
    const again = captureIo();
    expect(await repoCommand(["rm", KEY], env, again.io)).toBe(EXIT.notFound);
    expect(again.stderr()).toContain(`${KEY} is not registered in file ${env.PETREL_CONFIG}; nothing was changed`);
  });

  it("writes nothing when removing a repository that is not registered", async () => {
    await repoCommand(["add", URL_, "-q"], env, captureIo().io);
    // A hand-written file with a comment: any rewrite would drop it.
    const path = env.PETREL_CONFIG as string;
    writeFileSync(path, `# kept by hand\n${readFileSync(path, "utf8")}`, { mode: 0o600 });
    const before = readFileSync(path);
    const mtime = statSync(path).mtimeMs;
    const c = captureIo();
    expect(await repoCommand(["rm", "git.example.test/acme/nothing"], env, c.io)).toBe(EXIT.notFound);
    expect(c.stderr()).toContain("git.example.test/acme/nothing is not registered in file");
    expect(c.stderr()).not.toContain("writing");
    expect(c.stdout()).toBe("");
    expect(readFileSync(path).equals(before)).toBe(true);
    expect(statSync(path).mtimeMs).toBe(mtime);
  });

  it("exits 4 when showing an unknown repository and names the file when it is not YAML", async () => {
    const c = captureIo();
    expect(await repoCommand(["show", KEY], env, c.io)).toBe(EXIT.notFound);
    writeFileSync(env.PETREL_CONFIG as string, "repos:\n  a: [unclosed\n");
    const broken = captureIo();
    expect(await repoCommand(["list"], env, broken.io)).toBe(EXIT.refused);
    expect(broken.stderr()).toMatch(/is not valid YAML: line \d+/);
  });
});

describe("petrel repo against Consul (cluster mode)", () => {
  let consul: ConsulFake;
  let env: Record<string, string>;
  let f: ReturnType<typeof files>;
  beforeEach(async () => {
    f = files();
    consul = await startConsulFake({ acl: { tokens: { "consul-admin-token": { read: [""], write: [""] } } } });
    env = {
      NOMAD_ADDR: "http://127.0.0.1:1",
      CONSUL_HTTP_ADDR: consul.url,
      CONSUL_HTTP_TOKEN: "consul-admin-token",
      PETREL_URL: "https://ci.example.test",
    };
  });
  afterEach(async () => {
    await consul.close();
  });

  it("writes the config and the secrets under their own keys, and prints the secret once", async () => {
    const c = captureIo();
    const code = await repoCommand(["add", URL_, "--trusted", "dana", "--secret", `DEPLOY_TOKEN=@${f.tokenFile}`], env, c.io);
    expect(c.stderr()).toContain(`consul ${consul.url}: PUT petrel/repos/${KEY}`);
    expect(code).toBe(0);
    const secret = printedSecret(c.stdout());
    expect(c.stdout()).toContain(`(Consul key petrel/repos/${KEY} at ${consul.url})`);
    const config = JSON.parse(consul.entry(`petrel/repos/${KEY}`)?.value?.toString() ?? "null") as {
      hook: { secret: string };
      trusted: unknown;
    };
    expect(config.hook.secret).toBe(secret);
    expect(config.trusted).toEqual({ senders: ["dana"] });
    expect(JSON.parse(consul.entry(`petrel/secrets/${KEY}`)?.value?.toString() ?? "null")).toEqual({ DEPLOY_TOKEN });
    // Secrets first, so the repository never exists without them; every request carries the token.
    const puts = consul.requests.filter((r) => r.method === "PUT").map((r) => r.path);
    expect(puts).toEqual([`/v1/kv/petrel/secrets/${KEY}`, `/v1/kv/petrel/repos/${KEY}`]);
    expect(consul.requests.every((r) => r.token === "consul-admin-token")).toBe(true);
  });

  it("refuses to overwrite without --force and shows, lists and removes the entry", async () => {
    await repoCommand(["add", URL_, "--secret", `DEPLOY_TOKEN=@${f.tokenFile}`, "-q"], env, captureIo().io);
    const again = captureIo();
    expect(await repoCommand(["add", URL_], env, again.io)).toBe(EXIT.refused);
    expect(again.stderr()).toContain("already registered");

    const show = captureIo();
    expect(await repoCommand(["show", KEY, "--json"], env, show.io)).toBe(0);
    const shown = JSON.parse(show.stdout()) as { entry: { hook: { secret: string }; secrets: Record<string, string> } };
    expect(shown.entry.hook.secret).toMatch(/^[0-9a-f]{4}…\(64 chars\)$/);
    expect(shown.entry.secrets).toEqual({ DEPLOY_TOKEN: `${DEPLOY_TOKEN.slice(0, 4)}…(${DEPLOY_TOKEN.length} chars)` });

    consul.set("petrel/repos/git.example.test/acme/broken", "{not json: [");
    const list = captureIo();
    expect(await repoCommand(["list"], env, list.io)).toBe(0);
    expect(list.stdout()).toMatch(/git\.example\.test\/acme\/broken\s+INVALID/);
    expect(list.stdout()).toMatch(/git\.example\.test\/acme\/widgets\s+secret\s+-\s+default\s+-\s+DEPLOY_TOKEN/);

    const rm = captureIo();
    expect(await repoCommand(["rm", URL_], env, rm.io)).toBe(0);
    expect(consul.entry(`petrel/repos/${KEY}`)).toBeUndefined();
    expect(consul.entry(`petrel/secrets/${KEY}`)).toBeUndefined();
  });

  it("leaves Consul untouched when removing a repository that is not registered", async () => {
    await repoCommand(["add", URL_, "--secret", `DEPLOY_TOKEN=@${f.tokenFile}`, "-q"], env, captureIo().io);
    const writes = () => consul.requests.filter((r) => r.method !== "GET").length;
    const before = writes();
    const c = captureIo();
    expect(await repoCommand(["rm", "git.example.test/acme/nothing"], env, c.io)).toBe(EXIT.notFound);
    expect(c.stderr()).toContain("git.example.test/acme/nothing is not registered in Consul");
    expect(writes()).toBe(before);
    expect(consul.entry(`petrel/repos/${KEY}`)).toBeDefined();
  });

  it("exits 6 with Consul's reason when the token is refused", async () => {
    const c = captureIo();
    expect(await repoCommand(["add", URL_], { ...env, CONSUL_HTTP_TOKEN: "wrong-token" }, c.io)).toBe(EXIT.unauthorized);
    expect(c.stderr()).toContain(`petrel repo add: Consul at ${consul.url}: consul GET petrel/repos/${KEY} answered 403`);
    expect(c.stderr()).toContain("CONSUL_HTTP_TOKEN");
  });

  it("exits 5 naming the address when Consul is down", async () => {
    await consul.setDown(true);
    const c = captureIo();
    expect(await repoCommand(["list"], env, c.io)).toBe(EXIT.unreachable);
    expect(c.stderr()).toContain(`Consul at ${consul.url}: consul GET petrel/repos/ unreachable`);
  });
});
