/**
 * Whether this replica does the work that must happen once (SPEC §10): statuses from the event stream,
 * archiving, cron, supersede, timeouts. Replicas elect a leader with a Nomad variable lock; single-machine
 * mode has one process, which always leads.
 */
export interface Leadership {
  /** True while this replica holds the lock (always true with one process). */
  isLeader(): boolean;
  /** Aborted the moment this replica stops leading; a fresh signal after every new term. Undefined while not leading. */
  term(): AbortSignal | undefined;
  /** Called with `true` when a term starts and `false` when it ends; returns the unsubscribe function. */
  onChange(listener: (leader: boolean) => void): () => void;
}

/** The one process of single-machine mode (or a cluster of one): leads from start to stop. */
export function createSoleLeadership(): Leadership {
  const term = new AbortController();
  return {
    isLeader: () => true,
    term: () => term.signal,
    onChange: () => () => undefined,
  };
}
