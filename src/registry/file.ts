import { randomBytes } from "node:crypto";
import type { FSWatcher } from "node:fs";
import { watch } from "node:fs";
import { mkdir, open, readFile, rename, unlink } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import yaml from "js-yaml";
import type { Logger } from "pino";
import { z } from "zod";
import { AppError, errorMessage } from "../errors.js";
import type { Registry, RegistryHealth, RepoEntry, RepoKey } from "./schema.js";
import { buildersOf, describeIssues, flavorsOf, isRepoKey, RepoConfig, RepoSecrets, splitSecrets } from "./schema.js";

export interface FileRegistryOptions {
  /** PETREL_CONFIG, default `./petrel.yaml`. */
  path: string;
  /** Builder job of the `default` flavor for entries that name no flavors. */
  defaultBuilder: string;
  log: Logger;
  /** Quiet time after the last change before the file is read again (default 200 ms). */
  debounceMs?: number;
  now?: () => number;
}

const RepoWithSecrets = z.object({ secrets: RepoSecrets.optional() });

/** `line N, column M: reason` of a js-yaml error; never its message, which quotes the (secret-bearing) text. */
function yamlProblem(err: unknown): string {
  if (err instanceof yaml.YAMLException) {
    const where = err.mark === undefined ? "" : `line ${err.mark.line + 1}, column ${err.mark.column + 1}: `;
    return `${where}${err.reason}`;
  }
  return errorMessage(err);
}

function invalid(path: string, problem: string, code: "config_invalid" | "entry_invalid" = "config_invalid"): AppError {
  return new AppError(code, `${path}: ${problem}`);
}

/** Best effort: the 1-based line where a repository's key sits, to point the operator at it. */
function lineOf(text: string, key: string): number | undefined {
  const escaped = key.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const re = new RegExp(`^\\s*(?:"${escaped}"|'${escaped}'|${escaped})\\s*:`);
  const index = text.split("\n").findIndex((l) => re.test(l));
  return index === -1 ? undefined : index + 1;
}

function loadDocument(path: string, text: string): Record<string, unknown> {
  let doc: unknown;
  try {
    doc = yaml.load(text, { filename: path });
  } catch (err) {
    throw invalid(path, `not valid YAML: ${yamlProblem(err)}`);
  }
  if (doc === undefined || doc === null) return {};
  if (typeof doc !== "object" || Array.isArray(doc)) throw invalid(path, "expected a mapping with a `repos:` key");
  const unknown = Object.keys(doc).filter((k) => k !== "repos");
  if (unknown.length > 0)
    throw invalid(path, `unknown top-level key ${unknown.map((k) => JSON.stringify(k)).join(", ")} (expected \`repos:\`)`);
  const repos = (doc as { repos?: unknown }).repos;
  if (repos !== undefined && repos !== null && (typeof repos !== "object" || Array.isArray(repos))) {
    throw invalid(path, "`repos:` must map <host>/<owner>/<name> to an entry");
  }
  return doc as Record<string, unknown>;
}

/**
 * Parses the single-machine registry file (petrel.yaml, README "Single-machine mode": `repos: { "<host>/<owner>/<name>": {..., secrets} }`).
 * Throws an AppError `config_invalid` naming the file and the line, or the repository and field.
 */
export function parseRegistryFile(path: string, text: string, defaultBuilder: string): Map<RepoKey, RepoEntry> {
  const repos = (loadDocument(path, text).repos ?? {}) as Record<string, unknown>;
  const entries = new Map<RepoKey, RepoEntry>();
  const problems: string[] = [];
  for (const [key, value] of Object.entries(repos)) {
    const line = lineOf(text, key);
    const where = `repos.${JSON.stringify(key)}${line === undefined ? "" : ` (line ${line})`}`;
    if (!isRepoKey(key)) {
      problems.push(`${where}: key must be <host>/<owner>/<name>, lower-case segments of [a-z0-9._-]`);
      continue;
    }
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      problems.push(`${where}: must be a mapping with at least \`hook:\``);
      continue;
    }
    const { secrets: rawSecrets, ...rawConfig } = value as Record<string, unknown>;
    const config = RepoConfig.safeParse(rawConfig);
    const secrets = RepoWithSecrets.safeParse({ secrets: rawSecrets ?? undefined });
    if (!config.success) problems.push(`${where}: ${describeIssues(config.error)}`);
    if (!secrets.success) problems.push(`${where}: ${describeIssues(secrets.error)}`);
    if (!config.success || !secrets.success) continue;
    const split = splitSecrets(secrets.data.secrets ?? {});
    const entry: RepoEntry = {
      key,
      config: { ...config.data, flavors: flavorsOf(config.data, defaultBuilder) },
      secrets: split.secrets,
    };
    if (split.deployKey !== undefined) entry.deployKey = split.deployKey;
    if (split.inject !== undefined) entry.inject = split.inject;
    entries.set(key, entry);
  }
  if (problems.length > 0) throw invalid(path, problems.join("; "));
  return entries;
}

async function readIfExists(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw invalid(path, `cannot read: ${errorMessage(err)}`);
  }
}

/**
 * The repository registry of single-machine mode: a YAML file read at start and again whenever it changes.
 * A missing file means no repositories; a new version that does not validate is logged and the last good
 * one keeps serving.
 */
export async function createFileRegistry(opts: FileRegistryOptions): Promise<Registry> {
  const now = opts.now ?? Date.now;
  const log = opts.log.child({ component: "registry", source: "file", path: opts.path });
  let lastText = await readIfExists(opts.path);
  let entries = lastText === undefined ? new Map<RepoKey, RepoEntry>() : parseRegistryFile(opts.path, lastText, opts.defaultBuilder);
  let error: { message: string; since: number } | undefined;
  if (lastText === undefined) {
    log.info(
      `no repositories: ${opts.path} does not exist; add one with \`petrel repo add\` or write it (repos: <host>/<owner>/<name>: {hook: {secret: ...}})`,
    );
  } else {
    log.info({ repositories: entries.size }, "registry loaded from file");
  }

  let timer: NodeJS.Timeout | undefined;
  let closed = false;
  let reloading = Promise.resolve();

  async function reload(): Promise<void> {
    if (closed) return;
    let text: string | undefined;
    try {
      text = await readIfExists(opts.path);
    } catch (err) {
      fail(errorMessage(err));
      return;
    }
    if (text === lastText && error === undefined) return;
    try {
      entries = text === undefined ? new Map() : parseRegistryFile(opts.path, text, opts.defaultBuilder);
    } catch (err) {
      lastText = text;
      fail(errorMessage(err));
      return;
    }
    lastText = text;
    error = undefined;
    if (text === undefined) log.info(`no repositories: ${opts.path} was removed`);
    else log.info({ repositories: entries.size }, "registry reloaded from file");
  }

  function fail(message: string): void {
    // Messages name the line or field, never a value: the file holds secrets.
    if (error?.message !== message) log.error({ err: message }, "registry file invalid; keeping the last good version");
    error = { message, since: error?.since ?? now() };
  }

  let watcher: FSWatcher | undefined;
  try {
    // The directory, not the file: editors and writeRepo replace the file by renaming over it.
    watcher = watch(dirname(opts.path), { persistent: false }, (_event, name) => {
      if (name !== null && name !== basename(opts.path)) return;
      clearTimeout(timer);
      timer = setTimeout(() => {
        reloading = reloading.then(reload);
      }, opts.debounceMs ?? 200);
    });
    watcher.on("error", (err) => log.warn({ err: errorMessage(err) }, "cannot watch the registry file; changes need a restart"));
  } catch (err) {
    log.warn({ err: errorMessage(err) }, "cannot watch the registry file; changes need a restart");
  }

  return {
    get: async (key) => entries.get(key),
    list: async () => [...entries.values()].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0)),
    builders: () => buildersOf(entries.values(), opts.defaultBuilder),
    health(): RegistryHealth {
      const h: RegistryHealth = {
        ok: error === undefined,
        source: "file",
        stalenessSeconds: error === undefined ? 0 : Math.floor((now() - error.since) / 1000),
        repositories: entries.size,
      };
      if (error !== undefined) h.lastError = error.message;
      return h;
    },
    async close() {
      closed = true;
      clearTimeout(timer);
      watcher?.close();
      await reloading;
    },
  };
}

/** Replaces `path` atomically (temp file in the same directory, then rename), readable by its owner only. */
async function writeAtomically(path: string, text: string): Promise<void> {
  const dir = dirname(path);
  await mkdir(dir, { recursive: true });
  const tmp = join(dir, `.${basename(path)}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`);
  const handle = await open(tmp, "wx", 0o600);
  try {
    await handle.chmod(0o600);
    await handle.writeFile(text, "utf8");
    await handle.sync();
  } catch (err) {
    await handle.close();
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  await handle.close();
  try {
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
}

async function loadForEdit(path: string): Promise<Record<string, unknown>> {
  const text = await readIfExists(path);
  return text === undefined ? {} : loadDocument(path, text);
}

function dump(doc: Record<string, unknown>): string {
  return yaml.dump(doc, { lineWidth: -1, noRefs: true });
}

/**
 * Adds or replaces a repository in the registry file, for `petrel repo add` in single-machine mode. Without
 * `secrets` the entry keeps the secrets it had. Validates first; the file is replaced atomically with mode
 * 0600 because it holds secrets. Comments in the file are not preserved.
 */
export async function writeRepo(path: string, key: RepoKey, config: z.input<typeof RepoConfig>, secrets?: RepoSecrets): Promise<void> {
  if (!isRepoKey(key)) throw invalid(path, `repos.${JSON.stringify(key)}: key must be <host>/<owner>/<name>`, "entry_invalid");
  const checked = RepoConfig.safeParse(config);
  if (!checked.success) throw invalid(path, `repos.${JSON.stringify(key)}: ${describeIssues(checked.error)}`, "entry_invalid");
  const checkedSecrets = RepoWithSecrets.safeParse({ secrets });
  if (!checkedSecrets.success)
    throw invalid(path, `repos.${JSON.stringify(key)}: ${describeIssues(checkedSecrets.error)}`, "entry_invalid");
  const doc = await loadForEdit(path);
  const repos = { ...((doc.repos ?? {}) as Record<string, unknown>) };
  const previous = repos[key] as { secrets?: unknown } | undefined;
  const keptSecrets = secrets ?? previous?.secrets;
  repos[key] = keptSecrets === undefined ? { ...config } : { ...config, secrets: keptSecrets };
  await writeAtomically(path, dump({ ...doc, repos }));
}

/** Removes a repository from the registry file; false when it was not there. */
export async function removeRepo(path: string, key: RepoKey): Promise<boolean> {
  const doc = await loadForEdit(path);
  const repos = { ...((doc.repos ?? {}) as Record<string, unknown>) };
  if (!(key in repos)) return false;
  delete repos[key];
  await writeAtomically(path, dump({ ...doc, repos }));
  return true;
}
