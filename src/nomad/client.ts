import type { Logger } from "pino";
import type { Dispatcher } from "undici";
import type { z } from "zod";
import { AppError, UpstreamError } from "../errors.js";
import { headerValue, type Method, openStream, type RetryPolicy, request } from "../http/request.js";
import { untilAborted } from "../util/abort.js";
import { chunksOf } from "../util/stream.js";
import {
  Allocation,
  AllocationStub,
  DeregisterResponse,
  DispatchResponse,
  Evaluation,
  Job,
  JobListStub,
  NomadLeader,
  ParsedJob,
  RegisterResponse,
  VariableLockAnswer,
} from "./schema.js";

/** How a builder's `parameterized` block treats the dispatch payload. */
export type PayloadRule = "optional" | "required" | "forbidden";

/** The `parameterized` block of a job, as petrel needs it to build a dispatch. */
export interface ParameterizedSpec {
  payload: PayloadRule;
  metaRequired: string[];
  metaOptional: string[];
}

/** A variable-lock operation's outcome: `held` is false when another holder has it (Nomad's 409). */
export interface LockResult {
  held: boolean;
  /** The lock's ID while held (acquire and renew answer it to the holder). */
  id?: string;
}

/** What a dispatch created, or found already created for its idempotency token. */
export interface DispatchResult {
  id: string;
  evalId: string;
  /** True when Nomad answered with the child an earlier dispatch with the same token created. */
  duplicate: boolean;
}

export interface DispatchRequest {
  meta: Record<string, string>;
  payload?: Buffer;
  idempotencyToken: string;
}

/** Options of a blocking query (https://developer.hashicorp.com/nomad/api-docs#blocking-queries): answers once the index moved past `index`. */
export interface BlockingOptions {
  index?: number;
  /** Longest time, in milliseconds, Nomad should hold the query; Nomad caps it at 300 s. */
  wait?: number;
  signal?: AbortSignal;
}

export interface SignalOption {
  signal?: AbortSignal;
}

/** `GET /v1/client/fs/logs/:alloc` parameters (https://developer.hashicorp.com/nomad/api-docs/client#stream-logs). */
export interface LogStreamOptions {
  task: string;
  type: "stdout" | "stderr";
  follow: boolean;
  /** Bytes to skip from `origin`, across rotated files. */
  offset: number;
  origin?: "start" | "end";
  signal: AbortSignal;
  /** Longest silence before the stream counts as dead; Nomad sends a heartbeat every second. */
  idleTimeoutMs?: number;
}

/** `GET /v1/client/fs/stream/:alloc` parameters: one file of the allocation directory, same framing as logs. */
export interface FileStreamOptions {
  /** Relative to the allocation directory, e.g. `alloc/petrel/all.log`. */
  path: string;
  /** Nomad's default is true here (unlike the logs endpoint), so it is always sent. */
  follow: boolean;
  /** Bytes to skip from the start of the file. */
  offset: number;
  signal: AbortSignal;
  idleTimeoutMs?: number;
}

/** `GET /v1/event/stream` parameters (https://developer.hashicorp.com/nomad/api-docs/events). */
export interface EventStreamOptions {
  /** First Raft index wanted (inclusive); 0 starts at the oldest buffered batch. */
  index: number;
  /** `Topic` or `Topic:FilterKey`, e.g. `Job:*`. */
  topics: string[];
  signal: AbortSignal;
  /** Longest silence before the stream counts as dead; Nomad sends a heartbeat every 30 s. */
  idleTimeoutMs?: number;
}

export interface NomadClientOptions {
  addr: string;
  token?: string;
  namespace?: string;
  region?: string;
  dispatcher: Dispatcher;
  log?: Logger;
  /** Total time a retried call may take, attempts and back-off included. */
  retryBudgetMs?: number;
  /** How long a builder's `parameterized` block is reused before it is read again. */
  parameterizedTtlMs?: number;
  /** Clock for the parameterized cache; tests pass their own. */
  now?: () => number;
}

/** Nomad's HTTP API, as much of it as petrel uses. */
export interface NomadClient {
  dispatch(jobId: string, req: DispatchRequest, opts?: SignalOption): Promise<DispatchResult>;
  parameterized(jobId: string, opts?: SignalOption): Promise<ParameterizedSpec>;
  readJob(id: string, opts?: BlockingOptions): Promise<{ job: Job; index: number } | undefined>;
  jobAllocations(id: string, opts?: BlockingOptions & { all?: boolean }): Promise<{ allocations: AllocationStub[]; index: number }>;
  allocation(allocId: string, opts?: BlockingOptions): Promise<{ allocation: Allocation; index: number } | undefined>;
  /** Job stubs by ID prefix; with `meta`, each stub carries the job's Meta (one request, no per-job reads). */
  listJobs(opts: { prefix: string; meta?: boolean; signal?: AbortSignal }): Promise<JobListStub[]>;
  /** `listJobs` with the answer's `X-Nomad-Index`, e.g. to start an event stream where the listing left off. */
  listJobsIndexed(opts: { prefix: string; signal?: AbortSignal }): Promise<{ jobs: JobListStub[]; index: number }>;
  /**
   * One page of `listJobs` (`per_page`, `next_token`): `nextToken` is set while there is more, to pass back as is
   * (https://developer.hashicorp.com/nomad/api-docs/jobs#list-jobs).
   */
  listJobsPage(opts: { prefix: string; perPage: number; nextToken?: string; signal?: AbortSignal }): Promise<{
    jobs: JobListStub[];
    nextToken?: string;
  }>;
  jobEvaluations(id: string, opts?: BlockingOptions): Promise<{ evaluations: Evaluation[]; index: number }>;
  /**
   * Opens an allocation's log stream (framed JSON; never gzip, so frames arrive as Nomad writes them). Errors
   * Nomad answers before the first byte throw UpstreamError with its status and text.
   */
  streamLogs(allocId: string, opts: LogStreamOptions): Promise<AsyncIterable<Uint8Array>>;
  /**
   * Opens a stream of one file in the allocation directory (framed JSON like the logs). A file that does not
   * exist (yet) is a 400 whose text names the failed `stat`.
   */
  streamFile(allocId: string, opts: FileStreamOptions): Promise<AsyncIterable<Uint8Array>>;
  /** Opens the event stream (NDJSON); the body may be close-delimited
   * (https://github.com/hashicorp/nomad/blob/main/command/agent/event_endpoint.go). */
  eventStream(opts: EventStreamOptions): Promise<AsyncIterable<Uint8Array>>;
  stopJob(id: string, opts?: { purge?: boolean; signal?: AbortSignal }): Promise<{ evalId: string; index: number }>;
  parseJob(hcl: string, opts?: { canonicalize?: boolean; signal?: AbortSignal }): Promise<ParsedJob>;
  registerJob(
    job: Record<string, unknown>,
    opts?: { source?: string; signal?: AbortSignal },
  ): Promise<{ evalId: string; jobModifyIndex: number; warnings: string; index: number }>;
  leader(signal?: AbortSignal): Promise<string>;
  /**
   * `PUT /v1/var/<path>?lock-acquire|lock-renew|lock-release` (https://developer.hashicorp.com/nomad/api-docs/variables/locks),
   * one attempt (the caller's loop is the retry). Conflicts (409) answer `held: false`; anything else throws.
   */
  variableLock(
    op: "acquire" | "renew" | "release",
    path: string,
    lock: { id?: string; ttl?: string; lockDelay?: string },
    opts?: { signal?: AbortSignal; timeoutMs?: number },
  ): Promise<LockResult>;
}

const DEFAULT_RETRY_BUDGET_MS = 3500;
const DEFAULT_PARAMETERIZED_TTL_MS = 60_000;
const FIRST_RETRY_DELAY_MS = 100;
const MAX_RETRY_DELAY_MS = 800;
// Nomad adds up to wait/16 of jitter to a blocking query
// (https://github.com/hashicorp/nomad/blob/main/nomad/structs/structs.go `JitterFraction`); allow that plus slack.
const BLOCKING_SLACK_MS = 10_000;
const DEFAULT_BLOCKING_WAIT_MS = 300_000;
const STREAM_HEADERS_TIMEOUT_MS = 30_000;
const DEFAULT_LOG_IDLE_MS = 30_000;
const DEFAULT_EVENT_IDLE_MS = 95_000;

// Uncoded dispatch validation errors come back as 500
// (https://github.com/hashicorp/nomad/blob/main/command/agent/http.go `wrap`); retrying cannot fix them.
const PERMANENT_DISPATCH_ERRORS = [
  "missing parameterized job ID",
  "parameterized job not found",
  "is not a parameterized job",
  "is stopped",
  "Payload is not provided but required",
  "Payload provided but forbidden",
  "Payload exceeds maximum size",
  "in passed metadata",
  "unpermitted metadata keys",
  "did not provide required meta keys",
  "dispatch job priority must be between",
];

/** True when a failed dispatch answer names a validation problem that no retry will fix. */
export function isPermanentDispatchError(err: UpstreamError): boolean {
  return err.upstreamStatus === 500 && PERMANENT_DISPATCH_ERRORS.some((t) => err.upstreamBody.includes(t));
}

interface Call<S extends z.ZodType> {
  method: Method;
  path: string;
  action: string;
  schema: S;
  query?: Record<string, string | undefined>;
  body?: unknown;
  /** A 404 answers `undefined` instead of throwing. */
  optional?: boolean;
}

interface Answer<T> {
  value: T;
  index: number;
  /** `X-Nomad-NextToken`: set when a paginated answer has more. */
  nextToken?: string;
}

/** Builds a Nomad client on undici; every call carries the token, namespace and region it was given. */
export function createNomadClient(opts: NomadClientOptions): NomadClient {
  const base = opts.addr.replace(/\/+$/, "");
  const budgetMs = opts.retryBudgetMs ?? DEFAULT_RETRY_BUDGET_MS;
  const ttlMs = opts.parameterizedTtlMs ?? DEFAULT_PARAMETERIZED_TTL_MS;
  const now = opts.now ?? Date.now;
  const specs = new Map<string, { expires: number; spec: Promise<ParameterizedSpec> }>();

  function url(path: string, query: Iterable<[string, string | undefined]>): URL {
    const u = new URL(`${base}${path}`);
    for (const [k, v] of query) if (v !== undefined && v !== "") u.searchParams.append(k, v);
    if (opts.namespace) u.searchParams.set("namespace", opts.namespace);
    if (opts.region) u.searchParams.set("region", opts.region);
    return u;
  }

  // No Accept-Encoding: Nomad gzips whole streams on request (https://developer.hashicorp.com/nomad/api-docs#compressed-responses).
  const headers = (json: boolean): Record<string, string> => ({
    accept: "application/json",
    ...(opts.token ? { "x-nomad-token": opts.token } : {}),
    ...(json ? { "content-type": "application/json" } : {}),
  });

  /** Retries on outages inside the retry budget; Nomad's refusals are not outages
   * (https://github.com/hashicorp/nomad/blob/main/command/agent/http.go `wrap`). */
  function budget(action: string, retryable?: (err: UpstreamError) => boolean): RetryPolicy {
    return {
      budgetMs,
      minDelayMs: FIRST_RETRY_DELAY_MS,
      maxDelayMs: MAX_RETRY_DELAY_MS,
      ...(retryable ? { retryable } : {}),
      onRetry: (err, { attempt, delayMs }) =>
        opts.log?.warn({ action, attempt, status: err.upstreamStatus, delayMs }, "nomad request failed; retrying"),
    };
  }

  async function call<S extends z.ZodType>(
    c: Call<S>,
    signal: AbortSignal | undefined,
    retry: RetryPolicy | undefined,
    headersTimeoutMs?: number,
  ): Promise<Answer<z.output<S>> | undefined> {
    const answer = await request({
      service: "nomad",
      action: c.action,
      dispatcher: opts.dispatcher,
      method: c.method,
      url: url(c.path, Object.entries(c.query ?? {})),
      headers: headers(c.body !== undefined),
      ...(c.body === undefined ? {} : { body: JSON.stringify(c.body) }),
      schema: c.schema,
      ...(c.optional ? { answers: (status: number) => status === 404 } : {}),
      ...(retry ? { retry } : {}),
      ...(headersTimeoutMs === undefined ? {} : { headersTimeoutMs }),
      signal,
    });
    if (answer.value === undefined) return undefined;
    const index = Number(headerValue(answer.headers, "x-nomad-index"));
    const nextToken = headerValue(answer.headers, "x-nomad-nexttoken");
    return { value: answer.value, index: Number.isFinite(index) ? index : 0, ...(nextToken ? { nextToken } : {}) };
  }

  function retried<S extends z.ZodType>(
    c: Call<S>,
    signal: AbortSignal | undefined,
    retryable?: (err: UpstreamError) => boolean,
  ): Promise<Answer<z.output<S>> | undefined> {
    return call(c, signal, budget(c.action, retryable));
  }

  /** A blocking query: one attempt, allowed to wait as long as Nomad may hold it. */
  function blocking<S extends z.ZodType>(c: Call<S>, b: BlockingOptions) {
    if (!b.index) return retried(c, b.signal);
    const wait = b.wait ?? DEFAULT_BLOCKING_WAIT_MS;
    const query = { ...c.query, index: String(b.index), wait: `${Math.max(1, Math.round(wait))}ms` };
    return call({ ...c, query }, b.signal, undefined, wait + wait / 16 + BLOCKING_SLACK_MS);
  }

  /** Opens a streamed GET of framed JSON or NDJSON; anything but 2xx is thrown as UpstreamError. */
  async function stream(
    path: string,
    query: [string, string][],
    action: string,
    signal: AbortSignal,
    idleTimeoutMs: number,
  ): Promise<AsyncIterable<Uint8Array>> {
    const res = await openStream({
      service: "nomad",
      action,
      dispatcher: opts.dispatcher,
      url: url(path, query),
      headers: headers(false),
      signal,
      headersTimeoutMs: STREAM_HEADERS_TIMEOUT_MS,
      bodyTimeoutMs: idleTimeoutMs,
    });
    return chunksOf(res.body);
  }

  async function dispatchOnce(jobId: string, req: DispatchRequest, signal: AbortSignal | undefined): Promise<DispatchResult> {
    const body: Record<string, unknown> = { JobID: jobId, Meta: req.meta };
    if (req.payload !== undefined) body.Payload = req.payload.toString("base64");
    const answer = await retried(
      {
        method: "POST",
        path: `/v1/job/${encodeURIComponent(jobId)}/dispatch`,
        action: "dispatch",
        schema: DispatchResponse,
        query: { idempotency_token: req.idempotencyToken },
        body,
      },
      signal,
      (err) => err.unavailable && !isPermanentDispatchError(err),
    );
    const res = required(answer, "dispatch");
    return { id: res.value.DispatchedJobID, evalId: res.value.EvalID, duplicate: res.value.EvalID === "" };
  }

  async function readSpec(jobId: string, signal: AbortSignal | undefined): Promise<ParameterizedSpec> {
    const answer = await retried({ method: "GET", path: jobPath(jobId), action: "read job", schema: Job, optional: true }, signal);
    if (!answer) {
      throw new AppError("not_found", `Nomad job "${jobId}" not found${inNamespace(opts.namespace)}`);
    }
    const job = answer.value;
    const p = job.ParameterizedJob;
    if (!p || job.Dispatched) {
      throw new AppError("config_invalid", `Nomad job "${jobId}" is not a parameterized job; a builder must be a parameterized batch job`);
    }
    const payload = p.Payload === "" ? "optional" : p.Payload;
    if (payload !== "optional" && payload !== "required" && payload !== "forbidden") {
      throw new AppError("config_invalid", `Nomad job "${jobId}" has an unknown payload rule "${payload}"`);
    }
    return { payload, metaRequired: p.MetaRequired, metaOptional: p.MetaOptional };
  }

  return {
    dispatch(jobId, req, { signal } = {}) {
      signal?.throwIfAborted();
      return dispatchOnce(jobId, req, signal);
    },

    parameterized(jobId, { signal } = {}) {
      signal?.throwIfAborted();
      const cached = specs.get(jobId);
      if (cached && cached.expires > now()) return untilAborted(cached.spec, signal);
      // Shared by concurrent callers, so one caller's abort must not fail the others: the read runs on its
      // own, bounded by the retry budget.
      const spec = readSpec(jobId, undefined);
      specs.set(jobId, { expires: now() + ttlMs, spec });
      spec.catch(() => {
        if (specs.get(jobId)?.spec === spec) specs.delete(jobId);
      });
      return untilAborted(spec, signal);
    },

    async readJob(id, b = {}) {
      const answer = await blocking({ method: "GET", path: jobPath(id), action: "read job", schema: Job, optional: true }, b);
      return answer && { job: answer.value, index: answer.index };
    },

    async jobAllocations(id, b = {}) {
      const answer = await blocking(
        {
          method: "GET",
          path: `${jobPath(id)}/allocations`,
          action: "list allocations",
          schema: AllocationStub.array(),
          query: { all: String(b.all ?? false) },
        },
        b,
      );
      const res = required(answer, "list allocations");
      return { allocations: res.value, index: res.index };
    },

    async allocation(allocId, b = {}) {
      const answer = await blocking(
        {
          method: "GET",
          path: `/v1/allocation/${encodeURIComponent(allocId)}`,
          action: "read allocation",
          schema: Allocation,
          optional: true,
        },
        b,
      );
      return answer && { allocation: answer.value, index: answer.index };
    },

    async listJobs({ prefix, meta, signal }) {
      const query = { prefix, meta: meta === true ? "true" : undefined };
      const answer = await retried({ method: "GET", path: "/v1/jobs", action: "list jobs", schema: JobListStub.array(), query }, signal);
      return required(answer, "list jobs").value;
    },

    async listJobsIndexed({ prefix, signal }) {
      const answer = await retried(
        { method: "GET", path: "/v1/jobs", action: "list jobs", schema: JobListStub.array(), query: { prefix } },
        signal,
      );
      const res = required(answer, "list jobs");
      return { jobs: res.value, index: res.index };
    },

    async listJobsPage({ prefix, perPage, nextToken, signal }) {
      const answer = await retried(
        {
          method: "GET",
          path: "/v1/jobs",
          action: "list jobs",
          schema: JobListStub.array(),
          query: { prefix, per_page: String(perPage), next_token: nextToken },
        },
        signal,
      );
      const res = required(answer, "list jobs");
      return { jobs: res.value, ...(res.nextToken === undefined ? {} : { nextToken: res.nextToken }) };
    },

    async jobEvaluations(id, b = {}) {
      const answer = await blocking(
        { method: "GET", path: `${jobPath(id)}/evaluations`, action: "list evaluations", schema: Evaluation.array() },
        b,
      );
      const res = required(answer, "list evaluations");
      return { evaluations: res.value, index: res.index };
    },

    streamLogs(allocId, o) {
      const query: [string, string][] = [
        ["task", o.task],
        ["type", o.type],
        ["follow", String(o.follow)],
        ["origin", o.origin ?? "start"],
        ["offset", String(Math.max(0, Math.floor(o.offset)))],
      ];
      return stream(
        `/v1/client/fs/logs/${encodeURIComponent(allocId)}`,
        query,
        "stream logs",
        o.signal,
        o.idleTimeoutMs ?? DEFAULT_LOG_IDLE_MS,
      );
    },

    streamFile(allocId, o) {
      const query: [string, string][] = [
        ["path", o.path],
        ["follow", String(o.follow)],
        ["origin", "start"],
        ["offset", String(Math.max(0, Math.floor(o.offset)))],
      ];
      return stream(
        `/v1/client/fs/stream/${encodeURIComponent(allocId)}`,
        query,
        "stream file",
        o.signal,
        o.idleTimeoutMs ?? DEFAULT_LOG_IDLE_MS,
      );
    },

    eventStream(o) {
      const query: [string, string][] = [["index", String(Math.max(0, Math.floor(o.index)))]];
      for (const topic of o.topics) query.push(["topic", topic]);
      return stream("/v1/event/stream", query, "event stream", o.signal, o.idleTimeoutMs ?? DEFAULT_EVENT_IDLE_MS);
    },

    async stopJob(id, { purge, signal } = {}) {
      const answer = await retried(
        {
          method: "DELETE",
          path: jobPath(id),
          action: "stop job",
          schema: DeregisterResponse,
          query: { purge: purge === undefined ? undefined : String(purge) },
        },
        signal,
      );
      const res = required(answer, "stop job").value;
      return { evalId: res.EvalID, index: res.Index };
    },

    async parseJob(hcl, { canonicalize, signal } = {}) {
      const answer = await retried(
        {
          method: "POST",
          path: "/v1/jobs/parse",
          action: "parse job",
          schema: ParsedJob,
          body: { JobHCL: hcl, Canonicalize: canonicalize ?? false },
        },
        signal,
        onlyOutages,
      );
      return required(answer, "parse job").value;
    },

    async registerJob(job, { source, signal } = {}) {
      const body: Record<string, unknown> = { Job: job };
      if (source !== undefined) body.Submission = { Source: source, Format: "hcl2" };
      const answer = await retried(
        { method: "POST", path: "/v1/jobs", action: "register job", schema: RegisterResponse, body },
        signal,
        onlyOutages,
      );
      const res = required(answer, "register job").value;
      return { evalId: res.EvalID, jobModifyIndex: res.JobModifyIndex, warnings: res.Warnings, index: res.Index };
    },

    async variableLock(op, path, lock, { signal, timeoutMs } = {}) {
      const body: Record<string, unknown> = { Path: path, Lock: {} };
      const lockBody = body.Lock as Record<string, string>;
      if (lock.id !== undefined) lockBody.ID = lock.id;
      if (op === "acquire") {
        if (lock.ttl !== undefined) lockBody.TTL = lock.ttl;
        if (lock.lockDelay !== undefined) lockBody.LockDelay = lock.lockDelay;
      }
      if (opts.namespace) body.Namespace = opts.namespace;
      const u = url(`/v1/var/${path.split("/").map(encodeURIComponent).join("/")}`, []);
      // A bare `?lock-acquire` (no `=`), as Nomad's own API client sends it.
      u.search = u.search ? `${u.search}&lock-${op}` : `?lock-${op}`;
      const answer = await request({
        service: "nomad",
        action: `lock-${op}`,
        dispatcher: opts.dispatcher,
        method: "PUT",
        url: u,
        headers: headers(true),
        body: JSON.stringify(body),
        schema: VariableLockAnswer,
        answers: (status) => status === 409,
        ...(timeoutMs === undefined ? {} : { headersTimeoutMs: timeoutMs, bodyTimeoutMs: timeoutMs }),
        signal,
      });
      if (answer.status === 409) return { held: false };
      const id = answer.value?.Lock?.ID;
      return id ? { held: true, id } : { held: op !== "release" };
    },

    async leader(signal) {
      const answer = await call({ method: "GET", path: "/v1/status/leader", action: "leader", schema: NomadLeader }, signal, {
        budgetMs,
        retries: 0,
        minDelayMs: 0,
      });
      return required(answer, "leader").value;
    },
  };
}

// Registration and parse report validation problems as 500
// (https://github.com/hashicorp/nomad/blob/main/command/agent/http.go `wrap`); only outages are retried.
function onlyOutages(err: UpstreamError): boolean {
  return err.upstreamStatus === 0 || err.upstreamStatus === 429 || (err.upstreamStatus >= 502 && err.upstreamStatus <= 504);
}

function required<T>(answer: T | undefined, action: string): T {
  if (answer === undefined) throw new UpstreamError("nomad", 404, "not found", { action });
  return answer;
}

function jobPath(id: string): string {
  return `/v1/job/${encodeURIComponent(id)}`;
}

function inNamespace(namespace: string | undefined): string {
  return namespace ? ` in namespace "${namespace}"` : "";
}
