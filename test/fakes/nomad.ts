import { randomUUID } from "node:crypto";
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { parse as parseHcl } from "@cdktf/hcl2json";
import {
  ALLOC_DEFAULTS,
  DESIRED_TRANSITION,
  GROUP_DEFAULTS,
  JOB_DEFAULTS,
  TASK_DEFAULTS,
  TASK_EVENT_DEFAULTS,
  withDefaults,
} from "./nomad-defaults.js";
import { createVariableLocks } from "./nomad-locks.js";
import { assertExpected } from "./strict.js";

// A Nomad agent on 127.0.0.1 that follows Nomad's HTTP API (https://developer.hashicorp.com/nomad/api-docs, source
// https://github.com/hashicorp/nomad/tree/main/command/agent) and the recordings in test/fixtures/nomad.
// State is one Raft-like index plus tables of jobs, evaluations and allocations; every change goes through
// `commit`, which wakes blocking queries and hands the change's events to subscribers (a later event stream).

/** A job as the fake stores and serves it: Nomad's JSON shape. */
export interface FakeJob {
  [field: string]: unknown;
  ID: string;
  Name: string;
  Namespace: string;
  ParentID: string;
  Type: string;
  Priority: number;
  Status: string;
  StatusDescription: string;
  Stop: boolean;
  Dispatched: boolean;
  DispatchIdempotencyToken: string;
  ParameterizedJob: { Payload: string; MetaRequired: string[] | null; MetaOptional: string[] | null } | null;
  Periodic: unknown;
  Payload: string | null;
  Meta: Record<string, string> | null;
  TaskGroups: { Name: string; Count?: number; Tasks?: { Name: string; [k: string]: unknown }[]; [k: string]: unknown }[];
  SubmitTime: number;
  Version: number;
  CreateIndex: number;
  ModifyIndex: number;
  JobModifyIndex: number;
}

export interface FakeEval {
  ID: string;
  Namespace: string;
  Priority: number;
  Type: string;
  TriggeredBy: string;
  JobID: string;
  JobModifyIndex: number;
  Status: "pending" | "blocked" | "complete" | "failed" | "canceled";
  StatusDescription: string;
  FailedTGAllocs: Record<string, unknown> | null;
  BlockedEval: string;
  PreviousEval: string;
  CreateIndex: number;
  ModifyIndex: number;
  CreateTime: number;
  ModifyTime: number;
}

export interface FakeTaskEvent {
  Type: string;
  Time: number;
  Message: string;
  DisplayMessage: string;
  Details: Record<string, string>;
  [deprecated: string]: unknown;
}

export interface FakeTaskState {
  State: "pending" | "running" | "dead";
  Failed: boolean;
  Restarts: number;
  LastRestart: string;
  StartedAt: string;
  FinishedAt: string;
  Events: FakeTaskEvent[];
}

export interface FakeAlloc {
  ID: string;
  EvalID: string;
  Name: string;
  Namespace: string;
  NodeID: string;
  NodeName: string;
  JobID: string;
  JobType: string;
  JobVersion: number;
  TaskGroup: string;
  DesiredStatus: "run" | "stop" | "evict";
  DesiredDescription: string;
  ClientStatus: "pending" | "running" | "complete" | "failed" | "lost" | "unknown";
  ClientDescription: string;
  TaskStates: Record<string, FakeTaskState>;
  FollowupEvalID: string;
  NextAllocation: string;
  CreateIndex: number;
  ModifyIndex: number;
  AllocModifyIndex: number;
  CreateTime: number;
  ModifyTime: number;
}

/** One event as Nomad's event stream would carry it (https://developer.hashicorp.com/nomad/api-docs/events). */
export interface FakeEvent {
  Topic: "Job" | "Evaluation" | "Allocation";
  Type: string;
  Key: string;
  Namespace: string;
  /** Null on Job events; the job ID and deployment ID on the others (test/fixtures/nomad/event-stream). */
  FilterKeys: string[] | null;
  Index: number;
  Payload: Record<string, unknown>;
}

export interface RecordedRequest {
  method: string;
  /** The path as sent, still percent-encoded. */
  path: string;
  query: Record<string, string>;
  headers: IncomingHttpHeaders;
  body: string;
}

export interface NomadFakeOptions {
  /** With a token set, ACLs are on: every request must carry it, else 403 `Permission denied`. */
  aclToken?: string;
  region?: string;
  /** Emulate Nomad before 1.11.2: concurrent dispatches with one token both create children (GH #26690). */
  dispatchRace?: boolean;
  /** How long a dispatch waits between its token check and its write when the race is emulated. */
  raceWindowMs?: number;
  /** Log streams (https://github.com/hashicorp/nomad/blob/main/client/fs_endpoint.go): heartbeat period (Nomad: 1000 ms), batch window (200 ms), largest frame (64 KiB). */
  logHeartbeatMs?: number;
  logBatchMs?: number;
  logFrameSize?: number;
  /** Event stream (https://github.com/hashicorp/nomad/blob/main/nomad/event_endpoint.go): heartbeat period (Nomad: 30 s) and batches kept for resuming (100). */
  eventHeartbeatMs?: number;
  eventBufferSize?: number;
  /**
   * `close` (default): a hand-built 200 on the raw connection with no length and no chunking, as v1.11.2+
   * hijacking agents send; `chunked`: an ordinary streamed response, as earlier versions did
   * (https://github.com/hashicorp/nomad/blob/main/command/agent/event_endpoint.go).
   */
  eventFraming?: "close" | "chunked";
  /** Tokens accepted like `aclToken` except for variables, whose writes they are denied (403), as a policy without `variables` would. */
  tokensWithoutVariables?: string[];
  /** Shortest lock TTL accepted; Nomad's is 10 s (nomad/structs/variables.go), tests of failover lower it. */
  minLockTtlMs?: number;
}

export type FakeLogType = "stdout" | "stderr";

export interface PlaceOptions {
  node?: string;
  namespace?: string;
}

export interface TaskOptions {
  task?: string;
  namespace?: string;
}

/** The running fake: its URL, what it received, and hooks that drive allocations like a Nomad client would. */
export interface NomadFake {
  url: string;
  requests: RecordedRequest[];
  /** Requests the fake does not model (answered 501); `close()` rejects while this is not empty. */
  unexpected: string[];
  close(): Promise<void>;
  /** Registers a job as `POST /v1/jobs` would; returns its ID. */
  registerJob(job: Record<string, unknown>, opts?: { namespace?: string }): string;
  job(id: string, namespace?: string): FakeJob | undefined;
  /** IDs of the dispatched children of `parentId`, oldest first. */
  children(parentId: string, namespace?: string): string[];
  allocations(jobId: string, namespace?: string): FakeAlloc[];
  evaluations(jobId: string, namespace?: string): FakeEval[];
  /** The `Submission` (source HCL) sent with the job's latest registration. */
  submission(jobId: string, namespace?: string): unknown;
  /** While down, every connection is dropped without an answer. */
  setDown(down: boolean): void;
  /** The next `n` requests (matching `match`, if given) get `status` with `text` as a plain-text body. */
  failNext(n: number, status: number, text: string, match?: { method?: string; path?: RegExp }): void;
  /** Delay before every answer. */
  setLatency(ms: number): void;
  setDispatchRace(on: boolean): void;
  /** What `POST /v1/jobs/parse` answers instead of parsing; `undefined` goes back to parsing the HCL. */
  setParseResult(job: Record<string, unknown> | undefined): void;
  /** Receives every committed batch of changes. */
  subscribe(listener: (index: number, events: FakeEvent[]) => void): () => void;
  /** The scheduler places the job's pending evaluation on `node`; the client receives it. Returns the alloc ID. */
  placeAlloc(jobId: string, opts?: PlaceOptions): string;
  /**
   * The placement fails (no feasible node): a blocked evaluation stays and the job stays pending. With `giveUp`,
   * the evaluation ends `failed` instead (Nomad stops trying, as after its delivery limit) and none is blocked.
   */
  failPlacement(jobId: string, opts?: { namespace?: string; reason?: string; giveUp?: boolean }): void;
  startTask(jobId: string, opts?: TaskOptions): void;
  /** The task exits with `exitCode`; non-zero fails it (restart attempts = 0). Starts it first if needed. */
  finishTask(jobId: string, exitCode: number, opts?: TaskOptions): void;
  /** The driver cannot start the task (e.g. an image pull): it fails without ever starting. */
  failTaskSetup(jobId: string, message: string, opts?: TaskOptions): void;
  /** The node running the job's allocation goes away. */
  loseAlloc(jobId: string, opts?: { namespace?: string }): void;
  /** Appends to the task's current log file `<task>.<type>.<N>` of the job's latest allocation. */
  writeLog(jobId: string, type: FakeLogType, bytes: string | Uint8Array, opts?: TaskOptions): void;
  /** logmon starts file N+1; with `maxFiles`, the oldest files beyond it are deleted (https://developer.hashicorp.com/nomad/docs/job-specification/logs). */
  rotateLog(jobId: string, type: FakeLogType, opts?: TaskOptions & { maxFiles?: number }): void;
  /** The current log file shrinks to nothing (followers get `file truncated`). */
  truncateLog(jobId: string, type: FakeLogType, opts?: TaskOptions): void;
  /**
   * Appends to a file of the job's latest allocation directory (`alloc/petrel/all.log`, say), creating it, as a
   * task writing under `${NOMAD_ALLOC_DIR}` would; `/v1/client/fs/stream` serves it.
   */
  writeAllocFile(jobId: string, path: string, bytes: string | Uint8Array, opts?: { namespace?: string }): void;
  /** The task's log files that still exist, oldest first. */
  logFiles(jobId: string, type: FakeLogType, opts?: TaskOptions): { name: string; size: number }[];
  /** Garbage-collects the job's latest allocation: it and its log files are gone. Returns its ID. */
  gcAlloc(jobId: string, opts?: { namespace?: string }): string;
  /**
   * Nomad's job GC (contracts/nomad.md §2: `job_gc_threshold` after a batch job is dead): the job, its
   * evaluations, allocations and their log files are forgotten, as if never there. Throws unless the job is dead.
   */
  gcJob(jobId: string, opts?: { namespace?: string }): void;
  /** Drops every open log-stream connection mid-stream; returns how many. */
  cutLogStreams(): number;
  openLogStreams(): number;
  /** Drops every open event-stream connection; returns how many. */
  cutEventStreams(): number;
  openEventStreams(): number;
  /** The next `n` event-stream requests get a 200 that closes before the first `{}` (a v1.11.2+ auth failure). */
  failEventStreams(n: number): void;
  /** The current index (the last committed change). */
  index(): number;
  /** The lock ID holding the variable at `path`, if any. */
  lockHolder(path: string, namespace?: string): string | undefined;
}

const DISPATCH_PAYLOAD_LIMIT = 16 * 1024;
const MAX_PRIORITY = 100;
const MAX_WAIT_MS = 300_000;
const MAX_TASK_EVENTS = 10;
const ZERO_TIME = "0001-01-01T00:00:00Z";
const LEADER = "127.0.0.1:4647";
const TEXT = "text/plain; charset=utf-8";
/** The client's allocation directory root, as it shows in `stat` errors. */
const ALLOC_ROOT = "/var/lib/nomad/alloc";

/** An answer that is not a success: Nomad writes the status and the bare message as plain text (https://github.com/hashicorp/nomad/blob/main/command/agent/http.go `wrap`). */
class NomadHttpError extends Error {
  readonly status: number;
  constructor(status: number, message: string) {
    super(message);
    this.status = status;
  }
}

interface FailRule {
  remaining: number;
  status: number;
  text: string;
  method?: string;
  path?: RegExp;
}

interface AllocRecord {
  alloc: FakeAlloc;
  /** The job as it was when the alloc was placed (served as `Allocation.Job`). */
  job: FakeJob;
  /** Tells an alloc of this job from one of an earlier job with the same ID (`?all=`). */
  jobCreateIndex: number;
}

interface LogFile {
  n: number;
  buf: Buffer;
  size: number;
  deleted: boolean;
  /** Bumped by each truncation, so a follower notices one even when new bytes came right after. */
  truncations: number;
}

interface LogState {
  task: string;
  type: FakeLogType;
  files: LogFile[];
  /** The allocation was garbage-collected: followers get `file deleted` and an error tail. */
  gone: boolean;
  followers: Set<() => void>;
}

interface EventBatch {
  Index: number;
  Events: FakeEvent[];
}

interface State {
  index: number;
  tables: { jobs: number; evals: number; allocs: number };
  jobs: Map<string, FakeJob>;
  evals: Map<string, FakeEval>;
  allocs: Map<string, AllocRecord>;
  nodes: Map<string, string>;
  /** `Submission` of the latest registration (source HCL), by job. */
  submissions: Map<string, unknown>;
  pending: FakeEvent[];
  /** The last `eventBufferSize` batches, for `/v1/event/stream?index=` (https://developer.hashicorp.com/nomad/docs/configuration/server). */
  eventBuffer: EventBatch[];
  /** Log files by allocation, then `<task>\0<type>`. */
  logs: Map<string, Map<string, LogState>>;
  /** Other files of allocation directories, by allocation then path (one file each, never rotated). */
  allocFiles: Map<string, Map<string, LogState>>;
  waiters: Set<() => void>;
  listeners: Set<(index: number, events: FakeEvent[]) => void>;
}

type Query = URLSearchParams;

/** Starts the fake on 127.0.0.1 with a free port. */
export async function startNomadFake(opts: NomadFakeOptions = {}): Promise<NomadFake> {
  const region = opts.region ?? "global";
  /** The key that signs workload identities: one per agent. */
  const signingKeyId = randomUUID();
  const unexpected: string[] = [];
  const state: State = {
    index: 1,
    tables: { jobs: 0, evals: 0, allocs: 0 },
    jobs: new Map(),
    evals: new Map(),
    allocs: new Map(),
    nodes: new Map(),
    submissions: new Map(),
    pending: [],
    eventBuffer: [],
    logs: new Map(),
    allocFiles: new Map(),
    waiters: new Set(),
    listeners: new Set(),
  };
  const requests: RecordedRequest[] = [];
  const failRules: FailRule[] = [];
  const locks = createVariableLocks({
    next: () => next(),
    parseDuration: parseGoDuration,
    ...(opts.minLockTtlMs === undefined ? {} : { minTtlMs: opts.minLockTtlMs }),
  });
  let down = false;
  let latencyMs = 0;
  let dispatchRace = opts.dispatchRace ?? false;
  let parseResult: Record<string, unknown> | undefined;
  let closing = false;
  const logHeartbeatMs = opts.logHeartbeatMs ?? 1000;
  const logBatchMs = opts.logBatchMs ?? 200;
  const logFrameSize = opts.logFrameSize ?? 64 * 1024;
  const eventHeartbeatMs = opts.eventHeartbeatMs ?? 30_000;
  const eventBufferSize = opts.eventBufferSize ?? 100;
  const eventFraming = opts.eventFraming ?? "close";
  const logStreams = new Set<{ cut(): void }>();
  const eventStreams = new Set<{ cut(): void }>();
  let failingEventStreams = 0;

  // ---- state changes ----------------------------------------------------------------------------

  const key = (ns: string, id: string) => `${ns}\u0000${id}`;

  function next(): number {
    state.index += 1;
    return state.index;
  }

  function emit(event: Omit<FakeEvent, "Index">): void {
    state.pending.push({ ...event, Index: state.index });
  }

  function commit(): void {
    const events = state.pending;
    state.pending = [];
    if (events.length > 0) {
      state.eventBuffer.push({ Index: state.index, Events: events });
      if (state.eventBuffer.length > eventBufferSize) state.eventBuffer.splice(0, state.eventBuffer.length - eventBufferSize);
    }
    for (const listener of state.listeners) listener(state.index, events);
    for (const wake of [...state.waiters]) wake();
  }

  function jobEvent(type: string, job: FakeJob): void {
    emit({ Topic: "Job", Type: type, Key: job.ID, Namespace: job.Namespace, FilterKeys: null, Payload: { Job: clone(job) } });
  }

  function evalEvent(ev: FakeEval): void {
    emit({
      Topic: "Evaluation",
      Type: "EvaluationUpdated",
      Key: ev.ID,
      Namespace: ev.Namespace,
      FilterKeys: [ev.JobID, ""],
      // Like allocations, evaluations travel the event stream omitempty-encoded (test/fixtures/nomad/event-stream).
      Payload: { Evaluation: omitEmpty(clone(ev) as unknown as Record<string, unknown>) },
    });
  }

  function allocEvent(type: string, alloc: FakeAlloc): void {
    emit({
      Topic: "Allocation",
      Type: type,
      Key: alloc.ID,
      Namespace: alloc.Namespace,
      FilterKeys: [alloc.JobID, ""],
      // The state store's allocation: encoded with omitempty, and `JobType` only exists on list stubs.
      Payload: { Allocation: omitEmpty({ ...fullAlloc(alloc), JobType: undefined }) },
    });
  }

  function putEval(ev: FakeEval, idx: number): void {
    ev.ModifyIndex = idx;
    ev.ModifyTime = nowNs();
    state.evals.set(ev.ID, ev);
    state.tables.evals = idx;
    evalEvent(ev);
  }

  function newEval(job: FakeJob, triggeredBy: string, idx: number, status: FakeEval["Status"]): FakeEval {
    const ev: FakeEval = {
      ID: randomUUID(),
      Namespace: job.Namespace,
      Priority: job.Priority,
      Type: job.Type,
      TriggeredBy: triggeredBy,
      JobID: job.ID,
      JobModifyIndex: job.JobModifyIndex,
      Status: status,
      StatusDescription: "",
      FailedTGAllocs: null,
      BlockedEval: "",
      PreviousEval: "",
      CreateIndex: idx,
      ModifyIndex: idx,
      CreateTime: nowNs(),
      ModifyTime: nowNs(),
    };
    putEval(ev, idx);
    return ev;
  }

  function evalsOf(ns: string, jobId: string): FakeEval[] {
    return [...state.evals.values()].filter((e) => e.Namespace === ns && e.JobID === jobId).sort((a, b) => a.CreateIndex - b.CreateIndex);
  }

  function allocsOf(ns: string, jobId: string, all = true): AllocRecord[] {
    const job = state.jobs.get(key(ns, jobId));
    return [...state.allocs.values()]
      .filter((r) => r.alloc.Namespace === ns && r.alloc.JobID === jobId)
      .filter((r) => all || r.jobCreateIndex === job?.CreateIndex)
      .sort((a, b) => a.alloc.CreateIndex - b.alloc.CreateIndex);
  }

  function childrenOf(ns: string, parentId: string): FakeJob[] {
    return [...state.jobs.values()]
      .filter((j) => j.Namespace === ns && j.ParentID === parentId && j.ID.startsWith(parentId))
      .sort((a, b) => a.CreateIndex - b.CreateIndex);
  }

  /** `getJobStatus` of https://github.com/hashicorp/nomad/blob/main/nomad/state/state_store.go. */
  function statusOf(job: FakeJob): FakeJob["Status"] {
    if ((job.ParameterizedJob && !job.Dispatched) || job.Periodic) return job.Stop ? "dead" : "running";
    if (allocsOf(job.Namespace, job.ID, false).some((r) => !isTerminal(r.alloc))) return "running";
    const evals = evalsOf(job.Namespace, job.ID).filter((e) => e.CreateIndex >= job.CreateIndex);
    if (evals.some((e) => e.Status === "pending" || e.Status === "blocked")) return "pending";
    if (evals.length > 0 || job.Stop) return "dead";
    return "pending";
  }

  function refreshJobStatus(ns: string, jobId: string, idx: number): void {
    const job = state.jobs.get(key(ns, jobId));
    if (!job) return;
    const status = statusOf(job);
    if (status === job.Status) return;
    job.Status = status;
    job.ModifyIndex = idx;
    state.tables.jobs = idx;
    jobEvent("JobRegistered", job);
  }

  function putAlloc(record: AllocRecord, idx: number, type = "AllocationUpdated"): void {
    const { alloc } = record;
    alloc.ModifyIndex = idx;
    alloc.ModifyTime = nowNs();
    state.allocs.set(alloc.ID, record);
    state.tables.allocs = idx;
    allocEvent(type, alloc);
    refreshJobStatus(alloc.Namespace, alloc.JobID, idx);
  }

  function canonicalJob(input: Record<string, unknown>, ns: string): FakeJob {
    const job = clone(input) as Partial<FakeJob> & Record<string, unknown>;
    const id = String(job.ID);
    const p = job.ParameterizedJob;
    const groups = Array.isArray(job.TaskGroups) ? job.TaskGroups : [];
    return withDefaults(
      {
        ...job,
        ID: id,
        Name: typeof job.Name === "string" && job.Name ? job.Name : id,
        Namespace: ns,
        ParentID: typeof job.ParentID === "string" ? job.ParentID : "",
        Type: typeof job.Type === "string" && job.Type ? job.Type : "service",
        Priority: typeof job.Priority === "number" && job.Priority ? job.Priority : 50,
        Datacenters: Array.isArray(job.Datacenters) && job.Datacenters.length ? job.Datacenters : ["*"],
        Status: "",
        StatusDescription: "",
        Stop: false,
        Dispatched: job.Dispatched === true,
        DispatchIdempotencyToken: typeof job.DispatchIdempotencyToken === "string" ? job.DispatchIdempotencyToken : "",
        ParameterizedJob: p
          ? { Payload: p.Payload || "optional", MetaRequired: p.MetaRequired ?? null, MetaOptional: p.MetaOptional ?? null }
          : null,
        Periodic: job.Periodic ?? null,
        Payload: typeof job.Payload === "string" && job.Payload ? job.Payload : null,
        Meta: job.Meta && typeof job.Meta === "object" ? job.Meta : null,
        TaskGroups: groups.map((g) =>
          withDefaults(
            { ...g, Count: g.Count ?? 1, Tasks: (g.Tasks ?? []).map((t) => withDefaults(nilEmpty(t), TASK_DEFAULTS)) },
            GROUP_DEFAULTS,
          ),
        ),
        SubmitTime: 0,
        Version: 0,
        CreateIndex: 0,
        ModifyIndex: 0,
        JobModifyIndex: 0,
      },
      JOB_DEFAULTS,
    );
  }

  /** Register (https://developer.hashicorp.com/nomad/api-docs/jobs#create-job): canonicalise, validate, upsert; a new version only when the spec changed. */
  function register(input: Record<string, unknown>, ns: string): { job: FakeJob; evalId: string; evalIndex: number } {
    const job = canonicalJob(input, ns);
    if (job.ParameterizedJob && job.Type !== "batch" && job.Type !== "sysbatch") {
      throw new NomadHttpError(500, multiError('Parameterized job can only be used with "batch" or "sysbatch" scheduler'));
    }
    const p = job.ParameterizedJob;
    const overlap = (p?.MetaRequired ?? []).filter((k) => (p?.MetaOptional ?? []).includes(k));
    if (overlap.length) {
      throw new NomadHttpError(
        500,
        multiError(`Required and optional meta keys should be disjoint. Following keys exist in both: ${goList(overlap)}`),
      );
    }
    const existing = state.jobs.get(key(ns, job.ID));
    if (existing && Boolean(existing.ParameterizedJob) !== Boolean(job.ParameterizedJob)) {
      throw new NomadHttpError(
        500,
        existing.ParameterizedJob
          ? "cannot update parameterized job to being non-parameterized"
          : "cannot update non-parameterized job to being parameterized",
      );
    }
    const idx = next();
    job.SubmitTime = nowNs();
    if (existing) {
      job.CreateIndex = existing.CreateIndex;
      const changed = specChanged(existing, job);
      job.Version = changed ? existing.Version + 1 : existing.Version;
      job.JobModifyIndex = changed ? idx : existing.JobModifyIndex;
    } else {
      job.CreateIndex = idx;
      job.JobModifyIndex = idx;
    }
    job.ModifyIndex = idx;
    state.jobs.set(key(ns, job.ID), job);
    state.tables.jobs = idx;
    let evalId = "";
    let evalIndex = 0;
    if (!job.ParameterizedJob && !job.Periodic) {
      evalId = newEval(job, "job-register", idx, "pending").ID;
      evalIndex = idx;
    }
    job.Status = statusOf(job);
    jobEvent("JobRegistered", job);
    commit();
    return { job, evalId, evalIndex };
  }

  /** Stops (or purges) a job (https://developer.hashicorp.com/nomad/api-docs/jobs#stop-a-job); the fake's scheduler and client act at once. */
  function deregister(ns: string, id: string, purge: boolean) {
    const job = state.jobs.get(key(ns, id));
    if (!job) return { EvalID: "", EvalCreateIndex: 0, JobModifyIndex: 0, VolumeEvalID: "", VolumeEvalIndex: 0, Index: 0 };
    const idx = next();
    let evalId = "";
    let evalIndex = 0;
    if (!job.ParameterizedJob || job.Dispatched) {
      if (!job.Periodic) {
        evalId = newEval(job, "job-deregister", idx, "complete").ID;
        evalIndex = idx;
      }
      for (const ev of evalsOf(ns, id)) {
        if (ev.Status === "pending" || ev.Status === "blocked") {
          ev.Status = "canceled";
          putEval(ev, idx);
        }
      }
    }
    for (const record of allocsOf(ns, id)) {
      if (isTerminal(record.alloc)) continue;
      killAlloc(record.alloc);
      putAlloc(record, idx, "AllocationUpdateDesiredStatus");
    }
    if (purge) {
      state.jobs.delete(key(ns, id));
      jobEvent("JobDeregistered", job);
    } else {
      job.Stop = true;
      job.Version += 1;
      job.JobModifyIndex = idx;
      job.ModifyIndex = idx;
      job.Status = statusOf(job);
      jobEvent("JobDeregistered", job);
    }
    state.tables.jobs = idx;
    commit();
    return {
      EvalID: evalId,
      EvalCreateIndex: evalIndex,
      JobModifyIndex: purge ? idx : job.JobModifyIndex,
      VolumeEvalID: "",
      VolumeEvalIndex: 0,
      Index: idx,
      // A write's `WriteMeta`/`QueryMeta` ride along in the body (test/fixtures/nomad/job.stop).
      KnownLeader: false,
      LastContact: 0,
      NextToken: "",
    };
  }

  // ---- dispatch ---------------------------------------------------------------------------------
  // https://developer.hashicorp.com/nomad/api-docs/jobs#dispatch-job

  async function dispatch(ns: string, parentId: string, body: Record<string, unknown>, query: Query) {
    if (!parentId) throw new NomadHttpError(500, "missing parameterized job ID");
    const parent = state.jobs.get(key(ns, parentId));
    if (!parent) throw new NomadHttpError(500, "parameterized job not found");
    const p = parent.ParameterizedJob;
    if (!p || parent.Dispatched) throw new NomadHttpError(500, `Specified job "${parentId}" is not a parameterized job`);
    if (parent.Stop) throw new NomadHttpError(500, `Specified job "${parentId}" is stopped`);

    const payload = decodePayload(pick(body, "Payload"));
    if (p.Payload === "required" && payload.length === 0) {
      throw new NomadHttpError(500, "Payload is not provided but required by parameterized job");
    }
    if (p.Payload === "forbidden" && payload.length > 0) {
      throw new NomadHttpError(500, "Payload provided but forbidden by parameterized job");
    }
    if (payload.length > DISPATCH_PAYLOAD_LIMIT) {
      throw new NomadHttpError(500, `Payload exceeds maximum size; ${payload.length} > ${DISPATCH_PAYLOAD_LIMIT}`);
    }
    const meta = decodeMeta(pick(body, "Meta"));
    const required = p.MetaRequired ?? [];
    const permitted = new Set([...required, ...(p.MetaOptional ?? [])]);
    const unpermitted = Object.keys(meta).filter((k) => !permitted.has(k));
    if (unpermitted.length) {
      throw new NomadHttpError(500, `Dispatch request included unpermitted metadata keys: ${goList(unpermitted)}`);
    }
    const missing = required.filter((k) => !(k in meta));
    if (missing.length) throw new NomadHttpError(500, `Dispatch did not provide required meta keys: ${goList(missing)}`);
    const priority = decodeInt(pick(body, "Priority"), "Priority");
    if (priority !== 0 && (priority < 1 || priority > MAX_PRIORITY)) {
      throw new NomadHttpError(500, `dispatch job priority must be between [1, ${MAX_PRIORITY}]`);
    }

    const bodyToken = pick(body, "IdempotencyToken");
    const token = query.get("idempotency_token") || (typeof bodyToken === "string" ? bodyToken : "");
    const findExisting = () => (token ? childrenOf(ns, parentId).find((c) => c.DispatchIdempotencyToken === token) : undefined);
    let existing = findExisting();
    if (!existing && dispatchRace) {
      // Pre-1.11.2 servers checked the token before the Raft write and not again inside it (GH #26690).
      await sleep(opts.raceWindowMs ?? 50);
      existing = undefined;
    }
    if (existing) {
      // The answer carries the existing child's ModifyIndex (nomad/job_endpoint.go, Dispatch: `reply.Index =
      // found.ModifyIndex`; recorded: dispatch.repeat-token, Index 190 for a child created at 189 and updated
      // once since), and no new evaluation.
      return {
        index: existing.ModifyIndex,
        body: {
          DispatchedJobID: existing.ID,
          EvalID: "",
          EvalCreateIndex: 0,
          JobCreateIndex: existing.CreateIndex,
          Index: existing.ModifyIndex,
        },
      };
    }

    const template = pick(body, "IdPrefixTemplate");
    const prefix = typeof template === "string" && template ? `${template}-` : "";
    const id = `${parentId}/dispatch-${prefix}${Math.floor(Date.now() / 1000)}-${randomUUID().slice(0, 8)}`;
    const idx = next();
    const child: FakeJob = {
      ...clone(parent),
      ID: id,
      Name: id,
      ParentID: parentId,
      Dispatched: true,
      Status: "",
      StatusDescription: "",
      DispatchIdempotencyToken: token,
      Priority: priority || parent.Priority,
      Meta: { ...(parent.Meta ?? {}), ...meta },
      Payload: payload.length ? payload.toString("base64") : null,
      SubmitTime: nowNs(),
      Version: 0,
      CreateIndex: idx,
      ModifyIndex: idx,
      JobModifyIndex: idx,
    };
    state.jobs.set(key(ns, id), child);
    state.tables.jobs = idx;
    let evalId = "";
    let evalIndex = 0;
    if (!parent.Periodic) {
      evalId = newEval(child, "job-register", idx, "pending").ID;
      evalIndex = idx;
    }
    child.Status = statusOf(child);
    jobEvent("JobRegistered", child);
    commit();
    return {
      index: idx,
      body: { DispatchedJobID: id, EvalID: evalId, EvalCreateIndex: evalIndex, JobCreateIndex: idx, Index: idx },
    };
  }

  // ---- read models ------------------------------------------------------------------------------

  function summaryOf(job: FakeJob) {
    const groups: Record<string, Record<string, number>> = {};
    for (const g of job.TaskGroups) {
      groups[g.Name] = { Queued: 0, Complete: 0, Failed: 0, Running: 0, Starting: 0, Lost: 0, Unknown: 0 };
    }
    const allocs = allocsOf(job.Namespace, job.ID, false);
    for (const { alloc } of allocs) {
      const row = groups[alloc.TaskGroup];
      if (!row) continue;
      const field = { pending: "Starting", running: "Running", complete: "Complete", failed: "Failed", lost: "Lost", unknown: "Unknown" }[
        alloc.ClientStatus
      ];
      row[field] = (row[field] ?? 0) + 1;
    }
    const waiting = evalsOf(job.Namespace, job.ID).some(
      (e) => e.CreateIndex >= job.CreateIndex && (e.Status === "pending" || e.Status === "blocked"),
    );
    if (waiting && allocs.length === 0) for (const row of Object.values(groups)) row.Queued = 1;
    const children = { Pending: 0, Running: 0, Dead: 0 };
    let modify = job.ModifyIndex;
    for (const c of childrenOf(job.Namespace, job.ID)) {
      if (c.Status === "running") children.Running++;
      else if (c.Status === "dead") children.Dead++;
      else children.Pending++;
      modify = Math.max(modify, c.ModifyIndex);
    }
    for (const { alloc } of allocs) modify = Math.max(modify, alloc.ModifyIndex);
    for (const e of evalsOf(job.Namespace, job.ID)) modify = Math.max(modify, e.ModifyIndex);
    return {
      JobID: job.ID,
      Namespace: job.Namespace,
      Summary: groups,
      Children: children,
      CreateIndex: job.CreateIndex,
      ModifyIndex: modify,
    };
  }

  function stubOf(job: FakeJob) {
    return {
      ID: job.ID,
      ParentID: job.ParentID,
      Name: job.Name,
      Namespace: job.Namespace,
      Datacenters: job.Datacenters ?? ["*"],
      NodePool: job.NodePool ?? "default",
      Multiregion: null,
      Type: job.Type,
      Priority: job.Priority,
      Periodic: Boolean(job.Periodic),
      // `IsParameterized()`: a dispatched child keeps the block but is not parameterized itself
      // (https://github.com/hashicorp/nomad/blob/main/nomad/structs/structs.go).
      ParameterizedJob: Boolean(job.ParameterizedJob) && !job.Dispatched,
      Stop: job.Stop,
      Status: job.Status,
      StatusDescription: job.StatusDescription,
      JobSummary: summaryOf(job),
      CreateIndex: job.CreateIndex,
      ModifyIndex: job.ModifyIndex,
      JobModifyIndex: job.JobModifyIndex,
      SubmitTime: job.SubmitTime,
    };
  }

  function allocStub(alloc: FakeAlloc) {
    return {
      ID: alloc.ID,
      EvalID: alloc.EvalID,
      Name: alloc.Name,
      Namespace: alloc.Namespace,
      NodeID: alloc.NodeID,
      NodeName: alloc.NodeName,
      JobID: alloc.JobID,
      JobType: alloc.JobType,
      JobVersion: alloc.JobVersion,
      TaskGroup: alloc.TaskGroup,
      DesiredStatus: alloc.DesiredStatus,
      DesiredDescription: alloc.DesiredDescription,
      ClientStatus: alloc.ClientStatus,
      ClientDescription: alloc.ClientDescription,
      DesiredTransition: { ...DESIRED_TRANSITION },
      TaskStates: taskStatesOut(alloc.TaskStates),
      DeploymentStatus: null,
      FollowupEvalID: alloc.FollowupEvalID,
      NextAllocation: alloc.NextAllocation,
      RescheduleTracker: null,
      PreemptedAllocations: null,
      PreemptedByAllocation: "",
      CreateIndex: alloc.CreateIndex,
      ModifyIndex: alloc.ModifyIndex,
      CreateTime: alloc.CreateTime,
      ModifyTime: alloc.ModifyTime,
    };
  }

  /**
   * `structs.Allocation` as `GET /v1/allocation/:id` and the event stream carry it: the stub's fields without the
   * stub-only `JobType` and `DesiredTransition` (all nil), plus resources taken from the job's tasks.
   */
  function fullAlloc(alloc: FakeAlloc): Record<string, unknown> {
    const record = state.allocs.get(alloc.ID);
    const group = record?.job.TaskGroups.find((g) => g.Name === alloc.TaskGroup);
    const tasks = (group?.Tasks ?? []).map((t) => {
      const r = (t.Resources ?? {}) as { CPU?: number; MemoryMB?: number };
      return { name: t.Name, cpu: r.CPU ?? 100, mem: r.MemoryMB ?? 300 };
    });
    const zero = {
      CPU: 0,
      Cores: 0,
      Devices: null,
      DiskMB: 0,
      IOPS: 0,
      MemoryMB: 0,
      MemoryMaxMB: 0,
      NUMA: null,
      Networks: null,
      SecretsMB: 0,
    };
    const { JobType: _stubOnly, DesiredTransition: _unset, ...fields } = allocStub(alloc);
    return {
      ...fields,
      ...structuredClone(ALLOC_DEFAULTS),
      SigningKeyID: signingKeyId,
      AllocModifyIndex: alloc.AllocModifyIndex,
      AllocatedResources: {
        Shared: { DiskMB: 300, Networks: null, Ports: null },
        TaskLifecycles: Object.fromEntries(tasks.map((t) => [t.name, null])),
        Tasks: Object.fromEntries(
          tasks.map((t) => [
            t.name,
            { Cpu: { CpuShares: t.cpu, ReservedCores: null }, Devices: null, Memory: { MemoryMB: t.mem, MemoryMaxMB: 0 }, Networks: null },
          ]),
        ),
      },
      Resources: {
        ...zero,
        CPU: tasks.reduce((n, t) => n + t.cpu, 0),
        DiskMB: 300,
        MemoryMB: tasks.reduce((n, t) => n + t.mem, 0),
        MemoryMaxMB: tasks.reduce((n, t) => n + t.mem, 0),
      },
      SharedResources: { ...zero, DiskMB: 300 },
      TaskResources: Object.fromEntries(tasks.map((t) => [t.name, { ...zero, CPU: t.cpu, MemoryMB: t.mem }])),
    };
  }

  // ---- HTTP -------------------------------------------------------------------------------------

  function authorize(req: IncomingMessage, what: "jobs" | "variables" = "jobs"): void {
    if (opts.aclToken === undefined) return;
    const header = req.headers["x-nomad-token"];
    const bearer = /^Bearer\s+(.+)$/i.exec(req.headers.authorization ?? "")?.[1];
    const token = (Array.isArray(header) ? header[0] : header) || bearer;
    if (token === opts.aclToken) return;
    if (what === "jobs" && token !== undefined && opts.tokensWithoutVariables?.includes(token)) return;
    throw new NomadHttpError(403, "Permission denied");
  }

  /** `PUT /v1/var/:path?lock-*` (test/fakes/nomad-locks.ts cites Nomad's code) and `GET /v1/var/:path`. */
  function variableRoute(req: IncomingMessage, method: string, path: string, query: Query, ns: string, body: string): Answer {
    if (path === "") throw new NomadHttpError(400, "missing variable path");
    if (method === "GET") {
      authorize(req, "variables");
      const v = locks.read(ns, path);
      if (!v) throw new NomadHttpError(404, "variable not found");
      return read(v, v.ModifyIndex);
    }
    if (method !== "PUT" && method !== "POST") throw new NomadHttpError(400, "Invalid method");
    const ops = (["lock-acquire", "lock-renew", "lock-release"] as const).filter((op) => query.has(op));
    if (ops.length > 1) throw new NomadHttpError(400, "multiple lock operations");
    const op = ops[0];
    if (op === undefined) {
      unexpected.push(`${method} /v1/var/ without a lock operation`);
      throw new NomadHttpError(501, "nomad fake: plain variable writes are not modelled");
    }
    if (query.get("cas")) throw new NomadHttpError(400, "CAS can't be used with lock operations");
    const decoded = decodeBody(body);
    authorize(req, "variables");
    try {
      const answer = locks.handle(op, ns, path, decoded);
      return { body: answer.body, index: answer.index, read: false, status: answer.status };
    } catch (err) {
      const e = err as { status?: number; text?: string };
      if (typeof e.status === "number") throw new NomadHttpError(e.status, e.text ?? "");
      throw err;
    }
  }

  /** Holds a GET until `indexOf()` passes `?index=` or `?wait=` runs out (https://developer.hashicorp.com/nomad/api-docs#blocking-queries). */
  async function block(query: Query, indexOf: () => number): Promise<void> {
    const rawIndex = query.get("index");
    const min = rawIndex === null || rawIndex === "" ? 0 : Number(rawIndex);
    if (!Number.isInteger(min) || min < 0) throw new NomadHttpError(400, "Invalid index");
    const rawWait = query.get("wait");
    let wait = MAX_WAIT_MS;
    if (rawWait !== null && rawWait !== "") {
      const ns = parseGoDuration(rawWait);
      if (ns === undefined) throw new NomadHttpError(400, "Invalid wait time");
      wait = Math.min(ns / 1e6, MAX_WAIT_MS);
    }
    if (min === 0) return;
    const deadline = Date.now() + wait;
    while (indexOf() <= min && !closing) {
      const left = deadline - Date.now();
      if (left <= 0) return;
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          state.waiters.delete(done);
          resolve();
        };
        const timer = setTimeout(done, left);
        state.waiters.add(done);
      });
    }
  }

  async function route(req: IncomingMessage, url: URL, body: string): Promise<Answer> {
    const method = req.method ?? "GET";
    const query = url.searchParams;
    let path: string;
    try {
      path = decodeURIComponent(url.pathname);
    } catch {
      throw new NomadHttpError(400, "Bad Request");
    }
    if (path === "/v1/status/leader") {
      if (method !== "GET") throw new NomadHttpError(405, "Invalid method");
      return read(LEADER, state.index);
    }
    const requestedRegion = query.get("region");
    if (requestedRegion && requestedRegion !== region) throw new NomadHttpError(500, "No path to region");
    const ns = query.get("namespace") || "default";

    if (path === "/v1/jobs") {
      if (method === "GET") {
        authorize(req);
        await block(query, () => state.tables.jobs);
        const prefix = query.get("prefix") ?? "";
        const jobs = [...state.jobs.values()]
          .filter((j) => (ns === "*" || j.Namespace === ns) && j.ID.startsWith(prefix))
          .sort((a, b) => (a.ID < b.ID ? -1 : a.ID > b.ID ? 1 : 0));
        // `meta=true` adds each job's Meta to its stub (fixtures/nomad/jobs.list.meta).
        const withMeta = query.get("meta") === "true";
        const stubs = (list: FakeJob[]) => list.map((j) => (withMeta ? { ...stubOf(j), Meta: j.Meta } : stubOf(j)));
        const perPage = Number(query.get("per_page") ?? 0);
        if (!(perPage > 0)) return read(stubs(jobs), state.tables.jobs);
        // Paginated (https://developer.hashicorp.com/nomad/api-docs#pagination): the token names the first job of
        // the next page as `<namespace>.<id>` (nomad/job_endpoint.go `List`, a StructsTokenizer with namespace and ID).
        const token = (j: FakeJob) => `${j.Namespace}.${j.ID}`;
        const from = query.get("next_token") ?? "";
        const ordered = jobs.map((j) => ({ j, t: token(j) })).sort((a, b) => (a.t < b.t ? -1 : a.t > b.t ? 1 : 0));
        const rest = ordered.filter((o) => o.t >= from).map((o) => o.j);
        const page = rest.slice(0, perPage);
        const next = rest[perPage];
        return { ...read(stubs(page), state.tables.jobs), ...(next === undefined ? {} : { nextToken: token(next) }) };
      }
      if (method !== "PUT" && method !== "POST") throw new NomadHttpError(405, "Invalid method");
      return registerRequest(req, query, body, undefined);
    }
    if (path === "/v1/jobs/parse") {
      if (method !== "PUT" && method !== "POST") throw new NomadHttpError(405, "Invalid method");
      return parseRequest(req, body);
    }
    if (path.startsWith("/v1/job/")) return jobRoute(req, method, path.slice("/v1/job/".length), query, ns, body);
    if (path.startsWith("/v1/var/")) return variableRoute(req, method, path.slice("/v1/var/".length), query, ns, body);
    if (path === "/v1/allocations") {
      if (method !== "GET") throw new NomadHttpError(405, "Invalid method");
      authorize(req);
      await block(query, () => state.tables.allocs);
      const prefix = query.get("prefix") ?? "";
      const allocs = [...state.allocs.values()]
        .filter((r) => (ns === "*" || r.alloc.Namespace === ns) && r.alloc.ID.startsWith(prefix))
        .map((r) => allocStub(r.alloc));
      return read(allocs, state.tables.allocs);
    }
    if (path.startsWith("/v1/allocation/")) {
      if (method !== "GET") throw new NomadHttpError(405, "Invalid method");
      const parts = path.slice("/v1/allocation/".length).split("/");
      if (parts.length > 1) throw new NomadHttpError(404, "resource not found");
      authorize(req);
      const id = parts[0] ?? "";
      await block(query, () => state.allocs.get(id)?.alloc.ModifyIndex ?? state.tables.allocs);
      const record = state.allocs.get(id);
      if (!record) throw new NomadHttpError(404, "alloc not found");
      return read(omitEmpty({ ...fullAlloc(record.alloc), Job: clone(record.job) }), record.alloc.ModifyIndex);
    }
    if (path.startsWith("/v1/evaluation/")) {
      if (method !== "GET") throw new NomadHttpError(405, "Invalid method");
      authorize(req);
      const [id = "", sub] = path.slice("/v1/evaluation/".length).split("/");
      const ev = state.evals.get(id);
      if (sub === "allocations") {
        const allocs = [...state.allocs.values()].filter((r) => r.alloc.EvalID === id).map((r) => allocStub(r.alloc));
        return read(allocs, state.tables.allocs);
      }
      if (!ev) throw new NomadHttpError(404, "eval not found");
      return read(ev, ev.ModifyIndex);
    }
    unexpected.push(`${method} ${url.pathname}`);
    throw new NomadHttpError(501, `nomad fake: ${method} ${url.pathname} is not modelled`);
  }

  async function jobRoute(req: IncomingMessage, method: string, rest: string, query: Query, ns: string, body: string) {
    const sub = /\/(dispatch|allocations|evaluations|summary|deployment)$/.exec(rest);
    const id = sub ? rest.slice(0, sub.index) : rest;
    switch (sub?.[1]) {
      case "dispatch": {
        if (method !== "PUT" && method !== "POST") throw new NomadHttpError(405, "Invalid method");
        const decoded = decodeBody(body);
        const bodyId = pick(decoded, "JobID");
        if (typeof bodyId === "string" && bodyId !== "" && bodyId !== id) {
          throw new NomadHttpError(400, "Job ID does not match");
        }
        authorize(req);
        const result = await dispatch(ns, id, decoded, query);
        return write(result.body, result.index);
      }
      case "allocations": {
        if (method !== "GET") throw new NomadHttpError(405, "Invalid method");
        authorize(req);
        const all = parseBool(query.get("all") ?? "false", "all");
        await block(query, () => state.tables.allocs);
        return read(
          allocsOf(ns, id, all).map((r) => allocStub(r.alloc)),
          state.tables.allocs,
        );
      }
      case "evaluations": {
        if (method !== "GET") throw new NomadHttpError(405, "Invalid method");
        authorize(req);
        await block(query, () => state.tables.evals);
        return read(evalsOf(ns, id), state.tables.evals);
      }
      case "summary": {
        if (method !== "GET") throw new NomadHttpError(405, "Invalid method");
        authorize(req);
        const current = () => state.jobs.get(key(ns, id));
        await block(query, () => {
          const job = current();
          return job ? summaryOf(job).ModifyIndex : state.tables.jobs;
        });
        const job = current();
        if (!job) throw new NomadHttpError(404, "job not found");
        const summary = summaryOf(job);
        return read(summary, summary.ModifyIndex);
      }
      case "deployment": {
        if (method !== "GET") throw new NomadHttpError(405, "Invalid method");
        authorize(req);
        return read(null, state.index);
      }
      default:
        break;
    }
    if (method === "GET") {
      authorize(req);
      await block(query, () => state.jobs.get(key(ns, id))?.ModifyIndex ?? state.tables.jobs);
      const job = state.jobs.get(key(ns, id));
      if (!job) throw new NomadHttpError(404, "job not found");
      return read(job, job.ModifyIndex);
    }
    if (method === "DELETE") {
      const purge = parseBool(query.get("purge") ?? "false", "purge", 500);
      authorize(req);
      const res = deregister(ns, id, purge);
      return write(res, res.Index);
    }
    if (method === "PUT" || method === "POST") return registerRequest(req, query, body, id);
    throw new NomadHttpError(405, "Invalid method");
  }

  function registerRequest(req: IncomingMessage, query: Query, body: string, pathId: string | undefined): Answer {
    const decoded = decodeBody(body);
    const job = pick(decoded, "Job");
    if (!job || typeof job !== "object") throw new NomadHttpError(400, "Job must be specified");
    const spec = job as Record<string, unknown>;
    const id = pick(spec, "ID");
    if (typeof id !== "string" || id === "") throw new NomadHttpError(400, "Job ID hasn't been provided");
    if (pathId !== undefined && id !== pathId) throw new NomadHttpError(400, "Job ID does not match name");
    authorize(req);
    const bodyNs = pick(decoded, "Namespace");
    const jobNs = pick(spec, "Namespace");
    const ns = query.get("namespace") || (typeof bodyNs === "string" && bodyNs) || (typeof jobNs === "string" && jobNs) || "default";
    const { job: stored, evalId, evalIndex } = register(normalizeKeys(spec), ns);
    const submission = pick(decoded, "Submission");
    if (submission && typeof submission === "object") state.submissions.set(key(ns, stored.ID), submission);
    return write(
      {
        EvalID: evalId,
        EvalCreateIndex: evalIndex,
        JobModifyIndex: stored.JobModifyIndex,
        Warnings: "",
        Index: stored.ModifyIndex,
        LastContact: 0,
        KnownLeader: false,
        NextToken: "",
      },
      stored.ModifyIndex,
    );
  }

  async function parseRequest(req: IncomingMessage, body: string): Promise<Answer> {
    const decoded = decodeBody(body);
    const hcl = pick(decoded, "JobHCL");
    if (typeof hcl !== "string" || hcl.trim() === "") throw new NomadHttpError(400, "Job spec is empty");
    authorize(req);
    const canonicalize = pick(decoded, "Canonicalize") === true;
    if (parseResult) return write(clone(parseResult));
    let parsed: Record<string, unknown>;
    try {
      parsed = (await parseHcl("job.nomad.hcl", hcl)) as Record<string, unknown>;
    } catch (err) {
      throw new NomadHttpError(400, `Failed to parse job: ${err instanceof Error ? err.message : String(err)}`);
    }
    return write(hclToJob(parsed, canonicalize));
  }

  // ---- logs and the event stream: streamed answers ----------------------------------------------

  function logKey(task: string, type: FakeLogType): string {
    return `${task}\u0000${type}`;
  }

  function logStateOf(allocId: string, task: string, type: FakeLogType, create: boolean): LogState | undefined {
    let byTask = state.logs.get(allocId);
    if (!byTask) {
      if (!create) return undefined;
      byTask = new Map();
      state.logs.set(allocId, byTask);
    }
    let log = byTask.get(logKey(task, type));
    if (!log && create) {
      log = { task, type, files: [], gone: false, followers: new Set() };
      byTask.set(logKey(task, type), log);
    }
    return log;
  }

  function liveFiles(log: LogState): LogFile[] {
    return log.files.filter((f) => !f.deleted);
  }

  function wakeFollowers(log: LogState): void {
    for (const wake of [...log.followers]) wake();
  }

  /** `origin`/`offset` to a position: forward from the lowest file or backward from the highest
   * (https://github.com/hashicorp/nomad/blob/main/client/fs_endpoint.go `findClosest`). */
  function startPosition(log: LogState, origin: string, offset: number): { n: number; pos: number } {
    const files = liveFiles(log);
    const first = files[0];
    const last = files.at(-1);
    if (!first || !last) return { n: 0, pos: 0 };
    if (origin === "end") {
      let back = Math.max(0, offset);
      for (let i = files.length - 1; i >= 0; i--) {
        const f = files[i] as LogFile;
        if (back <= f.size) return { n: f.n, pos: f.size - back };
        back -= f.size;
      }
      return { n: first.n, pos: 0 };
    }
    let skip = Math.max(0, offset);
    for (const f of files) {
      if (skip < f.size) return { n: f.n, pos: skip };
      skip -= f.size;
    }
    return { n: last.n, pos: last.size };
  }

  function logFrame(fields: { Offset?: number; Data?: Buffer; File?: string; FileEvent?: string }): string {
    // omitempty, keys sorted as the agent sends them (test/fixtures/nomad/logs.stdout.framed); []byte as base64.
    const parts: string[] = [];
    if (fields.Data && fields.Data.length > 0) parts.push(`"Data":"${fields.Data.toString("base64")}"`);
    if (fields.File) parts.push(`"File":${JSON.stringify(fields.File)}`);
    if (fields.FileEvent) parts.push(`"FileEvent":${JSON.stringify(fields.FileEvent)}`);
    if (fields.Offset) parts.push(`"Offset":${fields.Offset}`);
    return `{${parts.join(",")}}`;
  }

  function goParseBool(raw: string | null, field: string): boolean {
    if (raw === null || raw === "") return false;
    if (["1", "t", "T", "TRUE", "true", "True"].includes(raw)) return true;
    if (["0", "f", "F", "FALSE", "false", "False"].includes(raw)) return false;
    throw new NomadHttpError(
      400,
      `failed to parse ${field} field to boolean: strconv.ParseBool: parsing ${JSON.stringify(raw)}: invalid syntax`,
    );
  }

  async function logsRequest(req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
    const query = url.searchParams;
    const allocId = decodeURIComponent(url.pathname.slice("/v1/client/fs/logs/".length));
    if ((req.method ?? "GET") !== "GET") throw new NomadHttpError(405, "Invalid method");
    if (allocId === "") throw new NomadHttpError(400, "must provide a valid alloc id");
    const task = query.get("task") ?? "";
    if (task === "") throw new NomadHttpError(400, "must provide task name");
    const follow = goParseBool(query.get("follow"), "follow");
    const plain = goParseBool(query.get("plain"), "plain");
    const type = query.get("type");
    if (type !== "stdout" && type !== "stderr") throw new NomadHttpError(400, "must provide log type (stdout/stderr)");
    const rawOffset = query.get("offset") ?? "";
    if (rawOffset !== "" && !/^[+-]?\d+$/.test(rawOffset)) {
      throw new NomadHttpError(400, `error parsing offset: strconv.ParseInt: parsing ${JSON.stringify(rawOffset)}: invalid syntax`);
    }
    const offset = rawOffset === "" ? 0 : Number(rawOffset);
    const origin = query.get("origin") || "start";
    if (origin !== "start" && origin !== "end") throw new NomadHttpError(400, "origin must be start or end");
    authorize(req);
    const record = state.allocs.get(allocId);
    if (!record) throw new NomadHttpError(404, `Unknown allocation "${allocId}"`);
    const ts = record.alloc.TaskStates[task];
    if (!ts) throw new NomadHttpError(400, `unknown task name "${task}"`);
    if (ts.StartedAt === ZERO_TIME) throw new NomadHttpError(404, `task "${task}" not started yet. No logs available`);
    const log = logStateOf(allocId, task, type, false);
    if (!log || liveFiles(log).length === 0) {
      throw new NomadHttpError(404, `log entry for task "${task}" and log type "${type}" not found`);
    }
    streamLog(res, log, { follow, plain, origin, offset, allocId });
  }

  function streamLog(
    res: ServerResponse,
    log: LogState,
    o: { follow: boolean; plain: boolean; origin: string; offset: number; allocId: string; path?: string },
  ): void {
    const fileName = (n: number) => o.path ?? `alloc/logs/${log.task}.${log.type}.${n}`;
    let cur = startPosition(log, o.origin, o.offset);
    let seenTruncations = log.files.find((f) => f.n === cur.n)?.truncations ?? 0;
    // follow=false ends at the end of the highest file that existed when the request came in
    // (https://github.com/hashicorp/nomad/blob/main/client/fs_endpoint.go).
    const limit = o.follow ? Number.POSITIVE_INFINITY : (liveFiles(log).at(-1)?.n ?? 0);
    let pendingEvent = "";
    let pumping = false;
    let again = false;
    let done = false;
    let batch: NodeJS.Timeout | undefined;
    res.writeHead(200, { "content-type": o.plain ? "text/plain" : "application/json" });
    res.flushHeaders();

    const finish = () => {
      if (done) return;
      done = true;
      clearInterval(heartbeat);
      clearTimeout(batch);
      log.followers.delete(onWrite);
      logStreams.delete(handle);
    };
    const handle = { cut: () => res.socket?.destroy() };
    const heartbeat = setInterval(() => {
      // Nomad's framer sends a heartbeat on every tick, data or not (hashicorp/nomad
      // client/lib/streamframer/framer.go `run`); only plain streams have no frames to send it in.
      if (!o.plain) res.write("{}");
    }, logHeartbeatMs);
    const onWrite = () => {
      if (done || batch) return;
      if (logBatchMs <= 0) void pump();
      else
        batch = setTimeout(() => {
          batch = undefined;
          void pump();
        }, logBatchMs);
    };
    logStreams.add(handle);
    log.followers.add(onWrite);
    res.on("close", finish);

    const send = async (text: string | Buffer): Promise<void> => {
      if (res.write(text)) return;
      await new Promise<void>((resolve) => {
        const go = () => {
          res.off("drain", go);
          res.off("close", go);
          resolve();
        };
        res.on("drain", go);
        res.on("close", go);
      });
    };

    async function pump(): Promise<void> {
      if (pumping) {
        again = true;
        return;
      }
      pumping = true;
      try {
        do {
          again = false;
          while (!done) {
            const file = log.files.find((f) => f.n === cur.n);
            const nextFile = log.files.find((f) => f.n > cur.n && !f.deleted);
            if (!file || file.deleted) {
              if (file?.deleted && !o.plain) await send(logFrame({ File: fileName(file.n), FileEvent: "file deleted" }));
              if (log.gone || (!nextFile && file?.deleted)) {
                // The agent's error path after a committed 200 can only append its message
                // (https://github.com/hashicorp/nomad/blob/main/command/agent/http.go `wrap`).
                res.end(log.gone ? `Unknown allocation "${o.allocId}"` : `log file ${fileName(cur.n)} deleted`);
                finish();
                return;
              }
              if (!nextFile) break;
              cur = { n: nextFile.n, pos: 0 };
              seenTruncations = nextFile.truncations;
              continue;
            }
            if (cur.pos > file.size || file.truncations !== seenTruncations) {
              cur.pos = 0;
              seenTruncations = file.truncations;
              pendingEvent = "file truncated";
            }
            if (cur.pos < file.size) {
              const end = Math.min(file.size, cur.pos + logFrameSize);
              const data = file.buf.subarray(cur.pos, end);
              cur.pos = end;
              await send(o.plain ? data : logFrame({ Offset: end, Data: data, File: fileName(file.n), FileEvent: pendingEvent }));
              pendingEvent = "";
              continue;
            }
            if (nextFile && nextFile.n <= limit) {
              cur = { n: nextFile.n, pos: 0 };
              seenTruncations = nextFile.truncations;
              continue;
            }
            if (!o.follow) {
              res.end();
              finish();
              return;
            }
            break;
          }
        } while (again && !done);
      } finally {
        pumping = false;
      }
    }
    void pump();
  }

  /**
   * `GET /v1/client/fs/stream/:alloc` — one file of the allocation directory, framed like the logs
   * (https://developer.hashicorp.com/nomad/api-docs/client#stream-file).
   * Unlike the logs endpoint it defaults `follow` to true and does not care whether the task started; a file
   * that does not exist fails its `stat` with 400 (hashicorp/nomad `command/agent/fs_endpoint.go` `Stream`,
   * `client/fs_endpoint.go` `stream`).
   */
  async function fileStreamRequest(req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
    const query = url.searchParams;
    const allocId = decodeURIComponent(url.pathname.slice("/v1/client/fs/stream/".length));
    if ((req.method ?? "GET") !== "GET") throw new NomadHttpError(405, "Invalid method");
    if (allocId === "") throw new NomadHttpError(400, "must provide a valid alloc id");
    const path = query.get("path") ?? "";
    if (path === "") throw new NomadHttpError(400, "must provide a file name");
    const follow = query.get("follow") === null || query.get("follow") === "" ? true : goParseBool(query.get("follow"), "follow");
    const plain = goParseBool(query.get("plain"), "plain");
    const rawOffset = query.get("offset") ?? "";
    if (rawOffset !== "" && !/^[+-]?\d+$/.test(rawOffset)) {
      throw new NomadHttpError(400, `error parsing offset: strconv.ParseInt: parsing ${JSON.stringify(rawOffset)}: invalid syntax`);
    }
    const offset = rawOffset === "" ? 0 : Number(rawOffset);
    const origin = query.get("origin") || "start";
    if (origin !== "start" && origin !== "end") throw new NomadHttpError(400, "origin must be start or end");
    authorize(req);
    const record = state.allocs.get(allocId);
    if (!record) throw new NomadHttpError(404, `Unknown allocation "${allocId}"`);
    const clean = path.replace(/^\/+/, "");
    if (clean.split("/").includes("..")) throw new NomadHttpError(400, "Path escapes the alloc directory");
    const files = state.allocFiles.get(allocId);
    const file = files?.get(clean);
    if (!file) {
      const isDir =
        ["", "alloc", "alloc/logs", "alloc/data", "alloc/tmp"].includes(clean.replace(/\/$/, "")) ||
        [...(files?.keys() ?? [])].some((p) => p.startsWith(`${clean.replace(/\/$/, "")}/`));
      if (isDir) throw new NomadHttpError(400, `file ${JSON.stringify(path)} is a directory`);
      throw new NomadHttpError(400, `stat ${ALLOC_ROOT}/${allocId}/${clean}: no such file or directory`);
    }
    const size = file.files[0]?.size ?? 0;
    // origin=end counts back from the end of the one file, clamped at its start.
    const start = origin === "end" ? Math.max(0, size - offset) : offset;
    streamLog(res, file, { follow, plain, origin: "start", offset: start, allocId, path });
  }

  function eventsRequest(req: IncomingMessage, res: ServerResponse, url: URL): void {
    if ((req.method ?? "GET") !== "GET") throw new NomadHttpError(405, "Invalid method");
    const query = url.searchParams;
    const rawIndex = query.get("index") ?? "";
    if (rawIndex !== "" && !/^[+-]?\d+$/.test(rawIndex)) {
      throw new NomadHttpError(400, `Unable to parse index: strconv.Atoi: parsing ${JSON.stringify(rawIndex)}: invalid syntax`);
    }
    const from = rawIndex === "" ? 0 : Number(rawIndex);
    const topics = new Map<string, string[]>();
    for (const raw of query.getAll("topic")) {
      const parts = raw.split(":");
      if (parts.length > 2) throw new NomadHttpError(400, `Invalid topic query: Invalid key value pair for topic: ${raw}`);
      const [topic = "", filter = "*"] = parts;
      topics.set(topic, [...(topics.get(topic) ?? []), filter]);
    }
    if (topics.size === 0) topics.set("*", ["*"]);
    const ns = query.get("namespace") || "default";
    const socket = req.socket;
    const raw = eventFraming === "close";
    // Earlier agents wrote nothing before the stream's first message, so a refused token still got its 403
    // (hashicorp/nomad command/agent/event_endpoint.go before commit d99775b134).
    if (!raw) authorize(req);
    // Hijacking agents send the status line before they authorise the request
    // (hashicorp/nomad command/agent/event_endpoint.go, commits d99775b134 and 24e47df832).
    if (raw) {
      socket.write("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n");
    } else {
      res.writeHead(200, { "content-type": "application/json", "cache-control": "no-cache" });
      res.flushHeaders();
    }
    const end = () => (raw ? socket.end() : res.end());
    let authorized = true;
    try {
      authorize(req);
    } catch {
      authorized = false;
    }
    if (!authorized || failingEventStreams > 0) {
      if (authorized) failingEventStreams -= 1;
      end();
      return;
    }
    const write = (line: string) => (raw ? socket.write(line) : res.write(line));
    const matches = (ev: FakeEvent): boolean => {
      if (ns !== "*" && ev.Namespace !== ns) return false;
      const keys = topics.get(ev.Topic) ?? topics.get("*");
      if (!keys) return false;
      return keys.includes("*") || keys.includes(ev.Key) || (ev.FilterKeys ?? []).some((k) => keys.includes(k));
    };
    const deliver = (batch: EventBatch) => {
      const events = batch.Events.filter(matches);
      if (events.length > 0) write(`${JSON.stringify({ Index: batch.Index, Events: events })}\n`);
    };
    write("{}\n");
    const buffer = state.eventBuffer;
    // Inclusive start; too old starts at the oldest kept batch, too new re-delivers the newest
    // (https://github.com/hashicorp/nomad/blob/main/nomad/stream/event_buffer.go `StartAtClosest`).
    let start = from === 0 ? 0 : buffer.findIndex((b) => b.Index >= from);
    if (start === -1) start = Math.max(0, buffer.length - 1);
    for (const batch of buffer.slice(start)) deliver(batch);
    const listener = (index: number, events: FakeEvent[]) => {
      if (events.length > 0) deliver({ Index: index, Events: events });
    };
    state.listeners.add(listener);
    const heartbeat = setInterval(() => write("{}\n"), eventHeartbeatMs);
    const handle = { cut: () => socket.destroy() };
    eventStreams.add(handle);
    socket.once("close", () => {
      clearInterval(heartbeat);
      state.listeners.delete(listener);
      eventStreams.delete(handle);
    });
  }

  const server = createServer((req, res) => {
    void handle(req, res);
  });
  server.on("connection", (socket) => {
    if (down) socket.destroy();
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    if (down) {
      req.socket.destroy();
      return;
    }
    const body = Buffer.concat(chunks).toString("utf8");
    const url = new URL(req.url ?? "/", "http://127.0.0.1");
    requests.push({
      method: req.method ?? "GET",
      path: url.pathname,
      query: Object.fromEntries(url.searchParams),
      headers: req.headers,
      body,
    });
    const unmodelled = unmodelledParams(req.method ?? "GET", url);
    if (unmodelled.length > 0) {
      unexpected.push(`${req.method ?? "GET"} ${url.pathname}?${unmodelled.join("&")}`);
      sendText(res, 501, `nomad fake: ${unmodelled.join(", ")} on ${url.pathname} is not modelled`);
      return;
    }
    if (latencyMs > 0) await sleep(latencyMs);
    const rule = failRules.find((r) => r.remaining > 0 && (!r.method || r.method === req.method) && (!r.path || r.path.test(url.pathname)));
    if (rule) {
      rule.remaining -= 1;
      if (rule.remaining === 0) failRules.splice(failRules.indexOf(rule), 1);
      sendText(res, rule.status, rule.text);
      return;
    }
    if (
      url.pathname.startsWith("/v1/client/fs/logs/") ||
      url.pathname.startsWith("/v1/client/fs/stream/") ||
      url.pathname === "/v1/event/stream"
    ) {
      try {
        if (url.pathname === "/v1/event/stream") eventsRequest(req, res, url);
        else if (url.pathname.startsWith("/v1/client/fs/stream/")) await fileStreamRequest(req, res, url);
        else await logsRequest(req, res, url);
      } catch (err) {
        if (err instanceof NomadHttpError) sendText(res, err.status, err.message);
        else sendText(res, 500, err instanceof Error ? err.message : String(err));
      }
      return;
    }
    try {
      const answer = await route(req, url, body);
      // A JSON body that is not a 200 (a lock conflict) is written by Nomad as a plain error would be: text/plain and
      // no index (recorded: var.lock-acquire.held).
      const failed = answer.status !== undefined && answer.status !== 200;
      const headers: Record<string, string> = { "content-type": failed ? "text/plain; charset=utf-8" : "application/json" };
      if (answer.index !== undefined && !failed) headers["x-nomad-index"] = String(answer.index);
      if (answer.nextToken !== undefined) headers["x-nomad-nexttoken"] = answer.nextToken;
      if (answer.read) {
        headers["x-nomad-knownleader"] = "true";
        headers["x-nomad-lastcontact"] = "0";
      }
      res.writeHead(answer.status ?? 200, headers);
      res.end(url.searchParams.has("pretty") ? JSON.stringify(answer.body, null, 4) : JSON.stringify(answer.body));
    } catch (err) {
      if (err instanceof NomadHttpError) sendText(res, err.status, err.message);
      else sendText(res, 500, err instanceof Error ? err.message : String(err));
    }
  }

  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;

  // ---- test control -----------------------------------------------------------------------------

  function mustJob(jobId: string, ns = "default"): FakeJob {
    const job = state.jobs.get(key(ns, jobId));
    if (!job) throw new Error(`nomad fake: no job "${jobId}" in namespace "${ns}"`);
    return job;
  }

  function latestAlloc(jobId: string, ns = "default"): AllocRecord {
    const record = allocsOf(ns, jobId).at(-1);
    if (!record) throw new Error(`nomad fake: job "${jobId}" has no allocation; call placeAlloc first`);
    return record;
  }

  function taskOf(record: AllocRecord, name: string | undefined): [string, FakeTaskState] {
    const names = Object.keys(record.alloc.TaskStates);
    const group = record.job.TaskGroups.find((g) => g.Name === record.alloc.TaskGroup);
    const main = group?.Tasks?.find((t) => !t.Lifecycle)?.Name;
    const chosen = name ?? (names.includes("executor") ? "executor" : (main ?? names[0]));
    const ts = chosen === undefined ? undefined : record.alloc.TaskStates[chosen];
    if (chosen === undefined || !ts) throw new Error(`nomad fake: allocation has no task "${String(name)}"`);
    return [chosen, ts];
  }

  function pushEvent(ts: FakeTaskState, type: string, display: string, details: Record<string, string> = {}, message = ""): void {
    ts.Events.push({ Type: type, Time: nowNs(), Message: message, DisplayMessage: display, Details: details });
    if (ts.Events.length > MAX_TASK_EVENTS) ts.Events.splice(0, ts.Events.length - MAX_TASK_EVENTS);
  }

  function start(ts: FakeTaskState): void {
    pushEvent(ts, "Task Setup", "Building Task Directory", {}, "Building Task Directory");
    pushEvent(ts, "Started", "Task started by client");
    ts.State = "running";
    ts.StartedAt = new Date().toISOString();
  }

  function killAlloc(alloc: FakeAlloc): void {
    alloc.DesiredStatus = "stop";
    alloc.DesiredDescription = "alloc not needed due to job update";
    for (const ts of Object.values(alloc.TaskStates)) {
      if (ts.State === "dead") continue;
      pushEvent(ts, "Killing", "Sent interrupt. Waiting 5s before force killing", { kill_timeout: "5s" });
      if (ts.State === "running") {
        pushEvent(ts, "Terminated", "Exit Code: 130, Signal: 2", { exit_code: "130", signal: "2", oom_killed: "false" });
      }
      pushEvent(ts, "Killed", "Task successfully killed");
      ts.State = "dead";
      ts.FinishedAt = new Date().toISOString();
    }
    rollUp(alloc);
  }

  function changeTask(jobId: string, opts: TaskOptions, change: (ts: FakeTaskState, name: string) => void): void {
    const record = latestAlloc(jobId, opts.namespace);
    const [name, ts] = taskOf(record, opts.task);
    const idx = next();
    change(ts, name);
    // logmon creates `<task>.stdout.0` and `<task>.stderr.0` before the task runs
    // (https://github.com/hashicorp/nomad/blob/main/client/allocrunner/taskrunner/logmon_hook.go).
    if (ts.StartedAt !== ZERO_TIME) {
      for (const type of ["stdout", "stderr"] as const) {
        const log = logStateOf(record.alloc.ID, name, type, true) as LogState;
        if (log.files.length === 0) log.files.push({ n: 0, buf: Buffer.alloc(0), size: 0, deleted: false, truncations: 0 });
      }
    }
    rollUp(record.alloc);
    putAlloc(record, idx);
    commit();
  }

  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    unexpected,

    async close() {
      closing = true;
      locks.close();
      for (const wake of [...state.waiters]) wake();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      assertExpected("nomad", unexpected);
    },

    registerJob(job, { namespace } = {}) {
      const spec = normalizeKeys(job);
      const ns = namespace ?? (typeof spec.Namespace === "string" && spec.Namespace ? spec.Namespace : "default");
      return register(spec, ns).job.ID;
    },

    job: (id, ns = "default") => {
      const job = state.jobs.get(key(ns, id));
      return job && clone(job);
    },
    children: (parentId, ns = "default") => childrenOf(ns, parentId).map((j) => j.ID),
    allocations: (jobId, ns = "default") => allocsOf(ns, jobId).map((r) => clone(r.alloc)),
    evaluations: (jobId, ns = "default") => evalsOf(ns, jobId).map(clone),
    submission: (jobId, ns = "default") => state.submissions.get(key(ns, jobId)),

    setDown(value) {
      down = value;
      if (value) server.closeAllConnections();
    },
    failNext(n, status, text, match = {}) {
      failRules.push({ remaining: n, status, text, ...match });
    },
    setLatency(ms) {
      latencyMs = ms;
    },
    setDispatchRace(on) {
      dispatchRace = on;
    },
    setParseResult(job) {
      parseResult = job;
    },
    subscribe(listener) {
      state.listeners.add(listener);
      return () => state.listeners.delete(listener);
    },

    placeAlloc(jobId, { node = "fake-node-1", namespace = "default" } = {}) {
      const job = mustJob(jobId, namespace);
      const ev = evalsOf(namespace, jobId)
        .filter((e) => e.Status === "pending" || e.Status === "blocked")
        .at(-1);
      const group = job.TaskGroups[0] ?? { Name: "runner", Tasks: [{ Name: "executor" }] };
      const idx = next();
      if (ev) {
        ev.Status = "complete";
        putEval(ev, idx);
      }
      let nodeId = state.nodes.get(node);
      if (!nodeId) {
        nodeId = randomUUID();
        state.nodes.set(node, nodeId);
      }
      const taskStates: Record<string, FakeTaskState> = {};
      for (const task of group.Tasks ?? []) {
        const ts: FakeTaskState = {
          State: "pending",
          Failed: false,
          Restarts: 0,
          LastRestart: ZERO_TIME,
          StartedAt: ZERO_TIME,
          FinishedAt: ZERO_TIME,
          Events: [],
        };
        pushEvent(ts, "Received", "Task received by client");
        taskStates[task.Name] = ts;
      }
      const alloc: FakeAlloc = {
        ID: randomUUID(),
        EvalID: ev?.ID ?? "",
        Name: `${jobId}.${group.Name}[0]`,
        Namespace: namespace,
        NodeID: nodeId,
        NodeName: node,
        JobID: jobId,
        JobType: job.Type,
        JobVersion: job.Version,
        TaskGroup: group.Name,
        DesiredStatus: "run",
        DesiredDescription: "",
        ClientStatus: "pending",
        ClientDescription: "No tasks have started",
        TaskStates: taskStates,
        FollowupEvalID: "",
        NextAllocation: "",
        CreateIndex: idx,
        ModifyIndex: idx,
        AllocModifyIndex: idx,
        CreateTime: nowNs(),
        ModifyTime: nowNs(),
      };
      putAlloc({ alloc, job: clone(job), jobCreateIndex: job.CreateIndex }, idx, "AllocationCreated");
      commit();
      return alloc.ID;
    },

    failPlacement(jobId, { namespace = "default", reason = "missing compatible host volumes", giveUp = false } = {}) {
      const job = mustJob(jobId, namespace);
      const ev = evalsOf(namespace, jobId)
        .filter((e) => e.Status === "pending")
        .at(-1);
      if (!ev) throw new Error(`nomad fake: job "${jobId}" has no pending evaluation`);
      const idx = next();
      if (giveUp) {
        // https://github.com/hashicorp/nomad/blob/main/nomad/structs/structs.go `EvalStatusFailed`
        ev.Status = "failed";
        ev.StatusDescription = "maximum attempts reached (2)";
      } else {
        const blocked = newEval(job, "queued-allocs", idx, "blocked");
        blocked.PreviousEval = ev.ID;
        ev.Status = "complete";
        ev.BlockedEval = blocked.ID;
      }
      ev.FailedTGAllocs = Object.fromEntries(
        job.TaskGroups.map((g) => [
          g.Name,
          { NodesEvaluated: 1, NodesFiltered: 1, NodesAvailable: { dc1: 1 }, ConstraintFiltered: { [reason]: 1 }, CoalescedFailures: 0 },
        ]),
      );
      putEval(ev, idx);
      refreshJobStatus(namespace, jobId, idx);
      commit();
    },

    startTask(jobId, opts = {}) {
      changeTask(jobId, opts, (ts, name) => {
        if (ts.State !== "pending") throw new Error(`nomad fake: task "${name}" is ${ts.State}, not pending`);
        start(ts);
      });
    },

    finishTask(jobId, exitCode, opts = {}) {
      changeTask(jobId, opts, (ts, name) => {
        if (ts.State === "dead") throw new Error(`nomad fake: task "${name}" is already dead`);
        if (ts.State === "pending") start(ts);
        const code = String(exitCode);
        pushEvent(ts, "Terminated", `Exit Code: ${code}`, { exit_code: code, signal: "0", oom_killed: "false" });
        if (exitCode !== 0) {
          pushEvent(ts, "Not Restarting", "Policy allows no restarts", {
            restart_reason: "Policy allows no restarts",
            fails_task: "true",
          });
          ts.Failed = true;
        }
        ts.State = "dead";
        ts.FinishedAt = new Date().toISOString();
      });
    },

    failTaskSetup(jobId, message, opts = {}) {
      changeTask(jobId, opts, (ts, name) => {
        if (ts.State !== "pending") throw new Error(`nomad fake: task "${name}" is ${ts.State}, not pending`);
        pushEvent(ts, "Task Setup", "Building Task Directory", {}, "Building Task Directory");
        pushEvent(ts, "Driver Failure", message, { driver_error: message, fails_task: "true" });
        pushEvent(ts, "Not Restarting", "Error was unrecoverable", {
          restart_reason: "Error was unrecoverable",
          fails_task: "true",
        });
        ts.State = "dead";
        ts.Failed = true;
        ts.FinishedAt = new Date().toISOString();
      });
    },

    writeLog(jobId, type, bytes, opts = {}) {
      const record = latestAlloc(jobId, opts.namespace);
      const [task] = taskOf(record, opts.task);
      const log = logStateOf(record.alloc.ID, task, type, true) as LogState;
      let file = liveFiles(log).at(-1);
      if (!file) {
        file = { n: (log.files.at(-1)?.n ?? -1) + 1, buf: Buffer.alloc(0), size: 0, deleted: false, truncations: 0 };
        log.files.push(file);
      }
      const data = typeof bytes === "string" ? Buffer.from(bytes) : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      if (file.size + data.length > file.buf.length) {
        const grown = Buffer.allocUnsafe(Math.max(file.buf.length * 2, file.size + data.length, 4096));
        file.buf.copy(grown, 0, 0, file.size);
        file.buf = grown;
      }
      data.copy(file.buf, file.size);
      file.size += data.length;
      wakeFollowers(log);
    },

    rotateLog(jobId, type, opts = {}) {
      const record = latestAlloc(jobId, opts.namespace);
      const [task] = taskOf(record, opts.task);
      const log = logStateOf(record.alloc.ID, task, type, true) as LogState;
      log.files.push({ n: (log.files.at(-1)?.n ?? -1) + 1, buf: Buffer.alloc(0), size: 0, deleted: false, truncations: 0 });
      const live = liveFiles(log);
      if (opts.maxFiles !== undefined) {
        for (const old of live.slice(0, Math.max(0, live.length - opts.maxFiles))) {
          old.deleted = true;
          old.buf = Buffer.alloc(0);
        }
      }
      wakeFollowers(log);
    },

    truncateLog(jobId, type, opts = {}) {
      const record = latestAlloc(jobId, opts.namespace);
      const [task] = taskOf(record, opts.task);
      const log = logStateOf(record.alloc.ID, task, type, true) as LogState;
      const file = liveFiles(log).at(-1);
      if (file) {
        file.size = 0;
        file.truncations += 1;
      }
      wakeFollowers(log);
    },

    writeAllocFile(jobId, path, bytes, opts = {}) {
      const record = latestAlloc(jobId, opts.namespace);
      let byPath = state.allocFiles.get(record.alloc.ID);
      if (!byPath) {
        byPath = new Map();
        state.allocFiles.set(record.alloc.ID, byPath);
      }
      let file = byPath.get(path);
      if (!file) {
        file = {
          task: "",
          type: "stdout",
          files: [{ n: 0, buf: Buffer.alloc(0), size: 0, deleted: false, truncations: 0 }],
          gone: false,
          followers: new Set(),
        };
        byPath.set(path, file);
      }
      const f = file.files[0] as LogFile;
      const data = typeof bytes === "string" ? Buffer.from(bytes) : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      if (f.size + data.length > f.buf.length) {
        const grown = Buffer.allocUnsafe(Math.max(f.buf.length * 2, f.size + data.length, 4096));
        f.buf.copy(grown, 0, 0, f.size);
        f.buf = grown;
      }
      data.copy(f.buf, f.size);
      f.size += data.length;
      wakeFollowers(file);
    },

    logFiles(jobId, type, opts = {}) {
      const record = latestAlloc(jobId, opts.namespace);
      const [task] = taskOf(record, opts.task);
      const log = logStateOf(record.alloc.ID, task, type, false);
      return log ? liveFiles(log).map((f) => ({ name: `${task}.${type}.${f.n}`, size: f.size })) : [];
    },

    gcAlloc(jobId, { namespace = "default" } = {}) {
      const record = latestAlloc(jobId, namespace);
      const id = record.alloc.ID;
      state.allocs.delete(id);
      for (const log of state.logs.get(id)?.values() ?? []) {
        for (const f of log.files) {
          f.deleted = true;
          f.buf = Buffer.alloc(0);
        }
        log.gone = true;
        wakeFollowers(log);
      }
      state.logs.delete(id);
      for (const file of state.allocFiles.get(id)?.values() ?? []) {
        for (const f of file.files) {
          f.deleted = true;
          f.buf = Buffer.alloc(0);
        }
        file.gone = true;
        wakeFollowers(file);
      }
      state.allocFiles.delete(id);
      state.tables.allocs = next();
      commit();
      return id;
    },

    gcJob(jobId, { namespace = "default" } = {}) {
      const job = mustJob(jobId, namespace);
      if (job.Status !== "dead") throw new Error(`nomad fake: job "${jobId}" is ${job.Status}; only dead jobs are garbage-collected`);
      for (const record of allocsOf(namespace, jobId)) {
        const id = record.alloc.ID;
        state.allocs.delete(id);
        for (const log of [...(state.logs.get(id)?.values() ?? []), ...(state.allocFiles.get(id)?.values() ?? [])]) {
          for (const f of log.files) {
            f.deleted = true;
            f.buf = Buffer.alloc(0);
          }
          log.gone = true;
          wakeFollowers(log);
        }
        state.logs.delete(id);
        state.allocFiles.delete(id);
      }
      for (const ev of evalsOf(namespace, jobId)) state.evals.delete(ev.ID);
      state.jobs.delete(key(namespace, jobId));
      state.submissions.delete(key(namespace, jobId));
      const idx = next();
      state.tables.jobs = idx;
      state.tables.evals = idx;
      state.tables.allocs = idx;
      commit();
    },

    cutLogStreams() {
      const open = [...logStreams];
      for (const s of open) s.cut();
      return open.length;
    },
    openLogStreams: () => logStreams.size,
    cutEventStreams() {
      const open = [...eventStreams];
      for (const s of open) s.cut();
      return open.length;
    },
    openEventStreams: () => eventStreams.size,
    failEventStreams(n) {
      failingEventStreams += n;
    },
    index: () => state.index,
    lockHolder: (path, ns = "default") => locks.holder(ns, path),

    loseAlloc(jobId, { namespace = "default" } = {}) {
      const record = latestAlloc(jobId, namespace);
      const idx = next();
      record.alloc.ClientStatus = "lost";
      record.alloc.ClientDescription = "alloc is lost since its node is down";
      record.alloc.DesiredStatus = "stop";
      record.alloc.DesiredDescription = "alloc is lost since its node is down";
      record.alloc.AllocModifyIndex = idx;
      putAlloc(record, idx);
      commit();
    },
  };
}

interface Answer {
  body: unknown;
  /** `X-Nomad-Index`; parse answers without one. */
  index: number | undefined;
  /** GETs carry KnownLeader and LastContact as well (https://github.com/hashicorp/nomad/blob/main/command/agent/http.go `setMeta`). */
  read: boolean;
  /** A JSON answer that is not 200 (a lock conflict is 409 with a body). */
  status?: number;
  /** `X-Nomad-NextToken`, on a paginated answer with more to come. */
  nextToken?: string;
}

function read(body: unknown, index: number): Answer {
  return { body, index, read: true };
}

function write(body: unknown, index?: number): Answer {
  return { body, index, read: false };
}

function sendText(res: ServerResponse, status: number, text: string): void {
  res.writeHead(status, { "content-type": TEXT });
  res.end(text);
}

/** `getClientStatus` (https://github.com/hashicorp/nomad/blob/main/client/allocrunner/alloc_runner.go): the alloc's client status from its tasks, unless the node was lost. */
function rollUp(alloc: FakeAlloc): void {
  if (alloc.ClientStatus === "lost") return;
  const states = Object.values(alloc.TaskStates);
  if (states.some((t) => t.State === "dead" && t.Failed)) {
    alloc.ClientStatus = "failed";
    alloc.ClientDescription = "Failed tasks";
  } else if (states.some((t) => t.State === "running")) {
    alloc.ClientStatus = "running";
    alloc.ClientDescription = "Tasks are running";
  } else if (states.some((t) => t.State === "pending")) {
    alloc.ClientStatus = "pending";
    alloc.ClientDescription = "No tasks have started";
  } else {
    alloc.ClientStatus = "complete";
    alloc.ClientDescription = "All tasks have completed";
  }
}

function isTerminal(alloc: FakeAlloc): boolean {
  if (alloc.DesiredStatus === "stop" || alloc.DesiredStatus === "evict") return true;
  return alloc.ClientStatus === "complete" || alloc.ClientStatus === "failed" || alloc.ClientStatus === "lost";
}

const VOLATILE = new Set(["Status", "StatusDescription", "Version", "CreateIndex", "ModifyIndex", "JobModifyIndex", "SubmitTime", "Stop"]);

function specChanged(a: FakeJob, b: FakeJob): boolean {
  const strip = (j: FakeJob) =>
    JSON.stringify(
      Object.entries(j)
        .filter(([k]) => !VOLATILE.has(k))
        .sort(([x], [y]) => (x < y ? -1 : 1)),
    );
  return strip(a) !== strip(b);
}

/** Go's `encoding/json` into a struct: an empty body is refused, unknown keys are ignored
 * (https://github.com/hashicorp/nomad/blob/main/command/agent/http.go `decodeBody`). */
function decodeBody(body: string): Record<string, unknown> {
  if (body.length === 0) throw new NomadHttpError(400, "Request body is empty");
  let value: unknown;
  try {
    value = JSON.parse(body);
  } catch {
    throw new NomadHttpError(400, goSyntaxError(body));
  }
  if (value === null) return {};
  if (typeof value !== "object" || Array.isArray(value)) {
    throw new NomadHttpError(400, `json: cannot unmarshal ${goType(value)} into Go value of type struct`);
  }
  return value as Record<string, unknown>;
}

/** Go matches JSON keys to struct fields exactly first, then case-insensitively. */
/** Go's `encoding/json` syntax error for the first places it checks: the first value and an object's first key. */
function goSyntaxError(body: string): string {
  const text = body.trim();
  const first = text[0];
  if (first === undefined) return "EOF";
  if (first === "{") {
    const key = text.slice(1).trim()[0];
    if (key === undefined) return "unexpected end of JSON input";
    if (key !== '"' && key !== "}") return `invalid character '${key}' looking for beginning of object key string`;
  }
  if (!/[{["\-0-9tfn]/.test(first)) return `invalid character '${first}' looking for beginning of value`;
  return "invalid character after top-level value";
}

/** Empty template and volume lists decode to nil in Go, and nil slices encode as null. */
function nilEmpty<T extends Record<string, unknown>>(task: T): T {
  const out: Record<string, unknown> = { ...task };
  for (const k of ["Templates", "VolumeMounts"]) if (Array.isArray(out[k]) && (out[k] as unknown[]).length === 0) out[k] = null;
  return out as T;
}

/** Task states as the agent encodes them: a zero LastRestart is null, every event carries the deprecated flat fields. */
function taskStatesOut(states: Record<string, FakeTaskState>): Record<string, unknown> {
  return Object.fromEntries(
    Object.entries(states).map(([name, ts]) => [
      name,
      {
        ...clone(ts),
        Paused: "",
        LastRestart: ts.LastRestart === ZERO_TIME ? null : ts.LastRestart,
        Events: ts.Events.map((e) => ({ ...TASK_EVENT_DEFAULTS, ...clone(e) })),
      },
    ]),
  );
}

function pick(obj: Record<string, unknown>, field: string): unknown {
  if (field in obj) return obj[field];
  const lower = field.toLowerCase();
  const found = Object.keys(obj).find((k) => k.toLowerCase() === lower);
  return found === undefined ? undefined : obj[found];
}

/** Top-level keys of a job spec as Go would bind them (`id` → `ID`). */
function normalizeKeys(spec: Record<string, unknown>): Record<string, unknown> {
  const known = [
    "ID",
    "Name",
    "Namespace",
    "Type",
    "Priority",
    "Datacenters",
    "ParameterizedJob",
    "Periodic",
    "Meta",
    "TaskGroups",
    "Payload",
  ];
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(spec)) out[known.find((f) => f.toLowerCase() === k.toLowerCase()) ?? k] = v;
  return out;
}

function decodePayload(value: unknown): Buffer {
  if (value === undefined || value === null) return Buffer.alloc(0);
  if (typeof value !== "string") {
    throw new NomadHttpError(
      400,
      `json: cannot unmarshal ${goType(value)} into Go struct field JobDispatchRequest.Payload of type []uint8`,
    );
  }
  const bad = /[^A-Za-z0-9+/=]/.exec(value);
  if (bad || value.length % 4 !== 0) throw new NomadHttpError(400, `illegal base64 data at input byte ${bad?.index ?? value.length}`);
  return Buffer.from(value, "base64");
}

function decodeMeta(value: unknown): Record<string, string> {
  if (value === undefined || value === null) return {};
  if (typeof value !== "object" || Array.isArray(value)) {
    throw new NomadHttpError(
      400,
      `json: cannot unmarshal ${goType(value)} into Go struct field JobDispatchRequest.Meta of type map[string]string`,
    );
  }
  for (const v of Object.values(value)) {
    if (typeof v !== "string") {
      throw new NomadHttpError(400, `json: cannot unmarshal ${goType(v)} into Go struct field JobDispatchRequest.Meta of type string`);
    }
  }
  return value as Record<string, string>;
}

function decodeInt(value: unknown, field: string): number {
  if (value === undefined || value === null) return 0;
  if (typeof value !== "number" || !Number.isInteger(value)) {
    throw new NomadHttpError(400, `json: cannot unmarshal ${goType(value)} into Go struct field JobDispatchRequest.${field} of type int`);
  }
  return value;
}

function goType(value: unknown): string {
  if (Array.isArray(value)) return "array";
  if (value === null) return "null";
  if (typeof value === "object") return "object";
  return typeof value;
}

/** Go's `strconv.ParseBool`. */
function parseBool(raw: string, field: string, status = 400): boolean {
  if (["1", "t", "T", "TRUE", "true", "True"].includes(raw)) return true;
  if (["0", "f", "F", "FALSE", "false", "False"].includes(raw)) return false;
  throw new NomadHttpError(
    status,
    `Failed to parse value of "${field}" (${raw}) as a bool: strconv.ParseBool: parsing "${raw}": invalid syntax`,
  );
}

/** Go's `%v` of a string slice. */
function goList(items: string[]): string {
  return `[${items.join(" ")}]`;
}

/** hashicorp/go-multierror's text for one error, as Nomad's job validation returns it. */
function multiError(message: string): string {
  return `1 error occurred:\n\t* ${message}\n\n`;
}

const UNIT_NS: Record<string, number> = { ns: 1, us: 1e3, µs: 1e3, ms: 1e6, s: 1e9, m: 60e9, h: 3600e9 };

/** Go's `time.ParseDuration`, in nanoseconds. */
export function parseGoDuration(text: string): number | undefined {
  if (text === "0") return 0;
  const re = /(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)/gy;
  let total = 0;
  let end = 0;
  for (let m = re.exec(text); m; m = re.exec(text)) {
    total += Number(m[1]) * (UNIT_NS[m[2] ?? ""] ?? 0);
    end = re.lastIndex;
  }
  return end === text.length && end > 0 ? Math.round(total) : undefined;
}

function omitEmpty(obj: Record<string, unknown>): Record<string, unknown> {
  // Zero scalars are left out, as in the allocation and evaluation bodies of test/fixtures/nomad.
  return Object.fromEntries(Object.entries(obj).filter(([, v]) => v !== "" && v !== 0 && v !== false && v !== null));
}

function nowNs(): number {
  return Date.now() * 1e6;
}

function clone<T>(value: T): T {
  return structuredClone(value);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// ---- query parameters the fake models, per route --------------------------------------------------

// Every route parses these (https://github.com/hashicorp/nomad/blob/main/command/agent/http.go `parseNamespace`,
// `parseRegion`, `wrap` for `pretty`).
const COMMON_PARAMS = ["namespace", "region", "pretty"];
// https://developer.hashicorp.com/nomad/api-docs#blocking-queries
const BLOCKING_PARAMS = [...COMMON_PARAMS, "index", "wait"];

/** The parameters of one modelled route, or undefined for a route the fake does not model (answered 501 later). */
function modelledParams(method: string, pathname: string): readonly string[] | undefined {
  const write = method === "PUT" || method === "POST";
  if (pathname === "/v1/status/leader" || pathname === "/v1/jobs/parse") return COMMON_PARAMS;
  if (pathname === "/v1/jobs") return write ? COMMON_PARAMS : [...BLOCKING_PARAMS, "prefix", "meta", "per_page", "next_token"];
  if (pathname === "/v1/allocations") return [...BLOCKING_PARAMS, "prefix"];
  if (pathname.startsWith("/v1/allocation/")) return BLOCKING_PARAMS;
  if (pathname.startsWith("/v1/evaluation/")) return COMMON_PARAMS;
  // https://developer.hashicorp.com/nomad/api-docs/client#stream-logs
  if (pathname.startsWith("/v1/client/fs/logs/")) {
    return [...COMMON_PARAMS, "task", "type", "follow", "offset", "origin", "plain"];
  }
  // https://developer.hashicorp.com/nomad/api-docs/client#stream-file
  if (pathname.startsWith("/v1/client/fs/stream/")) return [...COMMON_PARAMS, "path", "follow", "offset", "origin", "plain"];
  // https://developer.hashicorp.com/nomad/api-docs/events
  if (pathname === "/v1/event/stream") return [...COMMON_PARAMS, "index", "topic"];
  // https://github.com/hashicorp/nomad/blob/main/command/agent/variable_endpoint.go
  if (pathname.startsWith("/v1/var/"))
    return write ? [...COMMON_PARAMS, "cas", "lock-acquire", "lock-renew", "lock-release"] : BLOCKING_PARAMS;
  if (!pathname.startsWith("/v1/job/")) return undefined;
  const sub = /\/(dispatch|allocations|evaluations|summary|deployment)$/.exec(pathname)?.[1];
  if (sub === "dispatch") return [...COMMON_PARAMS, "idempotency_token"];
  if (sub === "allocations") return [...BLOCKING_PARAMS, "all"];
  if (sub === "evaluations" || sub === "summary") return BLOCKING_PARAMS;
  if (sub === "deployment") return COMMON_PARAMS;
  if (method === "DELETE") return [...COMMON_PARAMS, "purge"];
  return write ? COMMON_PARAMS : BLOCKING_PARAMS;
}

/** The query parameters of a request to a modelled route that the route does not model. */
function unmodelledParams(method: string, url: URL): string[] {
  const allowed = modelledParams(method, url.pathname);
  if (allowed === undefined) return [];
  return [...new Set(url.searchParams.keys())].filter((k) => !allowed.includes(k));
}

// ---- HCL → Nomad JSON, for the fields builder jobs use ------------------------------------------
// https://developer.hashicorp.com/nomad/api-docs/jobs#parse-job

type Hcl = Record<string, unknown>;

function blocks(value: unknown): Hcl[] {
  if (Array.isArray(value)) return value.filter((v): v is Hcl => !!v && typeof v === "object");
  return value && typeof value === "object" ? [value as Hcl] : [];
}

function labelled(value: unknown): [string, Hcl][] {
  const out: [string, Hcl][] = [];
  for (const entry of blocks(value)) {
    for (const [label, body] of Object.entries(entry)) for (const b of blocks(body)) out.push([label, b]);
  }
  return out;
}

function firstBlock(value: unknown): Hcl | undefined {
  return blocks(value)[0];
}

function mapOf(value: unknown): Record<string, string> | undefined {
  const b = firstBlock(value);
  return b && Object.fromEntries(Object.entries(b).map(([k, v]) => [k, String(v)]));
}

function duration(value: unknown): number | undefined {
  return typeof value === "string" ? parseGoDuration(value) : undefined;
}

function defined(obj: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(obj).filter(([, v]) => v !== undefined));
}

/** Maps hcl2json output to the job JSON Nomad's parse endpoint returns, for the blocks builders use. */
function hclToJob(parsed: Record<string, unknown>, canonicalize: boolean): Record<string, unknown> {
  const jobs = labelled(parsed.job);
  const first = jobs[0];
  if (jobs.length !== 1 || !first) throw new NomadHttpError(400, "Failed to parse job: expected exactly one job block");
  const [id, body] = first;
  const batch = body.type === "batch" || body.type === "sysbatch";
  const p = firstBlock(body.parameterized);
  const groups = labelled(body.group).map(([name, g]) => {
    const restart = firstBlock(g.restart);
    const reschedule = firstBlock(g.reschedule);
    const restartPolicy =
      restart &&
      defined({
        Attempts: restart.attempts,
        Interval: duration(restart.interval),
        Delay: duration(restart.delay),
        Mode: restart.mode,
      });
    const reschedulePolicy =
      reschedule &&
      defined({
        Attempts: reschedule.attempts,
        Interval: duration(reschedule.interval),
        Delay: duration(reschedule.delay),
        DelayFunction: reschedule.delay_function,
        MaxDelay: duration(reschedule.max_delay),
        Unlimited: reschedule.unlimited,
      });
    const volumes = labelled(g.volume);
    const tasks = labelled(g.task).map(([taskName, t]) => {
      const lifecycle = firstBlock(t.lifecycle);
      const payload = firstBlock(t.dispatch_payload);
      const resources = firstBlock(t.resources);
      const logs = firstBlock(t.logs);
      return defined({
        Name: taskName,
        Driver: t.driver,
        User: t.user,
        Config: firstBlock(t.config),
        Env: mapOf(t.env),
        Meta: mapOf(t.meta),
        KillTimeout: duration(t.kill_timeout) ?? (canonicalize ? 5e9 : undefined),
        KillSignal: t.kill_signal,
        Lifecycle: lifecycle && { Hook: lifecycle.hook, Sidecar: lifecycle.sidecar === true },
        DispatchPayload: payload && { File: payload.file },
        VolumeMounts: blocks(t.volume_mount).map((m) =>
          defined({ Volume: m.volume, Destination: m.destination, ReadOnly: m.read_only === true }),
        ),
        Resources: resources && defined({ CPU: resources.cpu, MemoryMB: resources.memory, MemoryMaxMB: resources.memory_max }),
        Templates: blocks(t.template).map((tpl) =>
          defined({ EmbeddedTmpl: tpl.data, DestPath: tpl.destination, ChangeMode: tpl.change_mode, Envvars: tpl.env }),
        ),
        LogConfig: logs
          ? defined({ MaxFiles: logs.max_files, MaxFileSizeMB: logs.max_file_size, Disabled: logs.disabled })
          : canonicalize
            ? { MaxFiles: 10, MaxFileSizeMB: 10, Disabled: false }
            : undefined,
      });
    });
    return defined({
      Name: name,
      Count: g.count ?? (canonicalize ? 1 : undefined),
      Meta: mapOf(g.meta),
      RestartPolicy:
        canonicalize && batch ? { Attempts: 3, Delay: 15e9, Interval: 86_400e9, Mode: "fail", ...restartPolicy } : restartPolicy,
      ReschedulePolicy:
        canonicalize && batch
          ? { Attempts: 1, Interval: 86_400e9, Delay: 5e9, DelayFunction: "constant", Unlimited: false, ...reschedulePolicy }
          : reschedulePolicy,
      Volumes: volumes.length
        ? Object.fromEntries(
            volumes.map(([label, v]) => [label, defined({ Name: label, Type: v.type, Source: v.source, ReadOnly: v.read_only === true })]),
          )
        : undefined,
      Tasks: tasks,
    });
  });
  return defined({
    ID: id,
    Name: typeof body.name === "string" ? body.name : id,
    Namespace: body.namespace ?? (canonicalize ? "default" : undefined),
    Type: body.type ?? (canonicalize ? "service" : undefined),
    Priority: body.priority ?? (canonicalize ? 50 : undefined),
    Datacenters: body.datacenters ?? (canonicalize ? ["*"] : undefined),
    NodePool: body.node_pool ?? (canonicalize ? "default" : undefined),
    Meta: mapOf(body.meta),
    ParameterizedJob: p && {
      Payload: p.payload ?? (canonicalize ? "optional" : ""),
      MetaRequired: p.meta_required ?? null,
      MetaOptional: p.meta_optional ?? null,
    },
    TaskGroups: groups,
  });
}
