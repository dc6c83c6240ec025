import type { IncomingMessage, ServerResponse } from "node:http";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { assertExpected } from "./strict.js";

/** One request the fake received, for assertions on what a client sent. */
export interface ConsulFakeRequest {
  method: string;
  path: string;
  query: Record<string, string>;
  token?: string;
}

/** Key prefixes a token may read and write ("" = everything). */
export interface ConsulFakePolicy {
  read?: string[];
  write?: string[];
}

export interface ConsulFakeOptions {
  /** ACL mode: requests need a known token; unknown → 403 `ACL not found`, lacking → 403 `Permission denied`. */
  acl?: { tokens: Record<string, ConsulFakePolicy & { accessorId?: string }>; anonymous?: ConsulFakePolicy };
  /** `limits.kv_max_value_size`; 512 KiB like Consul. */
  maxValueBytes?: number;
  /** Raft index the store starts at. */
  initialIndex?: bigint;
  /** The fake's datacenter (Consul's default `dc1`); `?dc=` naming another one fails as an unreachable one. */
  datacenter?: string;
}

export interface ConsulFakeEntry {
  value: Buffer | null;
  flags: bigint;
  createIndex: bigint;
  modifyIndex: bigint;
}

/** A Consul agent's KV and status endpoints, as https://developer.hashicorp.com/consul/api-docs/kv and hashicorp/consul agent/kvs_endpoint.go describe them. */
export interface ConsulFake {
  url: string;
  requests: ConsulFakeRequest[];
  /** Requests the fake does not model (answered 501); `close()` rejects while this is not empty. */
  unexpected: string[];
  /** Writes a key as a PUT would; returns its new ModifyIndex. */
  set(key: string, value: string | Buffer | null, flags?: bigint): bigint;
  /** Deletes a key (or, with `recurse`, a prefix) as a DELETE would. */
  delete(key: string, recurse?: boolean): void;
  entry(key: string): ConsulFakeEntry | undefined;
  /** The store's current raft index. */
  index(): bigint;
  /** Simulated snapshot restore: the store's index (and every ModifyIndex above it) drops to `to`. */
  restore(to: bigint): void;
  /** Forces the index the server reports and blocks on (e.g. 0n, as old servers sent); undefined = real. */
  overrideIndex(value: bigint | undefined): void;
  /** Answers the next `count` KV requests with `status` and a plain-text `body`. */
  failNext(status: number, body: string, count?: number): void;
  setLeader(leader: string): void;
  /** false: answer blocking queries at once, like a key that changes all the time. */
  setBlocking(enabled: boolean): void;
  /** Blocking queries being held right now. */
  waiting(): number;
  /** Resolves once `n` blocking queries are held. */
  waitForWaiting(n: number, timeoutMs?: number): Promise<void>;
  /** true: stop listening and drop every connection (clients see ECONNREFUSED); false: listen again. */
  setDown(down: boolean): Promise<void>;
  close(): Promise<void>;
}

const DEFAULT_WAIT_MS = 5 * 60_000;
const MAX_WAIT_MS = 10 * 60_000;
const UNITS: Record<string, number> = { ns: 1e-6, us: 1e-3, µs: 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Go's time.ParseDuration, reduced to what a test needs: `10s`, `1m30s`, `250ms`, `0`. */
function goDuration(text: string): number | undefined {
  if (text === "0") return 0;
  if (!/^(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+$/.test(text)) return undefined;
  let ms = 0;
  for (const m of text.matchAll(/(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)/g)) ms += Number(m[1]) * (UNITS[m[2] ?? ""] ?? 0);
  return ms;
}

// Every route takes these (https://github.com/hashicorp/consul/blob/main/agent/http.go `parseDC`, `parseToken`).
const COMMON_PARAMS = ["dc", "token"];

/** The query parameters each modelled route reads (https://developer.hashicorp.com/consul/api-docs/kv). */
function modelledParams(method: string, pathname: string): readonly string[] | undefined {
  if (pathname === "/v1/status/leader") return COMMON_PARAMS;
  if (!pathname.startsWith("/v1/kv/") && pathname !== "/v1/kv") return undefined;
  if (method === "GET") return [...COMMON_PARAMS, "recurse", "keys", "separator", "seperator", "raw", "index", "wait"];
  if (method === "PUT") return [...COMMON_PARAMS, "flags", "cas"];
  if (method === "DELETE") return [...COMMON_PARAMS, "recurse", "cas"];
  return undefined;
}

/** The query parameters of a request to a modelled route that the route does not model. */
function unmodelledParams(method: string, url: URL): string[] {
  const allowed = modelledParams(method, url.pathname);
  if (allowed === undefined) return [];
  return [...new Set(url.searchParams.keys())].filter((k) => !allowed.includes(k));
}

interface Waiter {
  key: string;
  recurse: boolean;
  after: bigint;
  finish: () => void;
}

/** Starts the fake on 127.0.0.1 with a random port. */
export async function startConsulFake(options: ConsulFakeOptions = {}): Promise<ConsulFake> {
  const maxValue = options.maxValueBytes ?? 512 * 1024;
  const datacenter = options.datacenter ?? "dc1";
  const kv = new Map<string, ConsulFakeEntry>();
  const tombstones = new Map<string, bigint>();
  const waiters = new Set<Waiter>();
  const requests: ConsulFakeRequest[] = [];
  const unexpected: string[] = [];
  let raft = options.initialIndex ?? 10n;
  let forcedIndex: bigint | undefined;
  let failures: { status: number; body: string; count: number } | undefined;
  let leader = "127.0.0.1:8300";
  let blocking = true;

  const matches = (k: string, key: string, recurse: boolean): boolean => (recurse ? k.startsWith(key) : k === key);

  function indexOf(key: string, recurse: boolean): bigint {
    let max = 0n;
    for (const [k, e] of kv) if (matches(k, key, recurse) && e.modifyIndex > max) max = e.modifyIndex;
    for (const [k, i] of tombstones) if (matches(k, key, recurse) && i > max) max = i;
    return max === 0n ? raft : max;
  }

  /** The index the server reports and blocks on: the real one unless a test forced another. */
  function reported(key: string, recurse: boolean): bigint {
    return forcedIndex ?? indexOf(key, recurse);
  }

  function wake(): void {
    for (const w of waiters) if (reported(w.key, w.recurse) > w.after) w.finish();
  }

  function put(key: string, value: Buffer | null, flags: bigint): bigint {
    raft += 1n;
    const old = kv.get(key);
    kv.set(key, { value, flags, createIndex: old?.createIndex ?? raft, modifyIndex: raft });
    tombstones.delete(key);
    wake();
    return raft;
  }

  function remove(key: string, recurse: boolean): void {
    const keys = [...kv.keys()].filter((k) => matches(k, key, recurse));
    if (keys.length === 0) return;
    raft += 1n;
    for (const k of keys) {
      kv.delete(k);
      tombstones.set(k, raft);
    }
    wake();
  }

  function tokenOf(req: IncomingMessage, query: URLSearchParams): string | undefined {
    // Consul's precedence: ?token, then X-Consul-Token, then `Authorization: Bearer` (case-sensitive scheme).
    const q = query.get("token");
    if (q) return q;
    const h = req.headers["x-consul-token"];
    if (typeof h === "string" && h !== "") return h;
    const auth = req.headers.authorization;
    if (auth?.startsWith("Bearer ")) return auth.slice(7).split(" ")[0];
    return undefined;
  }

  /** undefined = allowed; otherwise the 403 text. */
  function denied(token: string | undefined, right: "read" | "write", key: string): string | undefined {
    const acl = options.acl;
    if (acl === undefined) return undefined;
    const policy = token === undefined ? acl.anonymous : acl.tokens[token];
    if (token !== undefined && policy === undefined) return "ACL not found";
    if ((policy?.[right] ?? []).some((p) => key.startsWith(p))) return undefined;
    const who =
      token === undefined
        ? "anonymous token"
        : `token with AccessorID '${acl.tokens[token]?.accessorId ?? "00000000-0000-0000-0000-000000000001"}'`;
    const tail = token === undefined ? ". The anonymous token is used implicitly when a request does not specify a token." : "";
    return `Permission denied: ${who} lacks permission 'key:${right}' on ${JSON.stringify(key)}${tail}`;
  }

  function canRead(token: string | undefined, key: string): boolean {
    return denied(token, "read", key) === undefined;
  }

  function send(res: ServerResponse, status: number, body: string | Buffer, index?: bigint, type = "application/json"): void {
    if (index !== undefined) res.setHeader("X-Consul-Index", index.toString());
    res.setHeader("X-Consul-KnownLeader", "true");
    res.setHeader("X-Consul-LastContact", "0");
    res.setHeader("X-Consul-Default-ACL-Policy", options.acl ? "deny" : "allow");
    if (body.length > 0) res.setHeader("Content-Type", status === 200 ? type : "text/plain; charset=utf-8");
    res.writeHead(status);
    res.end(body);
  }

  function entryJson(key: string, e: ConsulFakeEntry): string {
    // Built by hand so uint64 indexes and flags keep every digit, as Go's encoder writes them.
    const value = e.value === null ? "null" : JSON.stringify(e.value.toString("base64"));
    return `{"LockIndex":0,"Key":${JSON.stringify(key)},"Flags":${e.flags},"Value":${value},"CreateIndex":${e.createIndex},"ModifyIndex":${e.modifyIndex}}`;
  }

  async function readBody(req: IncomingMessage): Promise<Buffer> {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks);
  }

  async function handleGet(
    _req: IncomingMessage,
    res: ServerResponse,
    key: string,
    q: URLSearchParams,
    token: string | undefined,
  ): Promise<void> {
    const keysOnly = q.has("keys");
    const recurse = q.has("recurse") || keysOnly;
    if (!recurse && key === "") return send(res, 400, "Missing key name");
    if (!recurse) {
      const why = denied(token, "read", key);
      if (why !== undefined) return send(res, 403, why);
    }
    let after: bigint | undefined;
    let waitMs = DEFAULT_WAIT_MS;
    if (q.has("wait")) {
      const parsed = goDuration(q.get("wait") ?? "");
      if (parsed === undefined) return send(res, 400, "Invalid wait time");
      waitMs = Math.min(parsed, MAX_WAIT_MS);
    }
    if (q.has("index")) {
      const raw = q.get("index") ?? "";
      if (!/^\d+$/.test(raw)) return send(res, 400, "Invalid index");
      after = BigInt(raw);
    }
    if (blocking && after !== undefined && after > 0n && reported(key, recurse) <= after) {
      await new Promise<void>((resolve) => {
        const w: Waiter = {
          key,
          recurse,
          after,
          finish: () => {
            clearTimeout(timer);
            res.off("close", w.finish);
            waiters.delete(w);
            resolve();
          },
        };
        const timer = setTimeout(w.finish, waitMs);
        waiters.add(w);
        res.once("close", w.finish);
      });
      if (res.destroyed) return;
    }
    const index = reported(key, recurse);
    const all = [...kv.entries()].filter(([k]) => matches(k, key, recurse)).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    const visible = all.filter(([k]) => canRead(token, k));
    if (visible.length < all.length && token !== undefined) res.setHeader("X-Consul-Results-Filtered-By-ACLs", "true");
    if (keysOnly) {
      const sep = q.get("separator") ?? q.get("seperator") ?? "";
      const names = new Set<string>();
      for (const [k] of visible) {
        const cut = sep === "" ? -1 : k.indexOf(sep, key.length);
        names.add(cut === -1 ? k : k.slice(0, cut + sep.length));
      }
      if (names.size === 0 && key !== "") return send(res, 404, "", index);
      return send(res, 200, JSON.stringify([...names]), index);
    }
    if (visible.length === 0) return send(res, 404, "", index);
    const first = visible[0];
    if (!recurse && q.has("raw") && first !== undefined) {
      res.setHeader("X-Content-Type-Options", "nosniff");
      res.setHeader("Content-Security-Policy", "sandbox");
      return send(res, 200, first[1].value ?? Buffer.alloc(0), index, "text/plain; charset=utf-8");
    }
    return send(res, 200, `[${visible.map(([k, e]) => entryJson(k, e)).join(",")}]`, index);
  }

  async function handlePut(
    req: IncomingMessage,
    res: ServerResponse,
    key: string,
    q: URLSearchParams,
    token: string | undefined,
  ): Promise<void> {
    const length = Number(req.headers["content-length"] ?? "0");
    const body = await readBody(req);
    if (key === "") return send(res, 400, "Missing key name");
    const size = Math.max(length, body.length);
    if (size > maxValue) return send(res, 413, `Request body(${size} bytes) too large, max size: ${maxValue} bytes`);
    const why = denied(token, "write", key);
    if (why !== undefined) return send(res, 403, why);
    let flags = 0n;
    if (q.has("flags")) {
      const raw = q.get("flags") ?? "";
      if (!/^\d+$/.test(raw)) return send(res, 400, "Invalid flags");
      flags = BigInt(raw);
    }
    if (q.has("cas")) {
      const raw = q.get("cas") ?? "";
      if (!/^\d+$/.test(raw)) return send(res, 400, "Invalid CAS index");
      const cas = BigInt(raw);
      const old = kv.get(key);
      const ok = cas === 0n ? old === undefined : old !== undefined && old.modifyIndex === cas;
      if (!ok) return send(res, 200, "false");
    }
    put(key, body.length === 0 ? null : body, flags);
    return send(res, 200, "true");
  }

  function handleDelete(res: ServerResponse, key: string, q: URLSearchParams, token: string | undefined): void {
    const recurse = q.has("recurse");
    if (recurse && q.has("cas")) return send(res, 400, "Conflicting flags: cas, recurse");
    if (!recurse && key === "") return send(res, 400, "Missing key name");
    const why = denied(token, "write", key);
    if (why !== undefined) return send(res, 403, why);
    if (q.has("cas")) {
      const raw = q.get("cas") ?? "";
      if (!/^\d+$/.test(raw)) return send(res, 400, "Invalid CAS index");
      const old = kv.get(key);
      // Consul's kvsDeleteCASTxn: a missing key counts as deleted, a mismatch (including cas=0) as a loss.
      if (old === undefined) return send(res, 200, "true");
      if (old.modifyIndex !== BigInt(raw)) return send(res, 200, "false");
    }
    remove(key, recurse);
    return send(res, 200, "true");
  }

  const server = createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://127.0.0.1");
    const query = url.searchParams;
    const token = tokenOf(req, query);
    const record: ConsulFakeRequest = { method: req.method ?? "", path: url.pathname, query: Object.fromEntries(query) };
    if (token !== undefined) record.token = token;
    requests.push(record);
    const unmodelled = unmodelledParams(req.method ?? "", url);
    if (unmodelled.length > 0) {
      unexpected.push(`${req.method ?? ""} ${url.pathname}?${unmodelled.join("&")}`);
      return send(res, 501, `consul fake: ${unmodelled.join(", ")} on ${url.pathname} is not modelled`);
    }
    // Consul forwards to another datacenter's servers; the fake has none (structs.ErrNoDCPath).
    if (query.has("dc") && query.get("dc") !== datacenter) return send(res, 500, "No path to datacenter");
    if (url.pathname === "/v1/status/leader" && req.method === "GET") return send(res, 200, JSON.stringify(leader));
    if (!url.pathname.startsWith("/v1/kv/") && url.pathname !== "/v1/kv") {
      unexpected.push(`${req.method ?? ""} ${url.pathname}`);
      return send(res, 501, `consul fake: ${req.method ?? ""} ${url.pathname} is not modelled`);
    }
    if (failures !== undefined && failures.count > 0) {
      failures.count -= 1;
      return send(res, failures.status, failures.body);
    }
    let key: string;
    try {
      key = decodeURIComponent(url.pathname.slice("/v1/kv/".length)).replace(/\/{2,}/g, "/");
    } catch {
      return send(res, 400, "Invalid URL path");
    }
    if (key.startsWith("/") || key.split("/").includes("..") || key !== key.trim()) {
      return send(res, 400, `invalid key name ${JSON.stringify(key)}`);
    }
    const done = (err: unknown): void => {
      if (!res.headersSent) send(res, 500, String(err));
    };
    switch (req.method) {
      case "GET":
        return void handleGet(req, res, key, query, token).catch(done);
      case "PUT":
        return void handlePut(req, res, key, query, token).catch(done);
      case "DELETE":
        return handleDelete(res, key, query, token);
      default:
        res.setHeader("Allow", "GET, PUT, DELETE");
        return send(res, 405, `method ${req.method ?? ""} not allowed`);
    }
  });

  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  let down = false;

  function release(): void {
    for (const w of [...waiters]) w.finish();
  }

  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    unexpected,
    set: (key, value, flags = 0n) => put(key, value === null ? null : Buffer.from(value), flags),
    delete: (key, recurse = false) => remove(key, recurse),
    entry: (key) => kv.get(key),
    index: () => raft,
    restore(to) {
      raft = to;
      tombstones.clear();
      for (const e of kv.values()) {
        if (e.modifyIndex > to) e.modifyIndex = to;
        if (e.createIndex > to) e.createIndex = to;
      }
      // A restore wakes every blocking query, which then sees the lower index.
      release();
    },
    overrideIndex(value) {
      forcedIndex = value;
      wake();
    },
    failNext(status, body, count = 1) {
      failures = { status, body, count };
    },
    setLeader(value) {
      leader = value;
    },
    setBlocking(enabled) {
      blocking = enabled;
    },
    waiting: () => waiters.size,
    async waitForWaiting(n, timeoutMs = 5_000) {
      const deadline = Date.now() + timeoutMs;
      while (waiters.size < n) {
        if (Date.now() > deadline) throw new Error(`expected ${n} blocking queries, ${waiters.size} held`);
        await new Promise((r) => setTimeout(r, 5));
      }
    },
    async setDown(value) {
      if (value === down) return;
      down = value;
      if (value) {
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        server.closeAllConnections();
        release();
        await closed;
      } else {
        await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve));
      }
    },
    async close() {
      release();
      if (down) return;
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      await closed;
      assertExpected("consul", unexpected);
    },
  };
}
