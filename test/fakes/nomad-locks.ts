import { randomUUID } from "node:crypto";

/**
 * Nomad's variable locks (`PUT /v1/var/:path?lock-acquire|lock-renew|lock-release`, Nomad 1.7+), as the agent
 * and server implement them:
 * - https://github.com/hashicorp/nomad/blob/main/command/agent/variable_endpoint.go: one lock operation per
 *   request, not with `cas`; a conflict on acquire or release is 409 with the conflicting variable's metadata as
 *   JSON; renew answers the variable's metadata.
 * - https://github.com/hashicorp/nomad/blob/main/nomad/variables_endpoint.go: `errVarIsLocked` (409 "attempting
 *   to modify locked variable") for a renew with a foreign ID or after the TTL timer ran out, `errLockNotFound`
 *   (409 "variable doesn't hold a lock"), `errVarNotFound` (404), release needs `Lock.ID` and no `Items` (400).
 * - https://github.com/hashicorp/nomad/blob/main/nomad/locks.go `CreateVariableLockTTLTimer`: the server's timer
 *   is twice the TTL (a renew resets it); when it fires, the lock stays held for `LockDelay` more and is then
 *   removed (`invalidateVariableLock`). So a holder that stops renewing loses the lock 2×TTL + LockDelay after
 *   its last renew, and nobody can acquire it before.
 * - https://github.com/hashicorp/nomad/blob/main/nomad/structs/variables.go: TTL and LockDelay are Go duration
 *   strings (numbers are nanoseconds), both default to 15 s; the TTL must be between 10 s and 24 h.
 * - https://github.com/hashicorp/nomad/blob/main/nomad/state/state_store_variables.go `VarLockAcquire`: acquiring
 *   with the current holder's ID succeeds (it is the holder); any other caller gets the conflict.
 */
export interface LockError {
  status: number;
  text: string;
}

export interface VariableMeta {
  Namespace: string;
  Path: string;
  Lock?: { ID: string; TTL: string; LockDelay: string };
  Items?: Record<string, string>;
  CreateIndex: number;
  CreateTime: number;
  ModifyIndex: number;
  ModifyTime: number;
}

export interface LockAnswer {
  status: number;
  body: unknown;
  index: number;
}

interface HeldLock {
  id: string;
  ttlNs: number;
  delayNs: number;
  /** Server-side TTL timer (2×TTL); undefined once it fired (the lock-delay runs). */
  ttlTimer: NodeJS.Timeout | undefined;
  delayTimer: NodeJS.Timeout | undefined;
}

interface Variable {
  namespace: string;
  path: string;
  items: Record<string, string>;
  lock: HeldLock | undefined;
  createIndex: number;
  createTime: number;
  modifyIndex: number;
  modifyTime: number;
}

export interface VariableLocks {
  handle(op: "lock-acquire" | "lock-renew" | "lock-release", ns: string, path: string, body: Record<string, unknown>): LockAnswer;
  read(ns: string, path: string): VariableMeta | undefined;
  /** The current holder's lock ID, if any. */
  holder(ns: string, path: string): string | undefined;
  close(): void;
}

const MAX_TTL_NS = 24 * 3600e9;

export function createVariableLocks(opts: {
  next: () => number;
  parseDuration: (text: string) => number | undefined;
  /** Nomad refuses a TTL under 10 s; tests of failover lower this to keep runs short. */
  minTtlMs?: number;
}): VariableLocks {
  const vars = new Map<string, Variable>();
  const minTtlNs = (opts.minTtlMs ?? 10_000) * 1e6;
  const key = (ns: string, path: string) => `${ns}\0${path}`;

  const duration = (value: unknown, fallbackNs: number): number => {
    if (value === undefined || value === null || value === "") return fallbackNs;
    if (typeof value === "number") return value;
    if (typeof value !== "string") throw err(400, "json: cannot unmarshal lock duration");
    const ns = opts.parseDuration(value);
    if (ns === undefined) throw err(400, `time: invalid duration "${value}"`);
    return ns;
  };

  function goDuration(ns: number): string {
    const ms = ns / 1e6;
    if (ms % 1000 === 0) {
      const s = ms / 1000;
      const h = Math.floor(s / 3600);
      const m = Math.floor((s % 3600) / 60);
      const rest = s % 60;
      return `${h ? `${h}h` : ""}${h || m ? `${m}m` : ""}${rest}s`;
    }
    return ms >= 1000 ? `${ms / 1000}s` : `${ms}ms`;
  }

  function meta(v: Variable, withLock: boolean, withItems: boolean): VariableMeta {
    return {
      Namespace: v.namespace,
      Path: v.path,
      ...(withLock && v.lock ? { Lock: { ID: v.lock.id, TTL: goDuration(v.lock.ttlNs), LockDelay: goDuration(v.lock.delayNs) } } : {}),
      ...(withItems ? { Items: { ...v.items } } : {}),
      CreateIndex: v.createIndex,
      CreateTime: v.createTime,
      ModifyIndex: v.modifyIndex,
      ModifyTime: v.modifyTime,
    };
  }

  function stopTimers(lock: HeldLock | undefined): void {
    if (lock?.ttlTimer) clearTimeout(lock.ttlTimer);
    if (lock?.delayTimer) clearTimeout(lock.delayTimer);
  }

  function armTtl(v: Variable, lock: HeldLock): void {
    if (lock.ttlTimer) clearTimeout(lock.ttlTimer);
    lock.ttlTimer = setTimeout(
      () => {
        lock.ttlTimer = undefined;
        lock.delayTimer = setTimeout(() => {
          if (v.lock !== lock) return;
          v.lock = undefined;
          v.modifyIndex = opts.next();
          v.modifyTime = Date.now() * 1e6;
        }, lock.delayNs / 1e6);
      },
      (2 * lock.ttlNs) / 1e6,
    );
  }

  function conflict(v: Variable, withEmptyLock: boolean, index: number): LockAnswer {
    const body = {
      Namespace: v.namespace,
      Path: v.path,
      ...(withEmptyLock ? { Lock: { TTL: "", LockDelay: "", ID: "" } } : {}),
      CreateIndex: 0,
      CreateTime: 0,
      ModifyIndex: 0,
      ModifyTime: 0,
    };
    return { status: 409, body, index };
  }

  return {
    handle(op, ns, path, body) {
      const lockIn = (body.Lock ?? undefined) as Record<string, unknown> | undefined;
      const idIn = typeof lockIn?.ID === "string" ? lockIn.ID : "";
      const items = (body.Items ?? undefined) as Record<string, string> | undefined;
      const v = vars.get(key(ns, path));

      if (op === "lock-renew") {
        if (!v) throw err(404, "variable doesn't exist");
        if (!v.lock) throw err(409, "variable doesn't hold a lock");
        if (v.lock.id !== idIn) throw err(409, "attempting to modify locked variable");
        // The lock is still held but its TTL timer ran out: only the delay is left, no renewal.
        if (v.lock.ttlTimer === undefined) throw err(409, "attempting to modify locked variable");
        armTtl(v, v.lock);
        return { status: 200, body: meta(v, true, false), index: v.modifyIndex };
      }

      if (op === "lock-release") {
        if (!idIn) throw err(400, "missing lock information");
        if (items !== undefined && items !== null) throw err(400, "lock release operation doesn't take variable items");
        if (!v) throw err(404, "variable doesn't exist");
        if (!v.lock) throw err(409, "variable doesn't hold a lock");
        const index = opts.next();
        if (v.lock.id !== idIn) return conflict(v, true, index);
        stopTimers(v.lock);
        v.lock = undefined;
        v.modifyIndex = index;
        v.modifyTime = Date.now() * 1e6;
        return { status: 200, body: meta(v, false, false), index };
      }

      const ttlNs = duration(lockIn?.TTL, 15e9);
      const delayNs = duration(lockIn?.LockDelay, 15e9);
      if (ttlNs < 0 || delayNs < 0) throw err(400, "RPC Error:: 400,1 error occurred:\n\t* Lock delay and TTL must be positive\n\n");
      // The validation error crosses Nomad's RPC layer, which prefixes it (recorded: var.lock-acquire.short-ttl).
      if (ttlNs < minTtlNs || ttlNs > MAX_TTL_NS)
        throw err(400, "RPC Error:: 400,1 error occurred:\n\t* TTL must be between 10 seconds and 24 hours\n\n");
      const index = opts.next();
      if (v?.lock && v.lock.id !== idIn) return conflict(v, false, index);
      const now = Date.now() * 1e6;
      const target: Variable = v ?? {
        namespace: ns,
        path,
        items: {},
        lock: undefined,
        createIndex: index,
        createTime: now,
        modifyIndex: index,
        modifyTime: now,
      };
      if (items) target.items = { ...items };
      target.modifyIndex = index;
      target.modifyTime = now;
      if (!target.lock) {
        const lock: HeldLock = { id: idIn || randomUUID(), ttlNs, delayNs, ttlTimer: undefined, delayTimer: undefined };
        target.lock = lock;
        armTtl(target, lock);
      }
      vars.set(key(ns, path), target);
      // A real agent answers an acquire with the variable's metadata, never its items (recorded: var.lock-acquire).
      return { status: 200, body: meta(target, true, false), index };
    },

    read(ns, path) {
      const v = vars.get(key(ns, path));
      return v ? meta(v, true, true) : undefined;
    },

    holder(ns, path) {
      return vars.get(key(ns, path))?.lock?.id;
    },

    close() {
      for (const v of vars.values()) stopTimers(v.lock);
    },
  };
}

function err(status: number, text: string): LockError & Error {
  return Object.assign(new Error(text), { status, text });
}
