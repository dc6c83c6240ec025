import { setMaxListeners } from "node:events";
import yaml from "js-yaml";
import type { Logger } from "pino";
import type { z } from "zod";
import { AppError, errorMessage, UpstreamError } from "../errors.js";
import { entryFromAlbatros, repoKeyOfAlbatros } from "../registry/albatros.js";
import type { Registry, RegistryHealth, RepoEntry, RepoKey } from "../registry/schema.js";
import {
  AlbatrosEntry,
  buildersOf,
  describeIssues,
  flavorsOf,
  isRepoKey,
  RepoConfig,
  RepoSecrets,
  splitSecrets,
} from "../registry/schema.js";
import type { ConsulClient, KvEntry, WatchOptions } from "./client.js";

type Kind = "repos" | "secrets";
/** What the registry watches: petrel's two prefixes, and Albatros's when PETREL_ALBATROS_PREFIX is set. */
type Watched = Kind | "albatros";

export interface ConsulRegistryOptions {
  consul: ConsulClient;
  /** PETREL_CONSUL_PREFIX; default `petrel`. */
  prefix?: string;
  /** PETREL_ALBATROS_PREFIX: where Albatros entries live (SPEC §12); undefined or empty reads none. */
  albatrosPrefix?: string;
  /** Builder job of the `default` flavor for entries that name no flavors. */
  defaultBuilder: string;
  log: Logger;
  /** Called when the registry starts serving a stale view (Consul unreachable) and when it is current again. */
  onStale?: (health: RegistryHealth) => void;
  /** How long after creation lookups wait for the first load before answering 503 (default 10 s). */
  firstLoadTimeoutMs?: number;
  /** Blocking-query settings of the two watches (default wait 1m, so a silently dead connection is noticed). */
  watch?: Pick<WatchOptions, "wait" | "minIntervalMs" | "burst" | "backoff">;
  now?: () => number;
}

/** The Consul key of a repository's config or secrets: `<prefix>/<kind>/<host>/<owner>/<name>`. */
export function repoKeyPath(prefix: string, kind: Kind, key: RepoKey): string {
  if (!isRepoKey(key)) throw new AppError("bad_request", `${JSON.stringify(key)} is not <host>/<owner>/<name>`);
  return `${kindPrefix(prefix, kind)}${key}`;
}

function kindPrefix(prefix: string, kind: Kind): string {
  const base = prefix.replace(/^\/+|\/+$/g, "");
  return base === "" ? `${kind}/` : `${base}/${kind}/`;
}

type Parsed<T> = { ok: true; value: T } | { ok: false; problem: string };

/** Parses a stored value as JSON, else YAML. Problems never quote the text: it may hold secrets. */
export function parseStoredValue(text: string): Parsed<unknown> {
  if (text.trim() === "") return { ok: false, problem: "empty value" };
  try {
    return { ok: true, value: JSON.parse(text) as unknown };
  } catch {
    // Not JSON; YAML is accepted too (petrel's registry format, README "Registering a repository").
  }
  try {
    return { ok: true, value: yaml.load(text) };
  } catch (err) {
    return { ok: false, problem: `neither JSON nor YAML: ${yamlProblem(err)}` };
  }
}

/** `line N: reason` of a js-yaml error, without the source excerpt its message carries. */
export function yamlProblem(err: unknown): string {
  if (err instanceof yaml.YAMLException) {
    const line = err.mark === undefined ? "" : `line ${err.mark.line + 1}, column ${err.mark.column + 1}: `;
    return `${line}${err.reason}`;
  }
  return "unreadable";
}

function validate<T extends z.ZodType>(schema: T, text: string): Parsed<z.output<T>> {
  const raw = parseStoredValue(text);
  if (!raw.ok) return raw;
  const result = schema.safeParse(raw.value);
  return result.success ? { ok: true, value: result.data } : { ok: false, problem: describeIssues(result.error) };
}

interface Cached {
  modifyIndex: bigint;
  parsed: Parsed<RepoConfig> | Parsed<RepoSecrets> | Parsed<AlbatrosValue>;
}

interface AlbatrosValue {
  key: RepoKey;
  value: AlbatrosEntry;
}

interface WatchState {
  loaded: boolean;
  /** ms timestamp of the last answer from Consul. */
  confirmedAt: number;
  error?: string;
}

/**
 * The repository registry of cluster mode: `<prefix>/repos/` and `<prefix>/secrets/` kept in memory by two
 * recursive blocking-query watches, so a webhook lookup costs no Consul request. When Consul goes away the
 * last good view keeps serving and `health()` says how stale it is.
 */
export function createConsulRegistry(opts: ConsulRegistryOptions): Registry {
  const prefix = opts.prefix ?? "petrel";
  const now = opts.now ?? Date.now;
  const createdAt = now();
  const deadline = createdAt + (opts.firstLoadTimeoutMs ?? 10_000);
  const log = opts.log.child({ component: "registry", source: "consul" });
  const controller = new AbortController();
  // Every lookup made before the first load waits on this signal: a burst of webhooks at start-up is normal.
  setMaxListeners(0, controller.signal);
  const albatrosPrefix = (opts.albatrosPrefix ?? "").replace(/^\/+|\/+$/g, "");
  const KINDS: readonly Watched[] = albatrosPrefix === "" ? ["repos", "secrets"] : ["repos", "secrets", "albatros"];
  const cache: Record<Watched, Map<string, Cached>> = { repos: new Map(), secrets: new Map(), albatros: new Map() };
  const state: Record<Watched, WatchState> = {
    repos: { loaded: false, confirmedAt: createdAt },
    secrets: { loaded: false, confirmedAt: createdAt },
    albatros: { loaded: false, confirmedAt: createdAt },
  };
  // Each (used key, ignored key) pair that names one repository is told once, not on every change.
  const shadowed = new Set<string>();
  let entries = new Map<RepoKey, RepoEntry>();
  let stale = false;
  let closed = false;
  let markReady: () => void = () => undefined;
  const ready = new Promise<void>((resolve) => {
    markReady = resolve;
  });
  let isReady = false;

  function parseEntry(kind: Kind, entry: KvEntry): Cached["parsed"] {
    const text = entry.value?.toString("utf8") ?? "";
    return kind === "repos" ? validate(RepoConfig, text) : validate(RepoSecrets, text);
  }

  function parseAlbatros(encoded: string, entry: KvEntry): Cached["parsed"] {
    const key = repoKeyOfAlbatros(encoded);
    if (key === undefined) return { ok: false, problem: "key is not base64 of a repository URL" };
    const checked = validate(AlbatrosEntry, entry.value?.toString("utf8") ?? "");
    return checked.ok ? { ok: true, value: { key, value: checked.value } } : checked;
  }

  function watchedPrefix(kind: Watched): string {
    return kind === "albatros" ? `${albatrosPrefix}/` : kindPrefix(prefix, kind);
  }

  function onChange(kind: Watched, kvEntries: KvEntry[] | null): void {
    const base = watchedPrefix(kind);
    const next = new Map<string, Cached>();
    for (const entry of kvEntries ?? []) {
      const repoKey = entry.key.slice(base.length);
      // Standard base64 has '/' in its alphabet, so an Albatros key may look like a folder and still hold an entry.
      const folder = entry.key.endsWith("/") && (kind !== "albatros" || !entry.value?.length);
      if (repoKey === "" || folder) continue;
      const old = cache[kind].get(entry.key);
      if (old !== undefined && old.modifyIndex === entry.modifyIndex) {
        next.set(entry.key, old);
        continue;
      }
      let parsed: Cached["parsed"];
      if (kind === "albatros") {
        parsed = parseAlbatros(repoKey, entry);
      } else if (!isRepoKey(repoKey)) {
        parsed = { ok: false, problem: "key is not <host>/<owner>/<name> with segments of [a-z0-9._-]" };
      } else {
        parsed = parseEntry(kind, entry);
      }
      if (!parsed.ok) {
        log.warn({ key: entry.key, problem: parsed.problem }, "invalid registry value; that repository is not registered");
      } else if (old !== undefined && !old.parsed.ok) {
        log.info({ key: entry.key }, "registry value valid again");
      }
      next.set(entry.key, { modifyIndex: entry.modifyIndex, parsed });
    }
    cache[kind] = next;
    rebuild();
    state[kind].loaded = true;
    if (!isReady && KINDS.every((k) => state[k].loaded)) {
      isReady = true;
      log.info({ repositories: entries.size }, "registry loaded from consul");
      markReady();
    }
  }

  function rebuild(): void {
    const out = new Map<RepoKey, RepoEntry>();
    const secretsBase = kindPrefix(prefix, "secrets");
    for (const [consulKey, cached] of cache.repos) {
      if (!cached.parsed.ok) continue;
      const key = consulKey.slice(kindPrefix(prefix, "repos").length);
      const secrets = cache.secrets.get(`${secretsBase}${key}`);
      // A repository whose secrets do not validate is not registered: building it without them would be wrong.
      if (secrets !== undefined && !secrets.parsed.ok) continue;
      const config = cached.parsed.value as RepoConfig;
      const split = splitSecrets(secrets?.parsed.ok ? (secrets.parsed.value as RepoSecrets) : {});
      const entry: RepoEntry = {
        key,
        config: { ...config, flavors: flavorsOf(config, opts.defaultBuilder) },
        secrets: split.secrets,
      };
      if (split.deployKey !== undefined) entry.deployKey = split.deployKey;
      if (split.inject !== undefined) entry.inject = split.inject;
      out.set(key, entry);
    }
    addAlbatros(out);
    entries = out;
  }

  /** Albatros entries of repositories petrel has no entry for; a petrel entry wins, with one warning. */
  function addAlbatros(out: Map<RepoKey, RepoEntry>): void {
    const fromAlbatros = new Map<RepoKey, string>();
    for (const consulKey of [...cache.albatros.keys()].sort()) {
      const parsed = cache.albatros.get(consulKey)?.parsed;
      if (parsed === undefined || !parsed.ok) continue;
      const { key, value } = parsed.value as AlbatrosValue;
      if (out.has(key)) {
        const used = fromAlbatros.get(key) ?? repoKeyPath(prefix, "repos", key);
        const pair = JSON.stringify([used, consulKey]);
        if (!shadowed.has(pair)) {
          shadowed.add(pair);
          log.warn({ repo: key, used, ignored: consulKey }, "two registry entries name one repository; the first one is used");
        }
        continue;
      }
      out.set(key, entryFromAlbatros(consulKey, key, value, opts.defaultBuilder));
      fromAlbatros.set(key, consulKey);
    }
  }

  function health(): RegistryHealth {
    const failing = KINDS.filter((k) => state[k].error !== undefined || !state[k].loaded);
    const h: RegistryHealth = {
      ok: failing.length === 0,
      source: "consul",
      stalenessSeconds: failing.length === 0 ? 0 : Math.floor((now() - Math.min(...failing.map((k) => state[k].confirmedAt))) / 1000),
      repositories: entries.size,
    };
    const lastError = KINDS.map((k) => state[k].error).find((e) => e !== undefined);
    if (lastError !== undefined) h.lastError = lastError;
    return h;
  }

  function onError(kind: Watched, err: unknown): void {
    state[kind].error = errorMessage(err);
    if (stale) return;
    stale = true;
    const h = health();
    // Once per outage, not per request or retry.
    if (isReady) {
      log.warn(
        { err: h.lastError, stalenessSeconds: h.stalenessSeconds, repositories: h.repositories },
        "consul unreachable; serving the last known registry",
      );
    } else {
      log.warn({ err: h.lastError }, "consul not answering; webhooks wait for the first registry load");
    }
    opts.onStale?.(h);
  }

  function onSuccess(kind: Watched): void {
    state[kind].confirmedAt = now();
    delete state[kind].error;
    if (!stale || KINDS.some((k) => state[k].error !== undefined)) return;
    stale = false;
    const h = health();
    log.info({ repositories: h.repositories }, "consul reachable again; registry current");
    opts.onStale?.(h);
  }

  const watches = KINDS.map((kind) =>
    opts.consul.watch(watchedPrefix(kind), {
      recurse: true,
      wait: opts.watch?.wait ?? "1m",
      signal: controller.signal,
      ...(opts.watch?.minIntervalMs === undefined ? {} : { minIntervalMs: opts.watch.minIntervalMs }),
      ...(opts.watch?.burst === undefined ? {} : { burst: opts.watch.burst }),
      ...(opts.watch?.backoff === undefined ? {} : { backoff: opts.watch.backoff }),
      onChange: (kv) => onChange(kind, kv),
      onError: (err) => onError(kind, err),
      onSuccess: () => onSuccess(kind),
    }),
  );

  async function whenReady(): Promise<void> {
    if (isReady) return;
    if (closed) throw new AppError("consul_unavailable", "registry closed");
    const wait = deadline - now();
    const failure = (): UpstreamError => {
      const err = health().lastError;
      return new UpstreamError(
        "consul",
        0,
        `no registry load within ${Math.round((deadline - createdAt) / 1000)} s${err ? `; last error: ${err}` : ""}`,
        {
          action: "registry",
        },
      );
    };
    if (wait <= 0) throw failure();
    let timer: NodeJS.Timeout | undefined;
    let onAbort: () => void = () => undefined;
    const expired = new Promise<"expired">((resolve) => {
      timer = setTimeout(() => resolve("expired"), wait);
      onAbort = () => resolve("expired");
      controller.signal.addEventListener("abort", onAbort, { once: true });
    });
    const outcome = await Promise.race([ready.then(() => "ready" as const), expired]);
    clearTimeout(timer);
    controller.signal.removeEventListener("abort", onAbort);
    if (outcome === "ready") return;
    if (closed) throw new AppError("consul_unavailable", "registry closed");
    throw failure();
  }

  return {
    async get(key) {
      await whenReady();
      return entries.get(key);
    },
    async list() {
      await whenReady();
      return [...entries.values()].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    },
    builders: () => buildersOf(entries.values(), opts.defaultBuilder),
    health,
    async close() {
      closed = true;
      controller.abort();
      await Promise.all(watches);
    },
  };
}

/**
 * Writes a repository's config (and its secrets, when given) for the admin CLI. Secrets go first, so a new
 * repository never exists for a moment without them. Values are validated before anything is written.
 */
export async function putRepo(
  consul: ConsulClient,
  prefix: string,
  key: RepoKey,
  config: z.input<typeof RepoConfig>,
  secrets?: RepoSecrets,
  signal?: AbortSignal,
): Promise<void> {
  const checked = RepoConfig.safeParse(config);
  if (!checked.success) {
    throw new AppError("entry_invalid", `${repoKeyPath(prefix, "repos", key)}: ${describeIssues(checked.error)}`);
  }
  const s = signal === undefined ? {} : { signal };
  if (secrets !== undefined) {
    const checkedSecrets = RepoSecrets.safeParse(secrets);
    if (!checkedSecrets.success) {
      throw new AppError("entry_invalid", `${repoKeyPath(prefix, "secrets", key)}: ${describeIssues(checkedSecrets.error)}`);
    }
    await consul.put(repoKeyPath(prefix, "secrets", key), JSON.stringify(secrets, null, 2), s);
  }
  await consul.put(repoKeyPath(prefix, "repos", key), JSON.stringify(config, null, 2), s);
}

/** Removes a repository's config, then its secrets; false when neither existed. */
export async function deleteRepo(consul: ConsulClient, prefix: string, key: RepoKey, signal?: AbortSignal): Promise<boolean> {
  const s = signal === undefined ? {} : { signal };
  const repoPath = repoKeyPath(prefix, "repos", key);
  const secretsPath = repoKeyPath(prefix, "secrets", key);
  const [config, secrets] = await Promise.all([consul.get(repoPath, s), consul.get(secretsPath, s)]);
  if (config.entries === null && secrets.entries === null) return false;
  await consul.delete(repoPath, s);
  await consul.delete(secretsPath, s);
  return true;
}
