/** `promise`, or the signal's reason as soon as it aborts; the work itself goes on for whoever else waits on it. */
export function untilAborted<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

/** Resolves true after `ms`, or false as soon as `signal` aborts. */
export function sleep(ms: number, signal: AbortSignal): Promise<boolean> {
  if (signal.aborted) return Promise.resolve(false);
  return new Promise((resolve) => {
    const onAbort = (): void => {
      clearTimeout(timer);
      resolve(false);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve(true);
    }, ms);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

/** Concurrent calls with the same key share one run of the work; see {@link createSharedCalls}. */
export interface SharedCalls<T> {
  /** Joins the run for `key` (starting `fn` when there is none); aborting `signal` leaves it alone. */
  join(key: string, signal: AbortSignal | undefined, fn: (signal: AbortSignal) => Promise<T>): Promise<T>;
  /** True when a run for `key` is in flight. */
  has(key: string): boolean;
}

/**
 * Single flight: the first caller for a key starts the work, later ones wait on it, and the work's own signal
 * aborts only once every caller waiting on it gave up. The key is forgotten when the work settles.
 */
export function createSharedCalls<T>(): SharedCalls<T> {
  const runs = new Map<string, { promise: Promise<T>; controller: AbortController; waiters: number }>();
  return {
    has: (key) => runs.has(key),
    join(key, signal, fn) {
      if (signal?.aborted) return Promise.reject(signal.reason);
      let run = runs.get(key);
      if (run === undefined) {
        const controller = new AbortController();
        const created = { promise: fn(controller.signal), controller, waiters: 0 };
        const forget = () => {
          if (runs.get(key) === created) runs.delete(key);
        };
        created.promise.then(forget, forget);
        runs.set(key, created);
        run = created;
      }
      const r = run;
      r.waiters++;
      if (!signal) return r.promise;
      const leave = () => {
        r.waiters--;
        if (r.waiters === 0) {
          r.controller.abort(signal.reason);
          if (runs.get(key) === r) runs.delete(key);
        }
      };
      signal.addEventListener("abort", leave, { once: true });
      const done = () => signal.removeEventListener("abort", leave);
      r.promise.then(done, done);
      return untilAborted(r.promise, signal);
    },
  };
}
