// Go's time.ParseDuration grammar (https://pkg.go.dev/time#ParseDuration): a sequence of decimal numbers, each
// with an optional fraction and a unit, such as "300ms", "1.5h" or "2h45m". Operators write timeouts the way
// Nomad's own job files write them.

const UNIT_MS: Readonly<Record<string, number>> = {
  ns: 1e-6,
  us: 1e-3,
  µs: 1e-3,
  μs: 1e-3,
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
};
const PART = /(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)/y;

/** Milliseconds of a Go duration string, or undefined when it is not one. Signs are refused: a timeout is never negative. */
export function parseGoDuration(text: string): number | undefined {
  if (text === "0") return 0;
  if (text === "" || text.length > 64) return undefined;
  PART.lastIndex = 0;
  let total = 0;
  let at = 0;
  while (at < text.length) {
    PART.lastIndex = at;
    const m = PART.exec(text);
    if (m === null) return undefined;
    total += Number(m[1]) * (UNIT_MS[m[2] ?? ""] ?? Number.NaN);
    at = PART.lastIndex;
  }
  return Number.isFinite(total) ? total : undefined;
}
