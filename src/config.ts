import { readFileSync, statSync } from "node:fs";
import { resolve } from "node:path";
import { z } from "zod";
import { AppError } from "./errors.js";
import type { TlsOptions } from "./http/tls.js";

export interface NomadConfig {
  addr: string;
  token?: string;
  region?: string;
  namespace?: string;
  tls: TlsOptions;
}

export interface ConsulConfig {
  addr: string;
  token?: string;
  tls: TlsOptions;
}

/** Everything petrel reads from its environment, validated. */
export interface Config {
  mode: "cluster" | "local";
  listen: { host: string; port: number };
  publicUrl: string;
  consulPrefix: string;
  /** PETREL_ALBATROS_PREFIX (default `albatros`): where Albatros entries are read; undefined when set empty. */
  albatrosPrefix?: string;
  builderJob: string;
  adminToken?: string;
  configPath: string;
  dataDir: string;
  logLevel: "fatal" | "error" | "warn" | "info" | "debug" | "trace" | "silent";
  localConcurrency: number;
  /**
   * Finished builds kept per repository in the archive (PETREL_ARCHIVE_KEEP), none older than
   * archiveMaxAgeDays; single-machine mode's runner keeps its finished builds by the same two numbers.
   */
  archiveKeep: number;
  archiveMaxAgeDays: number;
  /** Retired variables still honoured, for one warning at start. */
  deprecated: string[];
  /** Seconds a client has to send a request's headers and body (PETREL_REQUEST_TIMEOUT). */
  requestTimeoutSeconds: number;
  /** Open connections accepted at once; more are dropped (PETREL_MAX_CONNECTIONS). */
  maxConnections: number;
  /**
   * Where finished builds are archived (PETREL_ARCHIVE_DIR). Single-machine mode defaults to
   * `<dataDir>/archive`; cluster mode has no default, and unset means no archive.
   */
  archiveDir?: string;
  nomad?: NomadConfig;
  consul: ConsulConfig;
  /** The leader lock of cluster mode (SPEC §10): Nomad variable path, TTL and lock-delay. */
  leader: LeaderConfig;
}

export interface LeaderConfig {
  /** PETREL_LEADER_PATH, default `petrel/leader`. */
  path: string;
  /** PETREL_LEADER_TTL (Go duration, default 15s; Nomad accepts 10s to 24h). */
  ttlMs: number;
  /** PETREL_LEADER_LOCK_DELAY (Go duration, default 15s, Nomad's own default). */
  lockDelayMs: number;
}

/** A bad or missing setting: the message names the variable and the fix, on one line. */
export class ConfigError extends AppError {
  readonly variable: string;
  constructor(variable: string, message: string) {
    super("config_invalid", `${variable}: ${message}`);
    this.name = "ConfigError";
    this.variable = variable;
  }
}

type Env = Readonly<Record<string, string | undefined>>;

const GO_TRUE = new Set(["1", "t", "T", "TRUE", "true", "True"]);
const GO_FALSE = new Set(["0", "f", "F", "FALSE", "false", "False"]);

/** Booleans the way HashiCorp's Go clients read them (strconv.ParseBool). */
function bool(env: Env, name: string, fallback: boolean): boolean {
  const raw = value(env, name);
  if (raw === undefined) return fallback;
  if (GO_TRUE.has(raw)) return true;
  if (GO_FALSE.has(raw)) return false;
  throw new ConfigError(name, `expected true or false, got ${JSON.stringify(raw)}`);
}

/** A set, non-blank value, trimmed; blank counts as unset, as in HashiCorp's clients. */
function value(env: Env, name: string): string | undefined {
  const raw = env[name]?.trim();
  return raw ? raw : undefined;
}

function readable(env: Env, name: string): string | undefined {
  const path = value(env, name);
  if (path === undefined) return undefined;
  try {
    readFileSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? "unreadable";
    // A directory is what *_CAPATH names, so only regular-file variables get here.
    throw new ConfigError(name, `cannot read ${path} (${code}); point it at a readable PEM file or unset it`);
  }
  return path;
}

function tokenFrom(env: Env, fileVar: string, tokenVar: string): string | undefined {
  const file = value(env, fileVar);
  if (file !== undefined) {
    let text: string;
    try {
      text = readFileSync(file, "utf8");
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? "unreadable";
      throw new ConfigError(fileVar, `cannot read ${file} (${code}); point it at a file holding the token or unset it`);
    }
    const token = text.trim();
    if (!token) throw new ConfigError(fileVar, `${file} is empty; write the token into it or unset it`);
    return token;
  }
  return value(env, tokenVar);
}

function tls(env: Env, prefix: "NOMAD" | "CONSUL", verify: boolean): TlsOptions {
  const cert = readable(env, `${prefix}_CLIENT_CERT`);
  const key = readable(env, `${prefix}_CLIENT_KEY`);
  if ((cert === undefined) !== (key === undefined)) {
    const missing = cert === undefined ? `${prefix}_CLIENT_CERT` : `${prefix}_CLIENT_KEY`;
    throw new ConfigError(missing, `must be set together with ${cert === undefined ? `${prefix}_CLIENT_KEY` : `${prefix}_CLIENT_CERT`}`);
  }
  const out: TlsOptions = { verify };
  const cacert = readable(env, `${prefix}_CACERT`);
  const capath = value(env, `${prefix}_CAPATH`);
  const serverName = value(env, `${prefix}_TLS_SERVER_NAME`);
  if (cacert !== undefined) out.cacert = cacert;
  if (capath !== undefined) out.capath = capath;
  if (cert !== undefined) out.clientCert = cert;
  if (key !== undefined) out.clientKey = key;
  if (serverName !== undefined) out.serverName = serverName.replace(/:\d+$/, "");
  return out;
}

function url(name: string, raw: string, defaultScheme: "http" | "https"): string {
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(raw) ? raw : `${defaultScheme}://${raw}`;
  let parsed: URL;
  try {
    parsed = new URL(withScheme);
  } catch {
    throw new ConfigError(name, `${JSON.stringify(raw)} is not an address; use host:port or http(s)://host:port`);
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
    throw new ConfigError(name, `scheme ${parsed.protocol} is not supported; use http:// or https://`);
  }
  return withScheme.replace(/\/+$/, "");
}

function listen(raw: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(raw);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) {
    throw new ConfigError("PETREL_LISTEN", `${JSON.stringify(raw)} is not host:port (for example 127.0.0.1:8080)`);
  }
  return { host: m[1] ?? (m[2] || "0.0.0.0"), port };
}

function wholeNumber(env: Env, name: string, fallback: number, min: number, max: number): number {
  const raw = value(env, name);
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!/^\d+$/.test(raw) || n < min || n > max) {
    throw new ConfigError(name, `expected a whole number from ${min} to ${max}, got ${JSON.stringify(raw)}`);
  }
  return n;
}

/** PETREL_ARCHIVE_DIR: a directory (created on first write) or a path that does not exist yet. */
function archive(env: Env, cwd: string, fallback: string | undefined): string | undefined {
  const raw = value(env, "PETREL_ARCHIVE_DIR");
  if (raw === undefined) return fallback;
  if (raw.includes("\0")) throw new ConfigError("PETREL_ARCHIVE_DIR", "contains a NUL byte; give a directory path");
  const dir = resolve(cwd, raw);
  let isDir = true;
  try {
    isDir = statSync(dir).isDirectory();
  } catch {
    // Not there yet: the store creates it, and reports (without stopping petrel) when it cannot.
  }
  if (!isDir) throw new ConfigError("PETREL_ARCHIVE_DIR", `${dir} is not a directory; point it at a directory or a path to create`);
  return dir;
}

const DURATION_UNITS_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** A Go duration of whole units (`15s`, `1m30s`, `500ms`) in milliseconds, between min and max. */
function duration(env: Env, name: string, fallbackMs: number, minMs: number, maxMs: number): number {
  const raw = value(env, name);
  if (raw === undefined) return fallbackMs;
  const re = /(\d+)(ms|s|m|h)/gy;
  let total = 0;
  let end = 0;
  for (let m = re.exec(raw); m; m = re.exec(raw)) {
    total += Number(m[1]) * (DURATION_UNITS_MS[m[2] ?? ""] ?? 0);
    end = re.lastIndex;
  }
  if (end !== raw.length || end === 0 || total < minMs || total > maxMs) {
    throw new ConfigError(
      name,
      `expected a duration such as 15s or 1m from ${minMs / 1000}s to ${maxMs / 1000}s, got ${JSON.stringify(raw)}`,
    );
  }
  return total;
}

/** PETREL_LEADER_*: the variable petrel locks to elect a leader (https://developer.hashicorp.com/nomad/api-docs/variables/locks). */
function leader(env: Env): LeaderConfig {
  const path = value(env, "PETREL_LEADER_PATH") ?? "petrel/leader";
  // Nomad's variable paths (nomad/structs/variables.go `validVariablePath`); `nomad/` is reserved for Nomad's own.
  if (!/^[A-Za-z0-9_~-]+(\/[A-Za-z0-9_~-]+)*$/.test(path) || path.length > 128 || path === "nomad" || path.startsWith("nomad/")) {
    throw new ConfigError(
      "PETREL_LEADER_PATH",
      `${JSON.stringify(path)} is not a Nomad variable path: segments of letters, digits, '-', '_' or '~' joined by '/', outside nomad/`,
    );
  }
  // Below Nomad's 10 s minimum only for tests against the fake; a real agent refuses it, and petrel says so at start.
  const ttlMs = duration(env, "PETREL_LEADER_TTL", 15_000, 1000, 86_400_000);
  const lockDelayMs = duration(env, "PETREL_LEADER_LOCK_DELAY", 15_000, 0, 86_400_000);
  return { path, ttlMs, lockDelayMs };
}

const LOG_LEVEL = z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]);
const JOB_ID = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

/**
 * Reads petrel's configuration from an environment record; pure apart from reading named files. Relative
 * PETREL_CONFIG and PETREL_DATA_DIR are resolved against `cwd` (the working directory at start), because the
 * executor runs elsewhere and refuses a relative cache directory.
 */
export function readConfig(env: Env, cwd: string = process.cwd()): Config {
  const listenRaw = value(env, "PETREL_LISTEN") ?? "127.0.0.1:8080";
  const listenAt = listen(listenRaw);

  const level = LOG_LEVEL.safeParse(value(env, "LOG_LEVEL") ?? "info");
  if (!level.success) {
    throw new ConfigError("LOG_LEVEL", `expected one of ${LOG_LEVEL.options.join(", ")}, got ${JSON.stringify(env.LOG_LEVEL)}`);
  }

  const publicUrl = url("PETREL_URL", value(env, "PETREL_URL") ?? `http://${listenRaw}`, "http");

  const prefix = value(env, "PETREL_CONSUL_PREFIX") ?? "petrel";
  if (!/^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/.test(prefix)) {
    throw new ConfigError(
      "PETREL_CONSUL_PREFIX",
      `${JSON.stringify(prefix)} must be key segments of letters, digits, '.', '_' or '-' joined by '/'`,
    );
  }
  // Unset means Albatros's own default; set but empty turns reading Albatros entries off.
  const albatrosPrefix = env.PETREL_ALBATROS_PREFIX === undefined ? "albatros" : value(env, "PETREL_ALBATROS_PREFIX");
  if (albatrosPrefix !== undefined && !/^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/.test(albatrosPrefix)) {
    throw new ConfigError(
      "PETREL_ALBATROS_PREFIX",
      `${JSON.stringify(albatrosPrefix)} must be key segments of letters, digits, '.', '_' or '-' joined by '/' (empty turns Albatros entries off)`,
    );
  }
  const nested = (a: string, b: string) => a === b || a.startsWith(`${b}/`);
  if (albatrosPrefix !== undefined && (nested(albatrosPrefix, prefix) || nested(prefix, albatrosPrefix))) {
    throw new ConfigError(
      "PETREL_ALBATROS_PREFIX",
      `${JSON.stringify(albatrosPrefix)} and PETREL_CONSUL_PREFIX (${prefix}) must not contain one another`,
    );
  }
  const builderJob = value(env, "PETREL_BUILDER_JOB") ?? "builder";
  if (!JOB_ID.test(builderJob)) {
    throw new ConfigError("PETREL_BUILDER_JOB", `${JSON.stringify(builderJob)} is not a Nomad job ID`);
  }

  const adminToken = value(env, "PETREL_ADMIN_TOKEN");
  if (adminToken !== undefined && adminToken.length < 16) {
    throw new ConfigError("PETREL_ADMIN_TOKEN", "is shorter than 16 characters; use a long random token (openssl rand -hex 32)");
  }

  const localConcurrency = wholeNumber(env, "PETREL_LOCAL_CONCURRENCY", 1, 1, 256);

  // PETREL_LOCAL_KEEP and PETREL_LOCAL_MAX_AGE_DAYS were single-machine mode's own retention; the archive's
  // settings replaced them, and the old names still work (the new ones win) with a warning at start.
  const deprecated: string[] = [];
  const renamed = (name: string, old: string, fallback: number, max: number): number => {
    if (value(env, name) === undefined && value(env, old) !== undefined) {
      deprecated.push(`${old} (use ${name})`);
      return wholeNumber(env, old, fallback, 1, max);
    }
    return wholeNumber(env, name, fallback, 1, max);
  };
  const archiveKeep = renamed("PETREL_ARCHIVE_KEEP", "PETREL_LOCAL_KEEP", 1000, 10_000_000);
  const archiveMaxAgeDays = renamed("PETREL_ARCHIVE_MAX_AGE_DAYS", "PETREL_LOCAL_MAX_AGE_DAYS", 90, 36_500);

  const requestTimeoutSeconds = wholeNumber(env, "PETREL_REQUEST_TIMEOUT", 10, 1, 3600);
  const maxConnections = wholeNumber(env, "PETREL_MAX_CONNECTIONS", 1024, 1, 1_000_000);

  const consulSsl = bool(env, "CONSUL_HTTP_SSL", false);
  const consul: ConsulConfig = {
    addr: url("CONSUL_HTTP_ADDR", value(env, "CONSUL_HTTP_ADDR") ?? "127.0.0.1:8500", consulSsl ? "https" : "http"),
    tls: tls(env, "CONSUL", bool(env, "CONSUL_HTTP_SSL_VERIFY", true)),
  };
  // CONSUL_HTTP_SSL=true upgrades a plain address, as the official client does; it never downgrades https.
  if (consulSsl) consul.addr = consul.addr.replace(/^http:/, "https:");
  const consulToken = tokenFrom(env, "CONSUL_HTTP_TOKEN_FILE", "CONSUL_HTTP_TOKEN");
  if (consulToken !== undefined) consul.token = consulToken;

  const mode = value(env, "NOMAD_ADDR") ? "cluster" : "local";
  const dataDir = resolve(cwd, value(env, "PETREL_DATA_DIR") ?? ".petrel");
  const archiveDir = archive(env, cwd, mode === "local" ? resolve(dataDir, "archive") : undefined);

  const config: Config = {
    mode,
    listen: listenAt,
    publicUrl,
    consulPrefix: prefix,
    builderJob,
    configPath: resolve(cwd, value(env, "PETREL_CONFIG") ?? "petrel.yaml"),
    dataDir,
    logLevel: level.data,
    localConcurrency,
    archiveKeep,
    archiveMaxAgeDays,
    deprecated,
    requestTimeoutSeconds,
    maxConnections,
    consul,
    leader: leader(env),
  };
  if (adminToken !== undefined) config.adminToken = adminToken;
  if (albatrosPrefix !== undefined) config.albatrosPrefix = albatrosPrefix;
  if (archiveDir !== undefined) config.archiveDir = archiveDir;

  const nomadAddr = value(env, "NOMAD_ADDR");
  if (nomadAddr !== undefined) {
    const nomad: NomadConfig = {
      addr: url("NOMAD_ADDR", nomadAddr, "http"),
      tls: tls(env, "NOMAD", !bool(env, "NOMAD_SKIP_VERIFY", false)),
    };
    const token = value(env, "NOMAD_TOKEN");
    const region = value(env, "NOMAD_REGION");
    const namespace = value(env, "NOMAD_NAMESPACE");
    if (token !== undefined) nomad.token = token;
    if (region !== undefined) nomad.region = region;
    if (namespace !== undefined) nomad.namespace = namespace;
    config.nomad = nomad;
  }
  return config;
}
