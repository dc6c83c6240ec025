import type { DispatchPayload } from "../contract/dispatch.js";

/** What a builder declares in its `parameterized` block. */
export interface BuilderParams {
  payload: "optional" | "required" | "forbidden";
  metaRequired: string[];
  metaOptional: string[];
}

/** A build to dispatch: the builder, its meta, and (trusted builds only) the payload. */
export interface BuildDispatch {
  builder: string;
  meta: Record<string, string>;
  /** Only for trusted builds: JSON for petrel's builders, the shell text itself for an Albatros builder. */
  payload?: DispatchPayload | string;
  idempotencyToken: string;
}

/** The build a dispatch started, or found already started for its idempotency token. */
export interface DispatchedBuild {
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
  /** The TAG meta: set when the build is of `refs/tags/<tag>` (its `ref` is then the tag name too). */
  tag?: string;
  trusted: boolean;
  /**
   * From the PRIVATE meta key, which the forge's payload set at dispatch; absent when the builder does not
   * carry it (or a manual build could not tell). Reading a build whose privacy is unknown needs the token.
   */
  private?: boolean;
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

/** A build as its dispatch meta alone describes it: what a listing knows before reading any detail. */
export type BuildSummary = Pick<
  Build,
  "id" | "builder" | "repo" | "repoUrl" | "commit" | "ref" | "flavor" | "event" | "trusted" | "private" | "pr" | "tag"
>;

/** Where a listing left off: the creation time (ms) and ID of the last build it looked at, newest first. */
export interface BuildCursor {
  time: number;
  id: string;
}

export interface BuildFilter {
  repo?: string;
  ref?: string;
  state?: BuildState;
  /** Most builds in the page; also bounds the backend's detail reads (about three per build in cluster mode). */
  limit: number;
  /** Only builds after this point of an earlier page. */
  after?: BuildCursor;
  /** Whether the caller may see a build, from its meta alone; refused builds are counted, never read in detail. */
  visible?: (build: BuildSummary) => boolean | Promise<boolean>;
  /**
   * The backend's state as of this call: no answer shared with a listing already in flight, which may predate a
   * build the caller knows of (a policy deciding on the build it was just told about).
   */
  fresh?: boolean;
}

/** One page of a listing. */
export interface BuildPage {
  builds: Build[];
  /** Builds this page passed over because the caller may not read them (private repositories without the token). */
  hidden: number;
  /** Where the next page starts; absent when nothing older is left. */
  next?: BuildCursor;
}

/** True when a build created at `time` with `id` sorts after (is older than) `cursor`, newest first. */
export function isAfterCursor(time: number, id: string, cursor: BuildCursor | undefined): boolean {
  if (cursor === undefined) return true;
  return time < cursor.time || (time === cursor.time && id < cursor.id);
}

/** In a newest-first array, the index of the first entry after (older than) `cursor`: a binary search. */
export function indexAfterCursor(sorted: readonly { time: number; id: string }[], cursor: BuildCursor | undefined): number {
  if (cursor === undefined) return 0;
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    const e = sorted[mid] as { time: number; id: string };
    if (isAfterCursor(e.time, e.id, cursor)) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

/** Newest first, ties broken by ID (descending), the order every listing and cursor uses. */
export function newestFirst(a: { time: number; id: string }, b: { time: number; id: string }): number {
  return b.time - a.time || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0);
}

/** `all`: stdout, stderr and the executor's step lines merged in write order (the executor's merged log). */
export type LogType = "stdout" | "stderr" | "all";

/** Where builds run: dispatched Nomad jobs (cluster mode) or local child processes (single-machine mode). */
export interface BuildBackend {
  readonly kind: "nomad" | "local";
  /** The builder jobs whose children are petrel's builds; nothing else is ever served. */
  parameterized(builder: string, signal?: AbortSignal): Promise<BuilderParams>;
  dispatch(request: BuildDispatch, signal?: AbortSignal): Promise<DispatchedBuild>;
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

/** Why petrel itself stopped a build (a build policy): the state and reason the build then shows. */
export interface StopReason {
  state: "cancelled" | "error";
  reason: string;
}

/** Reading builds back: the same answers in both modes, from Nomad's state or the local runner's records. */
export interface BuildReader {
  /** Builds newest first, one page at a time. */
  listBuilds(filter: BuildFilter, signal?: AbortSignal): Promise<BuildPage>;
  /** One build, or undefined when it is not (or no longer) known. Foreign IDs are refused before any call. */
  getBuild(id: string, signal?: AbortSignal): Promise<Build | undefined>;
  /**
   * The build's raw log bytes from `offset`. Waits while the build is queued; with `follow`, ends shortly after
   * the build turns terminal and its last bytes were sent. Throws AppError `gone` (410) when the logs no longer
   * exist.
   */
  logs(id: string, request: LogRequest): AsyncIterable<Uint8Array>;
  /**
   * The whole log as a gzip stream, when the reader keeps it compressed (an archived build); undefined
   * otherwise, and the caller reads `logs`. Decoded, the bytes are exactly those `logs` gives from offset 0.
   */
  gzipLog?(id: string, type: LogType): Promise<AsyncIterable<Uint8Array> | undefined>;
  /** Stops a build; its state becomes cancelled, or what `why` says when a policy stopped it. */
  cancel(id: string, signal?: AbortSignal, why?: StopReason): Promise<void>;
}

/** Called by a backend whenever a build changes state (the commit-status notifier listens). */
export type BuildListener = (build: Build) => void;
