import { readFile } from "node:fs/promises";
import yaml from "js-yaml";
import { Agent } from "undici";
import type { z } from "zod";
import type { Config } from "../config.js";
import { readConfig } from "../config.js";
import type { ConsulClient } from "../consul/client.js";
import { consulAgentOptions, createConsulClient } from "../consul/client.js";
import { deleteRepo, parseStoredValue, putRepo, repoKeyPath } from "../consul/registry.js";
import { AppError, UpstreamError } from "../errors.js";
import { removeRepo, writeRepo } from "../registry/file.js";
import type { RepoKey } from "../registry/schema.js";
import { describeIssues, isRepoKey, RepoConfig, RepoSecrets } from "../registry/schema.js";
import type { Env, Progress } from "./ops.js";
import { CliError, codeForUpstream, EXIT } from "./ops.js";

/** One repository as stored, before defaults: what `repo show` prints (masked) and `replay` signs with. */
export interface StoredRepo {
  key: RepoKey;
  /** The stored config object, whether or not it validates. */
  raw: Record<string, unknown>;
  /** The validated config, when it validates. */
  config?: RepoConfig;
  /** Why the stored config does not validate. */
  problem?: string;
  /** The repository's secrets (deploy_key included); undefined when there are none. */
  secrets?: Record<string, string>;
  /** Why the secrets could not be read (a Consul token without key:read on the secrets prefix). */
  secretsProblem?: string;
}

/** Where `petrel repo` reads and writes: Consul KV in cluster mode, the YAML file in single-machine mode. */
export interface RepoStore {
  readonly kind: "consul" | "file";
  /** For messages: `Consul at http://127.0.0.1:8500 (prefix petrel)` or `file ./petrel.yaml`. */
  readonly where: string;
  /** Where one repository's config sits: the Consul key or `<file> repos.<key>`. */
  location(key: RepoKey): string;
  get(key: RepoKey): Promise<StoredRepo | undefined>;
  list(): Promise<StoredRepo[]>;
  /** Writes the config; secrets only when given (otherwise the stored ones stay). */
  put(key: RepoKey, config: z.input<typeof RepoConfig>, secrets?: RepoSecrets): Promise<void>;
  remove(key: RepoKey): Promise<boolean>;
  close(): Promise<void>;
}

/** petrel's configuration for a CLI command; a ConfigError is a `config_invalid` refusal like any other. */
/** Runs one Consul call, saying what it does; a failure becomes a CLI error naming the address. */
export type ConsulStep = <T>(what: string, fn: () => Promise<T>) => Promise<T>;

export function consulStep(addr: string, progress: Progress): ConsulStep {
  return async (what, fn) => {
    progress(`consul ${addr}: ${what}`);
    try {
      return await fn();
    } catch (err) {
      if (err instanceof UpstreamError) throw new CliError(codeForUpstream(err), `Consul at ${addr}: ${err.message}`, { cause: err });
      throw err;
    }
  };
}

export function cliConfig(env: Env): Config {
  return readConfig(env);
}

/** The store of the mode petrel runs in: Consul when NOMAD_ADDR is set, else PETREL_CONFIG. */
export function openRepoStore(config: Config, progress: Progress): RepoStore {
  return config.mode === "cluster" ? consulStore(config, progress) : fileStore(config.configPath, progress);
}

function validate(raw: Record<string, unknown>): { config?: RepoConfig; problem?: string } {
  const checked = RepoConfig.safeParse(raw);
  return checked.success ? { config: checked.data } : { problem: describeIssues(checked.error) };
}

function asObject(value: unknown): Record<string, unknown> | undefined {
  return typeof value === "object" && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
}

function stringMap(value: unknown): Record<string, string> | undefined {
  const obj = asObject(value);
  if (obj === undefined) return undefined;
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(obj)) out[k] = typeof v === "string" ? v : JSON.stringify(v);
  return out;
}

function consulStore(config: Config, progress: Progress): RepoStore {
  const agent = new Agent(consulAgentOptions(config.consul.tls));
  const addr = config.consul.addr;
  const prefix = config.consulPrefix;
  const consul: ConsulClient = createConsulClient({
    addr,
    dispatcher: agent,
    retry: { retries: 2, minTimeoutMs: 200 },
    timeoutMs: 15_000,
    ...(config.consul.token === undefined ? {} : { token: config.consul.token }),
  });
  const where = `Consul at ${addr} (prefix ${prefix})`;

  // Every failure names the address; Consul's own message already names the key and the status.
  const step = consulStep(addr, progress);

  const value = async (key: string): Promise<string | undefined> => {
    const res = await step(`GET ${key}`, () => consul.get(key));
    const entry = res.entries?.[0];
    return entry?.value == null ? undefined : entry.value.toString("utf8");
  };

  const parse = (key: RepoKey, text: string): StoredRepo => {
    const parsed = parseStoredValue(text);
    if (!parsed.ok) return { key, raw: {}, problem: parsed.problem };
    const raw = asObject(parsed.value);
    if (raw === undefined) return { key, raw: {}, problem: "not a JSON object" };
    return { key, raw, ...validate(raw) };
  };

  const base = (kind: "repos" | "secrets") => `${prefix.replace(/^\/+|\/+$/g, "")}/${kind}/`.replace(/^\//, "");

  return {
    kind: "consul",
    where,
    location: (key) => `Consul key ${repoKeyPath(prefix, "repos", key)} at ${addr}`,
    async get(key) {
      const text = await value(repoKeyPath(prefix, "repos", key));
      if (text === undefined) return undefined;
      const repo = parse(key, text);
      try {
        const secrets = await value(repoKeyPath(prefix, "secrets", key));
        if (secrets !== undefined) {
          const parsed = parseStoredValue(secrets);
          const map = parsed.ok ? stringMap(parsed.value) : undefined;
          if (map === undefined) repo.secretsProblem = parsed.ok ? "not a JSON object" : parsed.problem;
          else repo.secrets = map;
        }
      } catch (err) {
        // The config alone is still worth showing; a token may read configs but not secrets on purpose.
        if (!(err instanceof CliError) || err.exit !== EXIT.unauthorized) throw err;
        repo.secretsProblem = err.message;
      }
      return repo;
    },
    async list() {
      const repos = await step(`GET ${base("repos")}?recurse`, () => consul.get(base("repos"), { recurse: true }));
      const secrets = await step(`GET ${base("secrets")}?recurse`, () => consul.get(base("secrets"), { recurse: true })).catch(
        (err: unknown) => {
          // A token may list configs without reading secrets; the list then shows no secret names.
          if (err instanceof CliError && err.exit === EXIT.unauthorized) return { entries: null };
          throw err;
        },
      );
      const secretsByKey = new Map<string, Record<string, string>>();
      for (const e of secrets.entries ?? []) {
        const parsed = e.value === null ? undefined : parseStoredValue(e.value.toString("utf8"));
        const map = parsed?.ok ? stringMap(parsed.value) : undefined;
        if (map !== undefined) secretsByKey.set(e.key.slice(base("secrets").length), map);
      }
      const out: StoredRepo[] = [];
      for (const e of repos.entries ?? []) {
        const key = e.key.slice(base("repos").length);
        // Folders (`.../acme/`) and keys of another shape are not repositories.
        if (e.value === null || !isRepoKey(key)) continue;
        const repo = parse(key, e.value.toString("utf8"));
        const s = secretsByKey.get(key);
        if (s !== undefined) repo.secrets = s;
        out.push(repo);
      }
      return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    },
    async put(key, cfg, secrets) {
      if (secrets !== undefined) progress(`consul ${addr}: PUT ${repoKeyPath(prefix, "secrets", key)}`);
      await step(`PUT ${repoKeyPath(prefix, "repos", key)}`, () => putRepo(consul, prefix, key, cfg, secrets));
    },
    async remove(key) {
      return step(`DELETE ${repoKeyPath(prefix, "repos", key)} and ${repoKeyPath(prefix, "secrets", key)}`, () =>
        deleteRepo(consul, prefix, key),
      );
    },
    close: () => agent.close(),
  };
}

function fileStore(path: string, progress: Progress): RepoStore {
  const load = async (): Promise<Record<string, unknown>> => {
    progress(`reading ${path}`);
    let text: string;
    try {
      text = await readFile(path, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return {};
      throw new CliError("bad_request", `cannot read ${path}: ${(err as Error).message}`);
    }
    let doc: unknown;
    try {
      doc = yaml.load(text, { filename: path });
    } catch (err) {
      // The reason and the line, never js-yaml's excerpt: the file holds secrets.
      const where = err instanceof yaml.YAMLException && err.mark !== undefined ? `line ${err.mark.line + 1}: ` : "";
      throw new CliError(
        "bad_request",
        `${path} is not valid YAML: ${where}${err instanceof yaml.YAMLException ? err.reason : "unreadable"}`,
      );
    }
    const repos = asObject(asObject(doc)?.repos);
    return repos ?? {};
  };

  const entry = (key: string, value: unknown): StoredRepo => {
    const obj = asObject(value);
    if (obj === undefined) return { key, raw: {}, problem: "must be a mapping with at least `hook:`" };
    const { secrets, ...raw } = obj;
    const repo: StoredRepo = { key, raw, ...validate(raw) };
    if (secrets !== undefined && secrets !== null) {
      const map = stringMap(secrets);
      if (map === undefined || !RepoSecrets.safeParse(secrets).success) repo.secretsProblem = "`secrets:` must map names to strings";
      if (map !== undefined) repo.secrets = map;
    }
    return repo;
  };

  const write = async <T>(fn: () => Promise<T>): Promise<T> => {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof AppError) throw new CliError("bad_request", err.message, { cause: err });
      throw new CliError("bad_request", `cannot write ${path}: ${(err as Error).message}`, { cause: err });
    }
  };

  return {
    kind: "file",
    where: `file ${path}`,
    location: (key) => `${path}, repos.${key}`,
    async get(key) {
      const repos = await load();
      return key in repos ? entry(key, repos[key]) : undefined;
    },
    async list() {
      const repos = await load();
      return Object.keys(repos)
        .sort()
        .map((key) => entry(key, repos[key]));
    },
    async put(key, cfg, secrets) {
      progress(`writing ${path} (mode 0600)`);
      await write(() => writeRepo(path, key, cfg, secrets));
    },
    async remove(key) {
      progress(`writing ${path}`);
      return write(() => removeRepo(path, key));
    },
    close: async () => undefined,
  };
}
