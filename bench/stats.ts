/** Small helpers shared by the benchmarks: percentiles and a ratio line with its target. */

export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const at = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[at] ?? Number.NaN;
}

/** Prints `name: value (target)` followed by PASS or MISS, and returns whether the target was met. */
export function verdict(name: string, value: string, target: string, met: boolean): boolean {
  process.stdout.write(`  ${name.padEnd(34)} ${value.padEnd(22)} target ${target.padEnd(14)} ${met ? "PASS" : "MISS"}\n`);
  return met;
}

/**
 * Takes the whole `t=<ms>` lines from `text` (timestamps a writer put in the log), pushes how long ago each was
 * written (`now` minus it) onto `samples`, and returns the unfinished rest for the next chunk.
 */
export function takeTimedLines(text: string, now: number, samples: number[]): string {
  let rest = text;
  let nl = rest.indexOf("\n");
  while (nl !== -1) {
    const sent = Number(/^t=([\d.]+)$/.exec(rest.slice(0, nl))?.[1]);
    if (Number.isFinite(sent)) samples.push(now - sent);
    rest = rest.slice(nl + 1);
    nl = rest.indexOf("\n");
  }
  return rest;
}
