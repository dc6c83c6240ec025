import { freeBytes } from "./fsutil.js";

/** Why the executor stopped before or around the build script, as opposed to the script's own failure. */
export type ExecutorFailure =
  | "bad_environment"
  | "no_build_script"
  | "unreachable"
  | "missing_commit"
  | "disk_full"
  | "mount_failed"
  | "isolation_refused"
  | "cache_refused"
  | "cancelled"
  | "internal";

// sysexits(3) codes, so a failing setup is told apart from the usual 1/2 of a failing build script. The executor
// answers no HTTP request: its failures carry an exit code, not a status.
const EXIT_CODES: Record<ExecutorFailure, number> = {
  bad_environment: 64,
  missing_commit: 65,
  no_build_script: 66,
  unreachable: 69,
  internal: 70,
  mount_failed: 71,
  disk_full: 74,
  isolation_refused: 77,
  cache_refused: 78,
  cancelled: 143,
};

/** The exit code the executor ends with for each failure of its own. */
export function exitCodeOf(failure: ExecutorFailure): number {
  return EXIT_CODES[failure];
}

/** A failure of the executor itself; its message is the one line printed after `==> error:`. */
export class ExecutorError extends Error {
  readonly failure: ExecutorFailure;
  readonly exitCode: number;

  constructor(failure: ExecutorFailure, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "ExecutorError";
    this.failure = failure;
    this.exitCode = EXIT_CODES[failure];
  }
}

/** True when an error (or its cause chain) is a full disk. */
export function isDiskFull(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e && depth < 5; depth++) {
    if (typeof e === "object" && (e as { code?: unknown }).code === "ENOSPC") return true;
    e = (e as { cause?: unknown }).cause;
  }
  return false;
}

/** The one-line error for a full disk under the cache root. */
export async function diskFull(root: string, cause: unknown): Promise<ExecutorError> {
  const free = await freeBytes(root);
  const left = free === undefined ? "" : ` (${Math.floor(free / 1024)} KiB free)`;
  return new ExecutorError("disk_full", `disk full: no space left under ${root}${left}`, { cause });
}
