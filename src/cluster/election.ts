import { setTimeout as sleep } from "node:timers/promises";
import { errorMessage, UpstreamError } from "../errors.js";
import type { Logger } from "../log.js";
import type { NomadClient } from "../nomad/client.js";
import type { Leadership } from "./leadership.js";

export interface NomadLeadershipOptions {
  nomad: Pick<NomadClient, "variableLock">;
  /** The variable locked (PETREL_LEADER_PATH). */
  path: string;
  /** The lock's TTL; renewed every third of it. */
  ttlMs: number;
  /** How long Nomad keeps a lost lock from everyone after its TTL ran out. */
  lockDelayMs: number;
  log: Logger;
  metrics?: {
    /** 1 while leading, 0 otherwise. */
    leader?: { set(value: number): void };
    /** Renewals that got no answer or an error (a 409 is a lost lock, counted too). */
    renewFailures?: { inc(): void };
  };
  /** Clock (tests). */
  now?: () => number;
}

/** A replica's side of the election: a Leadership plus its lifecycle and what /health shows. */
export interface NomadLeadership extends Leadership {
  /** Starts campaigning in the background. */
  start(): void;
  /** Stops campaigning; a leader steps down first and releases the lock, so the next one need not wait. */
  stop(): Promise<void>;
  /** When the current term started; undefined while not leading. */
  since(): Date | undefined;
  /** Why this replica will never lead (the token may not write the variable); undefined otherwise. */
  refused(): string | undefined;
}

/** How much of the TTL a leader may spend without a renewal before it stops leading. */
const STEP_DOWN_AT = 0.8;

/**
 * Leader election with a Nomad variable lock (https://developer.hashicorp.com/nomad/api-docs/variables/locks).
 * Nomad frees a lock nobody renewed only 2×TTL + lock-delay after its last renewal
 * (https://github.com/hashicorp/nomad/blob/main/nomad/locks.go), and this leader stops leading 0.8×TTL after
 * the last renewal it sent, so two terms never overlap even when the leader cannot reach Nomad at all.
 */
export function createNomadLeadership(options: NomadLeadershipOptions): NomadLeadership {
  const { nomad, path, ttlMs, lockDelayMs, log } = options;
  const now = options.now ?? Date.now;
  const renewEveryMs = Math.max(100, Math.floor(ttlMs / 3));
  const retryMs = Math.max(50, Math.floor(ttlMs / 10));
  const ttl = goDuration(ttlMs);
  const lockDelay = goDuration(lockDelayMs);
  const listeners = new Set<(leader: boolean) => void>();
  let term: AbortController | undefined;
  let lockId: string | undefined;
  let since: Date | undefined;
  let lastRenewSent = 0;
  let deadline: NodeJS.Timeout | undefined;
  let refusal: string | undefined;
  let loop: Promise<void> | undefined;
  let running: AbortController | undefined;
  options.metrics?.leader?.set(0);

  function tell(leader: boolean): void {
    for (const listener of [...listeners]) {
      try {
        listener(leader);
      } catch (err) {
        log.error({ err: errorMessage(err) }, "leadership listener failed");
      }
    }
  }

  function armDeadline(): void {
    if (deadline) clearTimeout(deadline);
    const left = lastRenewSent + ttlMs * STEP_DOWN_AT - now();
    deadline = setTimeout(() => stepDown("no renewal of the lock got through within the TTL", true), Math.max(0, left));
    deadline.unref();
  }

  function begin(id: string, sentAt: number): void {
    lockId = id;
    lastRenewSent = sentAt;
    since = new Date();
    term = new AbortController();
    armDeadline();
    options.metrics?.leader?.set(1);
    log.info({ path, ttl, lockDelay }, "leading: holds the Nomad lock; statuses, archiving and policies run here");
    tell(true);
  }

  /** Ends the term at once; with `release`, frees the lock in the background if Nomad can still be reached. */
  function stepDown(reason: string, release: boolean): Promise<void> {
    if (term === undefined) return Promise.resolve();
    if (deadline) clearTimeout(deadline);
    deadline = undefined;
    const id = lockId;
    term.abort(new Error(`leadership ended: ${reason}`));
    term = undefined;
    lockId = undefined;
    since = undefined;
    options.metrics?.leader?.set(0);
    log.warn({ path, reason }, "stepped down: no longer leading");
    tell(false);
    if (!release || id === undefined) return Promise.resolve();
    // Holding on to a lock nobody uses would keep every replica waiting for 2×TTL + lock-delay.
    return nomad
      .variableLock("release", path, { id }, { signal: AbortSignal.timeout(Math.min(2000, ttlMs)), timeoutMs: Math.min(2000, ttlMs) })
      .then(
        () => log.info({ path }, "released the Nomad lock"),
        (err: unknown) => log.debug({ path, err: errorMessage(err) }, "could not release the Nomad lock; Nomad frees it after its TTL"),
      );
  }

  /** A refusal no retry fixes: the token's policy, or a TTL the agent does not accept. */
  function permanent(err: unknown): boolean {
    return err instanceof UpstreamError && err.upstreamStatus >= 400 && err.upstreamStatus < 500 && err.upstreamStatus !== 429;
  }

  async function campaign(signal: AbortSignal): Promise<void> {
    let failing = false;
    while (!signal.aborted) {
      if (term === undefined) {
        const sentAt = now();
        try {
          const res = await nomad.variableLock("acquire", path, { ttl, lockDelay }, { signal, timeoutMs: renewEveryMs });
          failing = false;
          if (res.held && res.id !== undefined) {
            begin(res.id, sentAt);
            continue;
          }
        } catch (err) {
          if (signal.aborted) return;
          if (permanent(err)) {
            const status = (err as UpstreamError).upstreamStatus;
            refusal =
              status === 403
                ? `NOMAD_TOKEN may not write the Nomad variable "${path}" (lock-acquire answered 403): this replica serves webhooks and reads but never leads; give the token a policy with variables { path "${path}" { capabilities = ["write"] } }`
                : `Nomad refused the leader lock on "${path}" (${errorMessage(err)}): this replica serves webhooks and reads but never leads; check PETREL_LEADER_PATH and PETREL_LEADER_TTL (Nomad accepts a TTL from 10s to 24h)`;
            log.error({ path, status }, refusal);
            return;
          }
          if (!failing) log.warn({ path, err: errorMessage(err) }, "could not reach Nomad to campaign for leadership; retrying");
          failing = true;
        }
        await pause(renewEveryMs, signal);
        continue;
      }

      await pause(Math.max(0, lastRenewSent + renewEveryMs - now()), signal);
      const id = lockId;
      if (term === undefined || id === undefined || signal.aborted) continue;
      const sentAt = now();
      const left = lastRenewSent + ttlMs * STEP_DOWN_AT - sentAt;
      try {
        const res = await nomad.variableLock("renew", path, { id }, { signal, timeoutMs: Math.max(50, left) });
        if (lockId !== id) continue;
        if (!res.held) {
          options.metrics?.renewFailures?.inc();
          await stepDown("Nomad says another replica holds the lock, or it expired", false);
          continue;
        }
        lastRenewSent = sentAt;
        armDeadline();
      } catch (err) {
        if (signal.aborted) return;
        options.metrics?.renewFailures?.inc();
        log.warn({ path, err: errorMessage(err) }, "could not renew the leader lock; retrying before the TTL runs out");
        await pause(retryMs, signal);
      }
    }
  }

  return {
    isLeader: () => term !== undefined,
    term: () => term?.signal,
    onChange(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    since: () => since,
    refused: () => refusal,

    start() {
      if (loop !== undefined) return;
      running = new AbortController();
      loop = campaign(running.signal).catch((err: unknown) =>
        log.error({ err: errorMessage(err) }, "leader election stopped unexpectedly"),
      );
    },

    async stop() {
      running?.abort();
      await loop;
      loop = undefined;
      await stepDown("shutting down", true);
    },
  };
}

async function pause(ms: number, signal: AbortSignal): Promise<void> {
  try {
    await sleep(ms, undefined, { signal });
  } catch {
    // Aborted: the loop sees the signal.
  }
}

/** Milliseconds as a Go duration string, as Nomad's lock body wants (`15s`, `1500ms`). */
export function goDuration(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000}s` : `${ms}ms`;
}

/**
 * Runs `begin` for every term of `leadership` (now, if a term is on) and the stop it returns when the term ends.
 * Returns the stop for shutdown.
 */
export function whileLeading(leadership: Leadership, begin: (term: AbortSignal) => () => Promise<unknown>): () => Promise<void> {
  let end: (() => Promise<unknown>) | undefined;
  let ending: Promise<unknown> = Promise.resolve();
  const start = () => {
    const signal = leadership.term();
    if (signal === undefined || end !== undefined) return;
    end = begin(signal);
  };
  const unsubscribe = leadership.onChange((leader) => {
    if (leader) return start();
    const stop = end;
    end = undefined;
    if (stop !== undefined) ending = ending.then(stop, stop);
  });
  start();
  return async () => {
    unsubscribe();
    const stop = end;
    end = undefined;
    await ending;
    await stop?.();
  };
}
