import { mkdtempSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Logger } from "pino";
import pino from "pino";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { AppError } from "../../src/errors.js";
import { createFileRegistry, parseRegistryFile, removeRepo, writeRepo } from "../../src/registry/file.js";
import type { Registry } from "../../src/registry/schema.js";

const HOOK_SECRET = "hook-secret-file-3a9";
const DEPLOY_TOKEN = "deploy-token-file-77c";
const WIDGETS = "git.example.test/acme/widgets";
const GADGETS = "git.example.test/acme/gadgets";

let dir: string;
let path: string;
let lines: string[];
let log: Logger;
let registry: Registry | undefined;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "petrel-file-registry-"));
  path = join(dir, "petrel.yaml");
  lines = [];
  log = pino({ level: "trace" }, { write: (line: string) => void lines.push(line) });
  registry = undefined;
});

afterEach(async () => {
  await registry?.close();
  const all = lines.join("");
  expect(all).not.toContain(HOOK_SECRET);
  expect(all).not.toContain(DEPLOY_TOKEN);
});

async function open(): Promise<Registry> {
  registry = await createFileRegistry({ path, defaultBuilder: "builder", log, debounceMs: 30 });
  return registry;
}

async function until(check: () => boolean | Promise<boolean>, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 10));
  }
}

const VALID = `repos:
  ${WIDGETS}:
    hook: { secret: "${HOOK_SECRET}" }
    trusted: { senders: [dana] }
    secrets: { DEPLOY_TOKEN: "${DEPLOY_TOKEN}", deploy_key: "KEY" }
`;

function errorOf(fn: () => unknown): AppError {
  try {
    fn();
  } catch (err) {
    if (err instanceof AppError) return err;
    throw err;
  }
  throw new Error("expected an AppError");
}

describe("file registry", () => {
  it("treats a missing file as no repositories, healthy, and says how to add one", async () => {
    const r = await open();
    expect(await r.list()).toEqual([]);
    expect(await r.get(WIDGETS)).toBeUndefined();
    expect(r.health()).toEqual({ ok: true, source: "file", stalenessSeconds: 0, repositories: 0 });
    expect(lines.join("")).toContain("petrel repo add");
  });

  it("reads the petrel.yaml format with inline secrets and the deploy key apart", async () => {
    writeFileSync(path, VALID);
    const entry = await (await open()).get(WIDGETS);
    expect(entry?.config.hook.secret).toBe(HOOK_SECRET);
    expect(entry?.config.trusted.senders).toEqual(["dana"]);
    expect(entry?.config.flavors).toEqual({ default: { builder: "builder" } });
    expect(entry?.secrets).toEqual({ DEPLOY_TOKEN });
    expect(entry?.deployKey).toBe("KEY");
  });

  it("keeps an `inject` secret apart from the build secrets, as the Consul registry does", () => {
    const text = `repos:\n  ${WIDGETS}:\n    hook: { secret: "${HOOK_SECRET}" }\n    secrets: { A: "1", inject: "source /etc/ci" }\n`;
    const entry = parseRegistryFile(path, text, "builder").get(WIDGETS);
    expect(entry?.secrets).toEqual({ A: "1" });
    expect(entry?.inject).toBe("source /etc/ci");
  });

  it("treats an empty file as no repositories", async () => {
    writeFileSync(path, "# nothing yet\n");
    expect(await (await open()).list()).toEqual([]);
  });

  it("refuses broken YAML naming the file and the line, without quoting the text", async () => {
    writeFileSync(path, `repos:\n  ${WIDGETS}:\n    hook: { secret: "${HOOK_SECRET}" \n    trusted: x\n`);
    const err = await createFileRegistry({ path, defaultBuilder: "builder", log }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AppError);
    expect(err).toMatchObject({ code: "config_invalid" });
    const message = (err as Error).message;
    expect(message).toContain(path);
    expect(message).toMatch(/line \d+/);
    expect(message).not.toContain(HOOK_SECRET);
  });

  it("refuses an invalid field naming the repository key, the field and the line", () => {
    const err = errorOf(() =>
      parseRegistryFile(
        path,
        `repos:\n  ${GADGETS}:\n    hook: { secret: s }\n  ${WIDGETS}:\n    hook: { secret: s }\n    logs: sometimes\n`,
        "builder",
      ),
    );
    expect(err.code).toBe("config_invalid");
    expect(err.message).toContain(`${path}: repos."${WIDGETS}" (line 4): logs:`);
    expect(err.message).not.toContain(GADGETS);
  });

  it("reads an operator's clone_url, file:// and local paths included, and refuses one git would take for an option", () => {
    for (const url of [
      "file:///srv/git/widgets.git",
      "/srv/git/widgets.git",
      "https://git.example.test/acme/widgets.git",
      "git@git.example.test:acme/widgets.git",
      "ssh://git@git.example.test:2222/acme/widgets.git",
    ]) {
      const entries = parseRegistryFile(path, `repos:\n  ${WIDGETS}:\n    hook: { secret: s }\n    clone_url: "${url}"\n`, "builder");
      expect(entries.get(WIDGETS)?.config.clone_url).toBe(url);
    }
    for (const url of ["--upload-pack=touch /tmp/x", "ext::sh -c touch% /tmp/x", "relative/path", "fd::3", "https://x/\\ny"]) {
      const err = errorOf(() =>
        parseRegistryFile(path, `repos:\n  ${WIDGETS}:\n    hook: { secret: s }\n    clone_url: "${url}"\n`, "builder"),
      );
      expect(err.message).toContain("clone_url:");
    }
  });

  it("names an invalid secret by its name only", () => {
    const err = errorOf(() =>
      parseRegistryFile(
        path,
        `repos:\n  ${WIDGETS}:\n    hook: { secret: s }\n    secrets: { PORT: 8080, OK: "${DEPLOY_TOKEN}" }\n`,
        "builder",
      ),
    );
    expect(err.message).toContain("secrets.PORT:");
    expect(err.message).not.toContain(DEPLOY_TOKEN);
  });

  it("refuses keys that are not <host>/<owner>/<name> and unknown top-level keys", () => {
    expect(errorOf(() => parseRegistryFile(path, "repos:\n  acme/widgets:\n    hook: { secret: s }\n", "b")).message).toContain(
      'repos."acme/widgets"',
    );
    expect(errorOf(() => parseRegistryFile(path, "repo:\n  x: 1\n", "b")).message).toContain('unknown top-level key "repo"');
  });

  it("reloads when the file changes", async () => {
    writeFileSync(path, VALID);
    const r = await open();
    writeFileSync(path, `${VALID}  ${GADGETS}:\n    hook: { token: t }\n`);
    await until(async () => (await r.get(GADGETS)) !== undefined);
    expect((await r.list()).map((e) => e.key)).toEqual([GADGETS, WIDGETS]);
  });

  it("reloads when an editor replaces the file by renaming over it", async () => {
    writeFileSync(path, VALID);
    const r = await open();
    writeFileSync(join(dir, "edit.tmp"), `repos:\n  ${GADGETS}:\n    hook: { token: t }\n`);
    renameSync(join(dir, "edit.tmp"), path);
    await until(async () => (await r.get(GADGETS)) !== undefined);
    expect(await r.get(WIDGETS)).toBeUndefined();
  });

  it("keeps the last good version when the new one is invalid, and reports it in health", async () => {
    let clock = 5_000_000;
    writeFileSync(path, VALID);
    registry = await createFileRegistry({ path, defaultBuilder: "builder", log, debounceMs: 30, now: () => clock });
    const r = registry;
    writeFileSync(path, `repos:\n  ${WIDGETS}:\n    hook: {}\n`);
    await until(() => !r.health().ok);
    clock += 7_000;
    expect((await r.get(WIDGETS))?.config.hook.secret).toBe(HOOK_SECRET);
    expect(r.health()).toMatchObject({ ok: false, stalenessSeconds: 7, repositories: 1 });
    expect(r.health().lastError).toContain(`repos."${WIDGETS}"`);
    writeFileSync(path, VALID.replace("dana", "erin"));
    await until(() => r.health().ok);
    expect((await r.get(WIDGETS))?.config.trusted.senders).toEqual(["erin"]);
  });

  it("stops watching on close", async () => {
    writeFileSync(path, VALID);
    const r = await open();
    await r.close();
    registry = undefined;
    writeFileSync(path, `repos:\n  ${GADGETS}:\n    hook: { token: t }\n`);
    await new Promise((resolve) => setTimeout(resolve, 150));
    expect(await r.get(GADGETS)).toBeUndefined();
  });
});

describe("writeRepo and removeRepo", () => {
  it("creates the file with mode 0600 and an entry the registry reads back", async () => {
    await writeRepo(path, WIDGETS, { hook: { secret: HOOK_SECRET } }, { DEPLOY_TOKEN });
    expect(statSync(path).mode & 0o777).toBe(0o600);
    const entry = parseRegistryFile(path, readFileSync(path, "utf8"), "builder").get(WIDGETS);
    expect(entry?.config.hook.secret).toBe(HOOK_SECRET);
    expect(entry?.secrets).toEqual({ DEPLOY_TOKEN });
  });

  it("keeps other entries and the entry's secrets when none are given, leaving no temp files", async () => {
    await writeRepo(path, WIDGETS, { hook: { secret: HOOK_SECRET } }, { DEPLOY_TOKEN });
    await writeRepo(path, GADGETS, { hook: { token: "t" } });
    await writeRepo(path, WIDGETS, { hook: { secret: HOOK_SECRET }, logs: "public" });
    const entries = parseRegistryFile(path, readFileSync(path, "utf8"), "builder");
    expect([...entries.keys()].sort()).toEqual([GADGETS, WIDGETS]);
    expect(entries.get(WIDGETS)?.config.logs).toBe("public");
    expect(entries.get(WIDGETS)?.secrets).toEqual({ DEPLOY_TOKEN });
    expect(readdirSync(dir)).toEqual(["petrel.yaml"]);
  });

  it("tightens a readable file to 0600 when rewriting it", async () => {
    writeFileSync(path, VALID, { mode: 0o644 });
    await writeRepo(path, GADGETS, { hook: { token: "t" } });
    expect(statSync(path).mode & 0o777).toBe(0o600);
  });

  it("refuses an invalid entry without touching the file", async () => {
    writeFileSync(path, VALID);
    const err = await writeRepo(path, WIDGETS, { hook: {} }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: "entry_invalid", status: 400 });
    expect((err as Error).message).toContain("hook:");
    expect(readFileSync(path, "utf8")).toBe(VALID);
  });

  it("refuses to rewrite a broken file", async () => {
    writeFileSync(path, "repos: [\n");
    await expect(writeRepo(path, WIDGETS, { hook: { token: "t" } })).rejects.toThrow(/line \d+/);
    expect(readFileSync(path, "utf8")).toBe("repos: [\n");
  });

  it("removes an entry and says whether it was there", async () => {
    writeFileSync(path, VALID);
    expect(await removeRepo(path, WIDGETS)).toBe(true);
    expect(parseRegistryFile(path, readFileSync(path, "utf8"), "builder").size).toBe(0);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(await removeRepo(path, WIDGETS)).toBe(false);
  });

  it("is picked up by a running registry", async () => {
    const r = await open();
    await writeRepo(path, WIDGETS, { hook: { secret: HOOK_SECRET } });
    await until(async () => (await r.get(WIDGETS)) !== undefined);
    await removeRepo(path, WIDGETS);
    await until(async () => (await r.get(WIDGETS)) === undefined);
  });
});
