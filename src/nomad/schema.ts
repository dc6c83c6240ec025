import { z } from "zod";

// Only the fields petrel reads are listed; objects stay loose so callers can still see the rest.
// Nomad omits zero values on some objects (struct-level `omitempty` codec tags in
// https://github.com/hashicorp/nomad/blob/main/nomad/structs/alloc.go and eval.go), so absent scalars default to zero.

const str = z
  .string()
  .nullish()
  .transform((v) => v ?? "");
const num = z
  .number()
  .nullish()
  .transform((v) => v ?? 0);
const bool = z
  .boolean()
  .nullish()
  .transform((v) => v ?? false);
const strings = z
  .array(z.string())
  .nullish()
  .transform((v) => v ?? []);
const stringMap = z
  .record(z.string(), z.string())
  .nullish()
  .transform((v) => v ?? {});

/** `Job.ParameterizedJob`: what a dispatch of the job may or must carry. */
export const ParameterizedJobConfig = z.object({
  Payload: str,
  MetaRequired: strings,
  MetaOptional: strings,
});
export type ParameterizedJobConfig = z.infer<typeof ParameterizedJobConfig>;

export const TaskSpec = z.looseObject({ Name: z.string(), Driver: str });
export type TaskSpec = z.infer<typeof TaskSpec>;

export const TaskGroupSpec = z.looseObject({
  Name: z.string(),
  Tasks: z
    .array(TaskSpec)
    .nullish()
    .transform((v) => v ?? []),
});
export type TaskGroupSpec = z.infer<typeof TaskGroupSpec>;

/** The fields a job and its list stub share (Nomad's `structs.Job` and `structs.JobListStub`). */
const JOB_IDENTITY = {
  ID: z.string(),
  Name: str,
  ParentID: str,
  Namespace: str,
  Type: str,
  Priority: num,
  Status: str,
  StatusDescription: str,
  Stop: bool,
};

/** A job as `GET /v1/job/:id` returns it (https://developer.hashicorp.com/nomad/api-docs/jobs#read-job). */
export const Job = z.looseObject({
  ...JOB_IDENTITY,
  Dispatched: bool,
  DispatchIdempotencyToken: str,
  ParameterizedJob: ParameterizedJobConfig.nullish().transform((v) => v ?? null),
  Payload: z
    .string()
    .nullish()
    .transform((v) => v ?? null),
  Meta: stringMap,
  TaskGroups: z
    .array(TaskGroupSpec)
    .nullish()
    .transform((v) => v ?? []),
  SubmitTime: num,
  Version: num,
  CreateIndex: num,
  ModifyIndex: num,
  JobModifyIndex: num,
});
export type Job = z.infer<typeof Job>;

export const ChildrenSummary = z.object({ Pending: num, Running: num, Dead: num });

export const TaskGroupSummary = z.object({
  Queued: num,
  Complete: num,
  Failed: num,
  Running: num,
  Starting: num,
  Lost: num,
  Unknown: num,
});

/** `JobSummary` as embedded in list stubs and served by `/v1/job/:id/summary`. */
export const JobSummary = z.object({
  JobID: str,
  Namespace: str,
  Summary: z
    .record(z.string(), TaskGroupSummary)
    .nullish()
    .transform((v) => v ?? {}),
  Children: ChildrenSummary.nullish().transform((v) => v ?? null),
  CreateIndex: num,
  ModifyIndex: num,
});
export type JobSummary = z.infer<typeof JobSummary>;

/** One element of `GET /v1/jobs` (https://developer.hashicorp.com/nomad/api-docs/jobs#list-jobs). */
export const JobListStub = z.looseObject({
  ...JOB_IDENTITY,
  // A bool in `JobListStub`; tolerate an object too, as filters treat it as a pointer.
  ParameterizedJob: z.unknown().transform((v) => v !== undefined && v !== null && v !== false),
  SubmitTime: num,
  // Only with `?meta=true` (recorded in fixtures/nomad/jobs.list.meta); absent otherwise.
  Meta: z
    .record(z.string(), z.string())
    .nullish()
    .transform((v) => v ?? undefined),
  JobSummary: JobSummary.nullish().transform((v) => v ?? null),
  CreateIndex: num,
  ModifyIndex: num,
  JobModifyIndex: num,
});
export type JobListStub = z.infer<typeof JobListStub>;

/** A task event; `Details` values are strings, e.g. `exit_code: "1"` (https://github.com/hashicorp/nomad/blob/main/nomad/structs/structs.go `TaskEvent`). */
export const TaskEvent = z.looseObject({
  Type: z.string(),
  Time: num,
  Message: str,
  DisplayMessage: str,
  Details: stringMap,
});
export type TaskEvent = z.infer<typeof TaskEvent>;

export const TaskState = z.looseObject({
  State: str,
  Failed: bool,
  Restarts: num,
  StartedAt: z
    .string()
    .nullish()
    .transform((v) => v ?? null),
  FinishedAt: z
    .string()
    .nullish()
    .transform((v) => v ?? null),
  Events: z
    .array(TaskEvent)
    .nullish()
    .transform((v) => v ?? []),
});
export type TaskState = z.infer<typeof TaskState>;

const allocationFields = {
  ID: z.string(),
  EvalID: str,
  Name: str,
  Namespace: str,
  NodeID: str,
  NodeName: str,
  JobID: str,
  TaskGroup: str,
  DesiredStatus: str,
  DesiredDescription: str,
  ClientStatus: str,
  ClientDescription: str,
  TaskStates: z
    .record(z.string(), TaskState)
    .nullish()
    .transform((v) => v ?? {}),
  FollowupEvalID: str,
  NextAllocation: str,
  CreateIndex: num,
  ModifyIndex: num,
  CreateTime: num,
  ModifyTime: num,
};

/** One element of `GET /v1/job/:id/allocations` (`AllocListStub`). */
export const AllocationStub = z.looseObject(allocationFields);
export type AllocationStub = z.infer<typeof AllocationStub>;

/** `GET /v1/allocation/:id`: the stub fields plus the job the allocation runs. */
export const Allocation = z.looseObject({
  ...allocationFields,
  Job: Job.nullish().transform((v) => v ?? null),
});
export type Allocation = z.infer<typeof Allocation>;

/** Why the scheduler could not place a task group (`Evaluation.FailedTGAllocs[group]`, an `AllocMetric`). */
export const AllocMetric = z.looseObject({
  NodesEvaluated: num,
  NodesFiltered: num,
  NodesExhausted: num,
  ConstraintFiltered: z
    .record(z.string(), z.number())
    .nullish()
    .transform((v) => v ?? {}),
  DimensionExhausted: z
    .record(z.string(), z.number())
    .nullish()
    .transform((v) => v ?? {}),
  ClassFiltered: z
    .record(z.string(), z.number())
    .nullish()
    .transform((v) => v ?? {}),
});
export type AllocMetric = z.infer<typeof AllocMetric>;

/** One element of `GET /v1/job/:id/evaluations`; fields may be omitted when zero (https://github.com/hashicorp/nomad/blob/main/nomad/structs/eval.go). */
export const Evaluation = z.looseObject({
  ID: z.string(),
  JobID: str,
  Status: str,
  StatusDescription: str,
  TriggeredBy: str,
  BlockedEval: str,
  FailedTGAllocs: z
    .record(z.string(), AllocMetric)
    .nullish()
    .transform((v) => v ?? {}),
  CreateIndex: num,
  ModifyIndex: num,
  CreateTime: num,
  ModifyTime: num,
});
export type Evaluation = z.infer<typeof Evaluation>;

/**
 * One event of `/v1/event/stream` (https://developer.hashicorp.com/nomad/api-docs/events). The payload is left unparsed here: a consumer
 * reads the few fields it needs from the topic's object.
 */
export const StreamEvent = z.looseObject({
  Topic: z.string(),
  Type: str,
  Key: str,
  Namespace: str,
  FilterKeys: strings,
  Index: num,
  Payload: z
    .record(z.string(), z.unknown())
    .nullish()
    .transform((v) => v ?? {}),
});
export type StreamEvent = z.infer<typeof StreamEvent>;

/** One NDJSON line of the event stream: `{}` (a heartbeat) or a batch of one Raft index. */
export const EventBatch = z.looseObject({
  Index: z.number().optional(),
  Events: z
    .array(StreamEvent)
    .nullish()
    .transform((v) => v ?? []),
});
export type EventBatch = z.infer<typeof EventBatch>;

/** `POST /v1/job/:id/dispatch` response (https://developer.hashicorp.com/nomad/api-docs/jobs#dispatch-job). */
export const DispatchResponse = z.object({
  DispatchedJobID: z.string().min(1),
  EvalID: str,
  EvalCreateIndex: num,
  JobCreateIndex: num,
  Index: num,
});
export type DispatchResponse = z.infer<typeof DispatchResponse>;

/** `DELETE /v1/job/:id` response (https://developer.hashicorp.com/nomad/api-docs/jobs#stop-a-job). */
export const DeregisterResponse = z.object({ EvalID: str, EvalCreateIndex: num, JobModifyIndex: num, Index: num });
export type DeregisterResponse = z.infer<typeof DeregisterResponse>;

/** `POST /v1/jobs` response (https://developer.hashicorp.com/nomad/api-docs/jobs#create-job). */
export const RegisterResponse = z.object({
  EvalID: str,
  EvalCreateIndex: num,
  JobModifyIndex: num,
  Warnings: str,
  Index: num,
});
export type RegisterResponse = z.infer<typeof RegisterResponse>;

/** `POST /v1/jobs/parse` answers with the bare job object (https://developer.hashicorp.com/nomad/api-docs/jobs#parse-job). */
export const ParsedJob = z.looseObject({ ID: z.string().min(1) });
export type ParsedJob = z.infer<typeof ParsedJob>;

/** `GET /v1/status/leader`: the leader's RPC address as a JSON string. */
export const NomadLeader = z.string();

/**
 * A variable's metadata as the lock operations answer it (https://developer.hashicorp.com/nomad/api-docs/variables/locks):
 * `Lock` carries the holder's `ID` only for the holder; a 409 answers the same shape without it.
 */
export const VariableLockAnswer = z.looseObject({
  Path: z.string(),
  Lock: z.looseObject({ ID: z.string().optional(), TTL: z.string().optional(), LockDelay: z.string().optional() }).nullish(),
  ModifyIndex: z.number().optional(),
});
export type VariableLockAnswer = z.infer<typeof VariableLockAnswer>;
