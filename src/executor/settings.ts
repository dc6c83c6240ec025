/** Eviction limits of the executor's cache directory (see docs/executor.md for the variables). */
export interface EvictionSettings {
  /** Minimum time between two eviction passes, in ms; 0 runs one after every build. */
  intervalMs: number;
  worktreesMaxAgeMs: number;
  worktreesMaxBytes: number;
  cachesMaxAgeMs: number;
  cachesMaxBytes: number;
  mirrorsMaxAgeMs: number;
}

const DAY = 86_400_000;
const GIB = 1024 ** 3;

/** The defaults documented in docs/executor.md. */
export const DEFAULT_EVICTION: EvictionSettings = {
  intervalMs: 10 * 60_000,
  worktreesMaxAgeMs: 7 * DAY,
  worktreesMaxBytes: 20 * GIB,
  cachesMaxAgeMs: 30 * DAY,
  cachesMaxBytes: 50 * GIB,
  mirrorsMaxAgeMs: 30 * DAY,
};

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: DAY, w: 7 * DAY };
const SIZE_UNITS: Record<string, number> = { "": 1, k: 1024, m: 1024 ** 2, g: GIB, t: 1024 ** 4 };

/** `90s`, `15m`, `12h`, `7d`, `2w`, `250ms`; a bare number is seconds. Undefined when malformed. */
export function parseDuration(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$/i.exec(text);
  if (!m) return undefined;
  return Math.round(Number(m[1]) * (DURATION_UNITS[(m[2] ?? "s").toLowerCase()] ?? 1000));
}

/** `512M`, `20G`, `1.5T`, `4096` (bytes); `K`/`M`/`G`/`T` are powers of 1024, an optional `B`/`iB` is ignored. */
export function parseSize(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$/i.exec(text);
  if (!m) return undefined;
  return Math.round(Number(m[1]) * (SIZE_UNITS[(m[2] ?? "").toLowerCase()] ?? 1));
}

type Problem = { variable: string; value: string; expected: string };

/** Reads the `PETREL_EVICT_*` variables; returns the settings or the first malformed variable. */
export function readEvictionSettings(env: Record<string, string | undefined>): { settings: EvictionSettings } | { problem: Problem } {
  const settings = { ...DEFAULT_EVICTION };
  const fields: [keyof EvictionSettings, string, "duration" | "size"][] = [
    ["intervalMs", "PETREL_EVICT_INTERVAL", "duration"],
    ["worktreesMaxAgeMs", "PETREL_EVICT_WORKTREES_AGE", "duration"],
    ["worktreesMaxBytes", "PETREL_EVICT_WORKTREES_SIZE", "size"],
    ["cachesMaxAgeMs", "PETREL_EVICT_CACHES_AGE", "duration"],
    ["cachesMaxBytes", "PETREL_EVICT_CACHES_SIZE", "size"],
    ["mirrorsMaxAgeMs", "PETREL_EVICT_MIRRORS_AGE", "duration"],
  ];
  for (const [field, variable, kind] of fields) {
    const value = env[variable];
    if (value === undefined || value === "") continue;
    const parsed = kind === "duration" ? parseDuration(value) : parseSize(value);
    if (parsed === undefined) {
      return {
        problem: {
          variable,
          value,
          expected: kind === "duration" ? "a duration such as 30m, 12h or 7d" : "a size such as 512M or 20G",
        },
      };
    }
    settings[field] = parsed;
  }
  return { settings };
}

/** `12 ms` below a second, `1.23 s` above: the timing printed in step headers. */
export function formatMs(ms: number): string {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}
