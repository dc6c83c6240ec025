import type { Logger } from "pino";
import type { Dispatcher } from "undici";
import { z } from "zod";
import { AppError, errorMessage, UpstreamError } from "../errors.js";
import { request } from "../http/request.js";
import { ApiError, CombinedStatus, type CommitState, CommitStatus, Version } from "./schema.js";

/** The forge a call goes to: the instance URL (may carry a sub-path) and an API token. */
export interface GiteaTarget {
  baseUrl: string;
  token: string;
}

export interface PostStatusInput extends GiteaTarget {
  owner: string;
  repo: string;
  sha: string;
  state: CommitState;
  /** Keep it stable across runs (`petrel/<flavor>`): the combined view shows the latest row per context. */
  context: string;
  /** Cut to 140 characters. */
  description: string;
  targetUrl?: string;
}

export interface CallOptions {
  signal?: AbortSignal;
  /** Checked before each retry; returning true stops retrying (a newer status made this one moot). */
  giveUp?: () => boolean;
}

/** How hard a call tries: retries after the first attempt and the back-off between them. */
export interface GiteaRetryPolicy {
  retries: number;
  minDelayMs: number;
  maxDelayMs: number;
}

export interface GiteaClientOptions {
  dispatcher: Dispatcher;
  log?: Logger;
  retries?: Partial<GiteaRetryPolicy>;
  /** Per-attempt limit for headers and body, in milliseconds. */
  timeoutMs?: number;
}

/** The part of Gitea's (and Forgejo's) API petrel uses: commit statuses and the version probe. */
export interface GiteaClient {
  postStatus(input: PostStatusInput, opts?: CallOptions): Promise<CommitStatus | undefined>;
  combinedStatus(input: GiteaTarget & { owner: string; repo: string; ref: string }, opts?: CallOptions): Promise<CombinedStatus>;
  version(input: { baseUrl: string; token?: string }, opts?: CallOptions): Promise<string>;
}

/** Longest commit-status description petrel sends; Gitea has no limit but its UI shows one line. */
export const MAX_DESCRIPTION = 140;

const DEFAULT_RETRY: GiteaRetryPolicy = { retries: 4, minDelayMs: 250, maxDelayMs: 2000 };
const DEFAULT_TIMEOUT_MS = 10_000;

interface Call<S extends z.ZodType> {
  method: "GET" | "POST";
  baseUrl: string;
  token: string | undefined;
  path: string;
  action: string;
  schema: S;
  body?: unknown;
  /** Extra statuses worth retrying besides network errors, 429 and 5xx. */
  retryOn?: readonly number[];
  /** Fields for the retry log line; never the token. */
  logFields: Record<string, unknown>;
}

/** Builds a Gitea API client on undici; tokens go in `Authorization: token <t>` and are never logged. */
export function createGiteaClient(opts: GiteaClientOptions): GiteaClient {
  const policy: GiteaRetryPolicy = { ...DEFAULT_RETRY, ...opts.retries };
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;

  async function retried<S extends z.ZodType>(call: Call<S>, callOpts: CallOptions = {}): Promise<z.output<S>> {
    const { signal, giveUp } = callOpts;
    const headers: Record<string, string> = { accept: "application/json" };
    // Gitea matches the scheme `token` case-sensitively; `Token` would be ignored (services/auth/oauth2.go).
    if (call.token) headers.authorization = `token ${call.token}`;
    if (call.body !== undefined) headers["content-type"] = "application/json";
    const answer = await request({
      service: "gitea",
      action: call.action,
      dispatcher: opts.dispatcher,
      method: call.method,
      url: apiUrl(call.baseUrl, call.path),
      headers,
      ...(call.body === undefined ? {} : { body: JSON.stringify(call.body) }),
      schema: call.schema,
      // Older Gitea answers an empty combined status with no body at all (contracts D.3).
      emptyBody: {},
      errorText: apiMessage,
      headersTimeoutMs: timeoutMs,
      bodyTimeoutMs: timeoutMs,
      retry: {
        retries: policy.retries,
        minDelayMs: policy.minDelayMs,
        maxDelayMs: policy.maxDelayMs,
        retryable: (err) => (err.unavailable || (call.retryOn ?? []).includes(err.upstreamStatus)) && !giveUp?.(),
        onRetry: (err, { attempt }) =>
          opts.log?.warn({ ...call.logFields, action: call.action, attempt, status: err.upstreamStatus }, "gitea request failed; retrying"),
      },
      signal,
    });
    return answer.value as z.output<S>;
  }

  return {
    async postStatus(input, callOpts) {
      const body: Record<string, string> = {
        state: input.state,
        description: clampDescription(input.description),
        context: input.context,
        ...(input.targetUrl === undefined ? {} : { target_url: input.targetUrl }),
      };
      const answer = await retried(
        {
          method: "POST",
          baseUrl: input.baseUrl,
          token: input.token,
          path: `/repos/${seg(input.owner)}/${seg(input.repo)}/statuses/${seg(input.sha)}`,
          action: "create commit status",
          // A created status is a success even if its echo is not what we expect: never re-post it.
          schema: z.unknown(),
          body,
          // A push hook can arrive before Gitea can read the commit: 404 (newer) or 500 (older) until it can.
          retryOn: [404],
          logFields: { repo: `${input.owner}/${input.repo}`, sha: input.sha, state: input.state },
        },
        callOpts,
      );
      const status = CommitStatus.safeParse(answer);
      return status.success ? status.data : undefined;
    },

    combinedStatus(input, callOpts) {
      return retried(
        {
          method: "GET",
          baseUrl: input.baseUrl,
          token: input.token,
          path: `/repos/${seg(input.owner)}/${seg(input.repo)}/commits/${input.ref.split("/").map(seg).join("/")}/status`,
          action: "read combined status",
          schema: CombinedStatus,
          logFields: { repo: `${input.owner}/${input.repo}`, ref: input.ref },
        },
        callOpts,
      );
    },

    async version(input, callOpts) {
      const answer = await retried(
        {
          method: "GET",
          baseUrl: input.baseUrl,
          token: input.token,
          path: "/version",
          action: "read version",
          schema: Version,
          logFields: {},
        },
        callOpts,
      );
      return answer.version;
    },
  };
}

export type ReportOutcome = "ok" | "failed" | "superseded";

/** A status to report; `fullName` is the repository's `owner/name`. */
export type StatusReport = Omit<PostStatusInput, "owner" | "repo"> & { fullName: string };

export interface StatusReporterOptions {
  client: GiteaClient;
  log: Logger;
  /**
   * Called once per report with how it ended, e.g. to count outcomes in a Prometheus counter. `ok` is true only
   * when the status was posted; `superseded` means a newer status for the same commit and context replaced it.
   */
  onResult?: (state: CommitState, ok: boolean, outcome: ReportOutcome) => void;
  /** Aborting it cancels retries, for a shutdown that cannot wait. */
  signal?: AbortSignal;
}

/** Posts commit statuses in the background: a failed status must never fail or delay a build. */
export interface StatusReporter {
  /** Queues a status; returns at once and never throws. */
  report(input: StatusReport): void;
  /** Resolves when every queued report has ended. */
  drain(): Promise<void>;
}

/**
 * Builds a status reporter. Reports for one (forge, repository, commit, context) are posted in order, and a
 * report still waiting or retrying when a newer one arrives is dropped, so `pending` never lands after the
 * final state.
 */
export function createStatusReporter(opts: StatusReporterOptions): StatusReporter {
  const { client, log } = opts;
  const chains = new Map<string, { tail: Promise<void>; latest: number }>();
  const inflight = new Set<Promise<void>>();
  let seq = 0;

  function count(state: CommitState, outcome: ReportOutcome): void {
    try {
      opts.onResult?.(state, outcome === "ok", outcome);
    } catch (err) {
      log.warn({ err: errorMessage(err) }, "status result callback failed");
    }
  }

  async function post(input: PostStatusInput, stale: () => boolean): Promise<void> {
    const fields = { repo: `${input.owner}/${input.repo}`, sha: input.sha, state: input.state, context: input.context };
    if (stale()) {
      log.debug(fields, "commit status superseded before it was posted");
      return count(input.state, "superseded");
    }
    try {
      await client.postStatus(input, { giveUp: stale, ...(opts.signal ? { signal: opts.signal } : {}) });
      log.debug(fields, "commit status posted");
      count(input.state, "ok");
    } catch (err) {
      if (stale()) {
        log.debug(fields, "commit status superseded while retrying");
        return count(input.state, "superseded");
      }
      const status = err instanceof UpstreamError ? err.upstreamStatus : undefined;
      // Outages and a commit not yet readable fix themselves; 401/403/422 or a bug of ours need a person.
      const transient = err instanceof UpstreamError && (err.unavailable || status === 404);
      const level = transient ? "warn" : "error";
      log[level]({ ...fields, status, err: errorMessage(err) }, "commit status not posted");
      count(input.state, "failed");
    }
  }

  return {
    report(report) {
      try {
        const { fullName, ...rest } = report;
        const slash = fullName.indexOf("/");
        const input: PostStatusInput = { ...rest, owner: fullName.slice(0, slash), repo: fullName.slice(slash + 1) };
        if (slash <= 0 || slash === fullName.length - 1) throw new Error(`"${fullName}" is not owner/name`);
        const key = JSON.stringify([input.baseUrl.replace(/\/+$/, ""), fullName.toLowerCase(), input.sha.toLowerCase(), input.context]);
        const my = ++seq;
        const chain = chains.get(key) ?? { tail: Promise.resolve(), latest: my };
        chain.latest = my;
        const stale = () => chain.latest !== my;
        const run = chain.tail.then(() => post(input, stale));
        chain.tail = run;
        chains.set(key, chain);
        inflight.add(run);
        void run.finally(() => {
          inflight.delete(run);
          if (chains.get(key) === chain && chain.latest === my) chains.delete(key);
        });
      } catch (err) {
        log.error({ sha: report?.sha, err: errorMessage(err) }, "commit status report could not be queued");
        count(report?.state, "failed");
      }
    },

    async drain() {
      while (inflight.size > 0) await Promise.allSettled([...inflight]);
    },
  };
}

/** Cuts a description to MAX_DESCRIPTION characters (code points, so no half surrogate pair is sent). */
export function clampDescription(text: string): string {
  const chars = Array.from(text.trim());
  return chars.length <= MAX_DESCRIPTION ? chars.join("") : `${chars.slice(0, MAX_DESCRIPTION - 1).join("")}…`;
}

function apiUrl(baseUrl: string, path: string): URL {
  let base: URL;
  try {
    base = new URL(baseUrl);
  } catch {
    throw new AppError("config_invalid", "gitea.url is not a valid URL");
  }
  if (base.protocol !== "http:" && base.protocol !== "https:") {
    throw new AppError("config_invalid", "gitea.url must be an http or https URL");
  }
  return new URL(`${base.origin}${base.pathname.replace(/\/+$/, "")}/api/v1${path}`);
}

function seg(value: string): string {
  return encodeURIComponent(value);
}

/** Gitea's own `message` from a JSON error body, else the body text. */
function apiMessage(text: string): string {
  try {
    const parsed = ApiError.safeParse(JSON.parse(text));
    if (parsed.success) return parsed.data.message;
  } catch {
    // Not JSON: keep the text; UpstreamError truncates it.
  }
  return text;
}
