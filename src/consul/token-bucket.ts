/** A token bucket: `take()` reserves one token and says how long to wait before using it (0 = now). */
export interface TokenBucket {
  take(): number;
}

/**
 * Consul's advice for blocking loops (api-docs/features/blocking.mdx): rate-limit instead of sleeping, so a
 * quiet key answers at once while churn degrades to one request per `intervalMs`. Burst 2 by default.
 */
export function createTokenBucket(opts: { intervalMs: number; burst?: number; now?: () => number }): TokenBucket {
  const burst = opts.burst ?? 2;
  const now = opts.now ?? Date.now;
  if (!(opts.intervalMs >= 0) || !(burst >= 1)) throw new RangeError("token bucket needs intervalMs >= 0 and burst >= 1");
  let tokens = burst;
  let last = now();
  return {
    take() {
      if (opts.intervalMs === 0) return 0;
      const t = now();
      tokens = Math.min(burst, tokens + (t - last) / opts.intervalMs);
      last = t;
      tokens -= 1;
      // A negative balance is a reservation: the caller waits until it would have been refilled.
      return tokens >= 0 ? 0 : Math.ceil(-tokens * opts.intervalMs);
    },
  };
}
