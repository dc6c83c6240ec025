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
