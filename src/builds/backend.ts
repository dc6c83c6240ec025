import type { DispatchPayload } from "./dispatch.js";

/** What a builder declares in its `parameterized` block. */
export interface BuilderParams {
  payload: "optional" | "required" | "forbidden";
  metaRequired: string[];
  metaOptional: string[];
}

export interface DispatchRequest {
  builder: string;
  meta: Record<string, string>;
  /** Only for trusted builds. */
  payload?: DispatchPayload;
  idempotencyToken: string;
}

export interface DispatchResult {
  /** The build ID, `<builder>/dispatch-<unix seconds>-<8 hex>`. */
  id: string;
  /** True when the idempotency token named a build that already existed. */
  duplicate: boolean;
}

export const BUILD_STATES = ["queued", "running", "success", "failure", "cancelled", "error"] as const;
export type BuildState = (typeof BUILD_STATES)[number];

/** True for states a build never leaves. */
export function isTerminal(state: BuildState): boolean {
  return state !== "queued" && state !== "running";
}

/** One build as petrel shows it, derived from Nomad's job and allocation (or the local runner's record). */
export interface Build {
  id: string;
  builder: string;
  /** `owner/name`, from the REPO meta key when the builder declares it, else from REPO_URL. */
  repo: string;
  repoUrl: string;
  commit: string;
  /** The BRANCH meta value: a branch, a tag name, or a pull request's head ref. */
  ref: string;
  flavor: string;
  event: string;
  pr?: string;
  trusted: boolean;
  /** From the PRIVATE meta key; private repositories' builds need the admin token by default. */
  private: boolean;
  state: BuildState;
  /** Why the build ended as it did, in words (exit code, cancelled, could not be placed, ...). */
  reason?: string;
  exitCode?: number;
  /** ISO 8601 times. */
  createdAt: string;
  startedAt?: string;
  finishedAt?: string;
  node?: string;
  allocId?: string;
}

export interface BuildFilter {
  repo?: string;
  ref?: string;
  state?: BuildState;
  limit: number;
}

/** `all`: stdout, stderr and the executor's step lines merged in write order (the executor's merged log). */
export type LogType = "stdout" | "stderr" | "all";

/** Where builds run: dispatched Nomad jobs (cluster mode) or local child processes (single-machine mode). */
export interface BuildBackend {
  readonly kind: "nomad" | "local";
  /** The builder jobs whose children are petrel's builds; nothing else is ever served. */
  parameterized(builder: string, signal?: AbortSignal): Promise<BuilderParams>;
  dispatch(request: DispatchRequest, signal?: AbortSignal): Promise<DispatchResult>;
  /** Reachability for /health; never throws. */
  health(signal?: AbortSignal): Promise<{ ok: boolean; error?: string }>;
}

export interface LogRequest {
  type: LogType;
  follow: boolean;
  /** Bytes of the log to skip, for resuming. */
  offset: number;
  signal: AbortSignal;
}

/** Reading builds back: the same answers in both modes, from Nomad's state or the local runner's records. */
export interface BuildReader {
  /** Builds newest first. */
  listBuilds(filter: BuildFilter, signal?: AbortSignal): Promise<Build[]>;
  /** One build, or undefined when it is not (or no longer) known. Foreign IDs are refused before any call. */
  getBuild(id: string, signal?: AbortSignal): Promise<Build | undefined>;
  /**
   * The build's raw log bytes from `offset`. Waits while the build is queued; with `follow`, ends shortly after
   * the build turns terminal and its last bytes were sent. Throws AppError `gone` (410) when the logs no longer
   * exist.
   */
  logs(id: string, request: LogRequest): AsyncIterable<Uint8Array>;
  /** Stops a build; its state becomes cancelled. */
  cancel(id: string, signal?: AbortSignal): Promise<void>;
}

/** Called by a backend whenever a build changes state (the commit-status notifier listens). */
export type BuildListener = (build: Build) => void;
