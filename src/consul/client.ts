import type { Logger } from "pino";
import type { Agent, Dispatcher } from "undici";
import type { z } from "zod";
import { AppError, errorMessage, UpstreamError } from "../errors.js";
import { type HttpAnswer, headerValue, type Method, request } from "../http/request.js";
import { type TlsOptions, tlsAgentOptions } from "../http/tls.js";
import { sleep } from "../util/abort.js";
import { parseGoDuration } from "../util/go-duration.js";
import type { KvEntry } from "./schema.js";
import { ConsulLeader, parseKvBody, WriteResult } from "./schema.js";
import { createTokenBucket } from "./token-bucket.js";

export type { KvEntry } from "./schema.js";
export { parseGoDuration };

/** Consul caps blocking waits at 10 minutes (api-docs/features/blocking.mdx). */
const MAX_WAIT_MS = 10 * 60_000;
const DEFAULT_WAIT = "5m";
const NETWORK_SLACK_MS = 15_000;

/** What `get` answers: the entries (null when the key or prefix does not exist) and the index to block on. */
export interface KvResult {
  entries: KvEntry[] | null;
  index: bigint;
}

export interface GetOptions {
  recurse?: boolean;
  /** Block until the key's index exceeds this one (a blocking query). */
  index?: bigint;
  /** Go duration bounding a blocking query (`30s`, `5m`); Consul's default is 5m, its maximum 10m. */
  wait?: string;
  signal?: AbortSignal;
}

export interface PutOptions {
  /** Check-and-set: 0 creates only if absent, otherwise writes only if ModifyIndex still equals it. */
  cas?: bigint;
  signal?: AbortSignal;
}

export interface DeleteOptions {
  recurse?: boolean;
  /** Deletes only if ModifyIndex equals it; `0` deletes nothing, as in Consul. */
  cas?: bigint;
  signal?: AbortSignal;
}

export interface WatchOptions {
  recurse?: boolean;
  /** Go duration of each blocking query; default 5m. */
  wait?: string;
  signal: AbortSignal;
  /** Called with the first answer, then only when the content (keys, values, flags, sessions) changed. */
  onChange(entries: KvEntry[] | null, index: bigint): void | Promise<void>;
  /** Called for every failed request, before the backoff sleep. */
  onError?(err: unknown, info: { attempt: number; retryInMs: number }): void;
  /** Called for every successful answer, changed or not: Consul confirmed the current view. */
  onSuccess?(index: bigint): void;
  /** Token-bucket refill interval: sustained churn degrades to one request per this many ms (default 15 000). */
  minIntervalMs?: number;
  /** Token-bucket size (default 2). */
  burst?: number;
  /** Error backoff bounds, with jitter (default 1 s doubling up to 30 s). */
  backoff?: { minMs?: number; maxMs?: number };
}

/** A Consul KV client on undici: the calls petrel needs and a blocking-query watch loop. */
export interface ConsulClient {
  get(key: string, options?: GetOptions): Promise<KvResult>;
  put(key: string, value: string | Buffer, options?: PutOptions): Promise<boolean>;
  delete(key: string, options?: DeleteOptions): Promise<boolean>;
  /** The leader's `host:port`; throws when Consul is unreachable or has no leader. */
  leader(signal?: AbortSignal): Promise<string>;
  /** Runs a blocking-query loop on `key` until `signal` aborts; resolves once it has stopped. */
  watch(key: string, options: WatchOptions): Promise<void>;
}

export interface ConsulClientOptions {
  /** Base URL, e.g. `http://127.0.0.1:8500`; a path is kept as a reverse-proxy prefix. */
  addr: string;
  token?: string;
  dispatcher: Dispatcher;
  log?: Logger;
  datacenter?: string;
  /** Timeout of requests that do not block (default 30 s). */
  timeoutMs?: number;
  /** Retries of idempotent calls on network errors, 5xx and 429 (default 2, from 200 ms). Never for CAS. */
  retry?: { retries?: number; minTimeoutMs?: number };
}

/** TLS material plus the longest blocking wait the agent must carry (Go duration, default 10m, Consul's cap). */
export type ConsulTlsOptions = TlsOptions & { maxWait?: string };

/**
 * undici `Agent` options for Consul: TLS from files, and header/body timeouts above the longest blocking
 * wait plus Consul's jitter (up to wait/16) and network slack, because undici's 300 s default would cut a
 * 5-minute blocking query short.
 */
export function consulAgentOptions(tls: ConsulTlsOptions): Agent.Options {
  const waitMs = Math.min(parseGoDuration(tls.maxWait ?? "10m") ?? MAX_WAIT_MS, MAX_WAIT_MS);
  const timeout = blockingTimeoutMs(waitMs);
  return { ...tlsAgentOptions("Consul", tls), headersTimeout: timeout, bodyTimeout: timeout };
}

function blockingTimeoutMs(waitMs: number): number {
  return Math.ceil((waitMs * 17) / 16) + NETWORK_SLACK_MS;
}

/** `a/b c/d` → `a/b%20c/d`: each segment encoded, so `%`, `?` and `#` stay part of the key. */
function encodeKey(key: string): string {
  // A `.` or `..` segment would be resolved away by URL parsing and address another key.
  if (key.startsWith("/") || key.split("/").some((s) => s === "." || s === "..")) {
    throw new AppError("bad_request", `invalid Consul key ${JSON.stringify(key)}`);
  }
  return key.split("/").map(encodeURIComponent).join("/");
}

function parseIndex(value: string | undefined): bigint {
  return value !== undefined && /^\d+$/.test(value) ? BigInt(value) : 0n;
}

/** Consul's 403 and 413 texts are terse; say what they mean for the operator. */
function hintFor(status: number, body: string): string | undefined {
  if (status === 403 && body.includes("ACL not found")) {
    return "the Consul token is unknown, expired or deleted (check CONSUL_HTTP_TOKEN / CONSUL_HTTP_TOKEN_FILE)";
  }
  if (status === 403 && body.includes("Permission denied")) {
    return "the Consul token is valid but its policy does not grant this (key:read / key:write on the prefix)";
  }
  if (status === 403) return "Consul refused the token";
  if (status === 413) return "the value exceeds Consul's kv_max_value_size (512 KiB by default)";
  return undefined;
}

function sameEntries(a: KvEntry[] | null, b: KvEntry[] | null): boolean {
  if (a === null || b === null) return a === b;
  if (a.length !== b.length) return false;
  return a.every((x, i) => {
    const y = b[i];
    if (y === undefined || x.key !== y.key || x.flags !== y.flags || x.session !== y.session) return false;
    if (x.value === null || y.value === null) return x.value === y.value;
    return x.value.equals(y.value);
  });
}

interface Call {
  method: Method;
  path: string;
  query?: Record<string, string>;
  body?: string | Buffer;
  signal?: AbortSignal | undefined;
  timeoutMs: number;
  action: string;
  retry: boolean;
  /** Statuses the caller reads itself instead of an error (a 404 that means "no such key"). */
  answers?: (status: number) => boolean;
  schema?: z.ZodType;
}

/** Builds a Consul KV client; see {@link ConsulClient}. */
export function createConsulClient(opts: ConsulClientOptions): ConsulClient {
  const base = opts.addr.replace(/\/+$/, "");
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const retries = opts.retry?.retries ?? 2;
  const minTimeout = opts.retry?.minTimeoutMs ?? 200;

  async function call(c: Call): Promise<{ status: number; index: bigint; text: string; value: unknown }> {
    const url = new URL(`${base}${c.path}`);
    if (opts.datacenter !== undefined) url.searchParams.set("dc", opts.datacenter);
    for (const [k, v] of Object.entries(c.query ?? {})) url.searchParams.set(k, v);
    const headers: Record<string, string> = {};
    if (opts.token !== undefined) headers["x-consul-token"] = opts.token;
    if (c.body !== undefined) headers["content-type"] = "application/octet-stream";
    const res: HttpAnswer<unknown> = await request({
      service: "consul",
      action: c.action,
      dispatcher: opts.dispatcher,
      method: c.method,
      url,
      headers,
      ...(c.body === undefined ? {} : { body: c.body }),
      ...(c.answers ? { answers: c.answers } : {}),
      ...(c.schema ? { schema: c.schema } : {}),
      hint: hintFor,
      headersTimeoutMs: c.timeoutMs,
      bodyTimeoutMs: c.timeoutMs,
      ...(c.retry ? { retry: { retries, minDelayMs: minTimeout, randomize: true } } : {}),
      signal: c.signal,
      log: opts.log,
    });
    return {
      status: res.status,
      index: parseIndex(headerValue(res.headers, "x-consul-index")),
      text: res.text,
      value: res.value,
    };
  }

  async function get(key: string, o: GetOptions, retry: boolean): Promise<KvResult> {
    const query: Record<string, string> = {};
    if (o.recurse) query.recurse = "true";
    let callTimeout = timeoutMs;
    if (o.index !== undefined) {
      const wait = o.wait ?? DEFAULT_WAIT;
      const waitMs = parseGoDuration(wait);
      if (waitMs === undefined || waitMs < 0) throw new RangeError(`invalid Consul wait ${JSON.stringify(wait)}`);
      query.index = o.index.toString();
      query.wait = wait;
      callTimeout = blockingTimeoutMs(Math.min(waitMs, MAX_WAIT_MS));
    }
    const action = `GET ${key}`;
    const res = await call({
      method: "GET",
      path: `/v1/kv/${encodeKey(key)}`,
      query,
      signal: o.signal,
      timeoutMs: callTimeout,
      action,
      retry: retry && o.index === undefined,
      answers: (status) => status === 404,
    });
    if (res.status === 404) return { entries: null, index: res.index };
    try {
      return { entries: parseKvBody(res.text), index: res.index };
    } catch (err) {
      throw new UpstreamError("consul", res.status, `unexpected KV body: ${errorMessage(err)}`, { action, cause: err });
    }
  }

  async function write(
    method: "PUT" | "DELETE",
    key: string,
    query: Record<string, string>,
    body: string | Buffer | undefined,
    signal: AbortSignal | undefined,
    cas: boolean,
  ): Promise<boolean> {
    const action = `${method} ${key}`;
    const res = await call({
      method,
      path: `/v1/kv/${encodeKey(key)}`,
      query,
      signal,
      timeoutMs,
      action,
      // A retried CAS write whose first answer was lost would report our own write as a lost race.
      retry: !cas,
      schema: WriteResult,
      ...(body === undefined ? {} : { body }),
    });
    return WriteResult.parse(res.value);
  }

  const client: ConsulClient = {
    get: (key, o = {}) => get(key, o, true),

    put(key, value, o = {}) {
      const query: Record<string, string> = {};
      if (o.cas !== undefined) query.cas = o.cas.toString();
      return write("PUT", key, query, value, o.signal, o.cas !== undefined);
    },

    delete(key, o = {}) {
      if (o.recurse && o.cas !== undefined) throw new RangeError("Consul does not combine recurse and cas on DELETE");
      const query: Record<string, string> = {};
      if (o.recurse) query.recurse = "true";
      if (o.cas !== undefined) query.cas = o.cas.toString();
      return write("DELETE", key, query, undefined, o.signal, o.cas !== undefined);
    },

    async leader(signal) {
      const action = "GET /v1/status/leader";
      const res = await call({ method: "GET", path: "/v1/status/leader", signal, timeoutMs, action, retry: false, schema: ConsulLeader });
      const leader = ConsulLeader.parse(res.value);
      if (leader === "") {
        const err = new UpstreamError("consul", 503, "no cluster leader", { action });
        err.message = 'consul has no cluster leader (GET /v1/status/leader answered "")';
        throw err;
      }
      return leader;
    },

    async watch(key, o) {
      const bucket = createTokenBucket({ intervalMs: o.minIntervalMs ?? 15_000, burst: o.burst ?? 2 });
      const minBackoff = o.backoff?.minMs ?? 1_000;
      const maxBackoff = Math.max(o.backoff?.maxMs ?? 30_000, minBackoff);
      let index = 0n;
      let last: KvEntry[] | null | undefined;
      let failures = 0;
      while (!o.signal.aborted) {
        const delay = bucket.take();
        if (delay > 0 && !(await sleep(delay, o.signal))) break;
        let res: KvResult;
        try {
          res = await get(
            key,
            { signal: o.signal, ...(o.recurse ? { recurse: true } : {}), ...(index > 0n ? { index, wait: o.wait ?? DEFAULT_WAIT } : {}) },
            false,
          );
        } catch (err) {
          if (o.signal.aborted) break;
          // The first request after a failure is a plain read, so a recovery is confirmed at once rather than
          // after a whole blocking wait.
          index = 0n;
          failures += 1;
          const ceiling = Math.min(maxBackoff, minBackoff * 2 ** Math.min(failures - 1, 30));
          const retryInMs = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
          o.onError?.(err, { attempt: failures, retryInMs });
          if (!(await sleep(retryInMs, o.signal))) break;
          continue;
        }
        failures = 0;
        // Blocking-query rules (api-docs/features/blocking.mdx): an index that went backwards means a restore
        // or reaped tombstones, so start over with a plain read; an index of 0 must never be sent back
        // because it does not block.
        if (index > 0n && res.index < index) index = 0n;
        else index = res.index < 1n ? 1n : res.index;
        o.onSuccess?.(res.index);
        if (last !== undefined && sameEntries(last, res.entries)) continue;
        last = res.entries;
        try {
          await o.onChange(res.entries, res.index);
        } catch (err) {
          opts.log?.error({ key, err: errorMessage(err) }, "consul watch handler failed");
        }
      }
    },
  };
  return client;
}
