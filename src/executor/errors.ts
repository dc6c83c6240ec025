import { AppError, type ErrorCode } from "../errors.js";

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

// sysexits(3) codes, so a failing setup is told apart from the usual 1/2 of a failing build script.
const FAILURES: Record<ExecutorFailure, { code: ErrorCode; exitCode: number }> = {
  bad_environment: { code: "config_invalid", exitCode: 64 },
  missing_commit: { code: "not_found", exitCode: 65 },
  no_build_script: { code: "not_found", exitCode: 66 },
  unreachable: { code: "upstream_error", exitCode: 69 },
  internal: { code: "internal", exitCode: 70 },
  mount_failed: { code: "internal", exitCode: 71 },
  isolation_refused: { code: "config_invalid", exitCode: 77 },
  cache_refused: { code: "config_invalid", exitCode: 78 },
  disk_full: { code: "insufficient_storage", exitCode: 74 },
  cancelled: { code: "gone", exitCode: 143 },
};

/** The exit code the executor ends with for each failure of its own. */
export function exitCodeOf(failure: ExecutorFailure): number {
  return FAILURES[failure].exitCode;
}

/** A failure of the executor itself; its message is the one line printed after `==> error:`. */
export class ExecutorError extends AppError {
  readonly failure: ExecutorFailure;
  readonly exitCode: number;

  constructor(failure: ExecutorFailure, message: string, options?: { cause?: unknown }) {
    const f = FAILURES[failure];
    super(f.code, message, options);
    this.name = "ExecutorError";
    this.failure = failure;
    this.exitCode = f.exitCode;
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
