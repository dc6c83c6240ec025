import type { Build, BuildState } from "../builds/backend.js";
import { isTerminal } from "../builds/backend.js";
import { buildFromMeta } from "../builds/model.js";
import type { AllocationStub, AllocMetric, Evaluation, Job, TaskEvent, TaskState } from "./schema.js";

/** The task group every builder runs (petrel's builder contract, hcl/README.md). */
export const BUILD_GROUP = "runner";
/** The task whose exit decides the build and whose logs are served (petrel's builder contract, hcl/README.md). */
export const BUILD_TASK = "executor";

const ZERO_TIME = "0001-01-01T00:00:00Z";
/** A finished job with no allocation left: it never got one, or Nomad garbage-collected it. */
const NO_ALLOCATION = "finished, but Nomad has no allocation for it (garbage-collected)";

/** True when the build's allocation is gone from Nomad, so its logs are too. */
export function isAllocationGone(build: Build): boolean {
  return build.allocId === undefined && build.state === "error" && build.reason === NO_ALLOCATION;
}

const FAILURE_EVENTS = new Set([
  "Driver Failure",
  "Setup Failure",
  "Failed Validation",
  "Failed Artifact Download",
  "Task hook failed",
  "Disk Resources Exceeded",
  "Failed Restoring Task",
]);

/** The build's allocation: the newest one of the `runner` group (or running the `executor` task). */
export function buildAllocation<A extends AllocationStub>(allocations: readonly A[]): A | undefined {
  let best: A | undefined;
  for (const a of allocations) {
    if (a.TaskGroup !== BUILD_GROUP && a.TaskStates[BUILD_TASK] === undefined) continue;
    if (best === undefined || a.CreateIndex > best.CreateIndex) best = a;
  }
  return best;
}

/** The task whose exit decides the build: `executor`, or the group's only task for builders named otherwise. */
export function buildTask(alloc: AllocationStub): TaskState | undefined {
  const named = alloc.TaskStates[BUILD_TASK];
  if (named !== undefined) return named;
  const all = Object.values(alloc.TaskStates);
  return all.length === 1 ? all[0] : undefined;
}

/** True when a Nomad time field holds a real time (Nomad writes `0001-01-01T00:00:00Z` for none). */
export function isSetTime(value: string | null | undefined): value is string {
  return value !== null && value !== undefined && value !== "" && value !== ZERO_TIME;
}

/**
 * A build from Nomad's state: meta from the child job, state from the task states and events of
 * https://developer.hashicorp.com/nomad/api-docs/allocations#read-allocation (success: every task dead, not failed, exit_code 0).
 * A stopped job's allocation ends `complete` with its task killed: that is cancelled, never success. No
 * allocation plus a failed or blocked evaluation is a placement failure; a lost allocation is an error.
 * `evaluations` is only needed while there is no allocation.
 */
export function buildOf(job: Job, allocations: readonly AllocationStub[], evaluations?: readonly Evaluation[]): Build {
  const alloc = buildAllocation(allocations);
  const build: Build = {
    ...buildFromMeta(job.ID, job.ParentID, job.Meta),
    state: "queued",
    createdAt: isoFromNs(job.SubmitTime),
  };
  const outcome = alloc === undefined ? unplaced(job, evaluations ?? []) : placed(job, alloc);
  build.state = outcome.state;
  if (outcome.reason !== undefined) build.reason = outcome.reason;
  if (outcome.exitCode !== undefined) build.exitCode = outcome.exitCode;
  if (alloc !== undefined) {
    build.allocId = alloc.ID;
    if (alloc.NodeName) build.node = alloc.NodeName;
    const task = buildTask(alloc);
    if (isSetTime(task?.StartedAt)) build.startedAt = task.StartedAt;
    if (isTerminal(build.state) && isSetTime(task?.FinishedAt)) build.finishedAt = task.FinishedAt;
  }
  return build;
}

interface Outcome {
  state: BuildState;
  reason?: string;
  exitCode?: number;
}

function unplaced(job: Job, evaluations: readonly Evaluation[]): Outcome {
  if (job.Stop) return { state: "cancelled", reason: "cancelled before it started" };
  const failed = [...evaluations].reverse().find((e) => Object.keys(e.FailedTGAllocs).length > 0);
  // A blocked evaluation waits for a client that can run the build (a node joins, a driver comes up), so the
  // build is still queued; only an evaluation Nomad gave up on (`failed`), or a job that died unplaced, is an error.
  const gaveUp = evaluations.find((e) => e.Status === "failed");
  if (gaveUp !== undefined) return { state: "error", reason: `could not be placed: ${placementReason(failed ?? gaveUp)}` };
  if (evaluations.some((e) => e.Status === "blocked") || (failed !== undefined && job.Status !== "dead")) {
    return { state: "queued", reason: `waiting for a client that can run it: ${placementReason(failed)}` };
  }
  if (failed !== undefined) return { state: "error", reason: `could not be placed: ${placementReason(failed)}` };
  if (job.Status === "dead") return { state: "error", reason: NO_ALLOCATION };
  return { state: "queued" };
}

function placed(job: Job, alloc: AllocationStub): Outcome {
  const task = buildTask(alloc);
  const events = task?.Events ?? [];
  if (alloc.ClientStatus === "lost") {
    return { state: "error", reason: `lost: ${alloc.ClientDescription || "the node running it went away"}` };
  }
  const stopped = job.Stop || alloc.DesiredStatus === "stop" || alloc.DesiredStatus === "evict";
  const killed = events.some((e) => e.Type === "Killing" || e.Type === "Killed");
  if (task?.State === "dead") {
    if (killed) return { state: "cancelled", reason: "cancelled" };
    const terminated = lastOf(events, "Terminated");
    const code = terminated === undefined ? undefined : exitCodeOf(terminated);
    if (task.Failed) {
      if (code !== undefined && code !== 0) return { state: "failure", reason: `exit code ${code}`, exitCode: code };
      return { state: "error", reason: failureReason(events) };
    }
    if (code === 0) return { state: "success", exitCode: 0 };
    if (stopped) return { state: "cancelled", reason: "cancelled" };
    if (code !== undefined) return { state: "failure", reason: `exit code ${code}`, exitCode: code };
    return { state: "error", reason: "the task ended without an exit code" };
  }
  if (alloc.ClientStatus === "failed") {
    return { state: "error", reason: `allocation failed: ${failureReason(events, alloc.ClientDescription)}` };
  }
  // Stopped but still shutting down: the outcome is already decided.
  if (stopped) return { state: "cancelled", reason: "cancelled" };
  if (task?.State === "running") return { state: "running" };
  if (alloc.ClientStatus === "complete") return { state: "error", reason: "the allocation completed without the executor task" };
  return { state: "queued" };
}

function lastOf(events: readonly TaskEvent[], type: string): TaskEvent | undefined {
  for (let i = events.length - 1; i >= 0; i--) if (events[i]?.Type === type) return events[i];
  return undefined;
}

function exitCodeOf(event: TaskEvent): number | undefined {
  const raw = event.Details.exit_code ?? (typeof event.ExitCode === "number" ? String(event.ExitCode) : undefined);
  if (raw === undefined || raw === "") return undefined;
  const code = Number(raw);
  return Number.isInteger(code) ? code : undefined;
}

function failureReason(events: readonly TaskEvent[], fallback = "the task failed"): string {
  for (let i = events.length - 1; i >= 0; i--) {
    const e = events[i] as TaskEvent;
    if (!FAILURE_EVENTS.has(e.Type) && e.Details.fails_task !== "true") continue;
    if (e.Type === "Not Restarting") continue;
    const detail =
      e.Details.driver_error ||
      e.Details.setup_error ||
      e.Details.validation_error ||
      e.Details.download_error ||
      e.DisplayMessage ||
      e.Message;
    return detail ? `${e.Type}: ${detail}` : e.Type;
  }
  return fallback || "the task failed";
}

/** The scheduler's reason in words: the filters and exhausted resources of the failed task group. */
export function placementReason(failed: Evaluation | undefined): string {
  const metrics = Object.values(failed?.FailedTGAllocs ?? {}) as AllocMetric[];
  const reasons = new Set<string>();
  for (const m of metrics) {
    for (const k of Object.keys(m.ConstraintFiltered)) reasons.add(k);
    for (const k of Object.keys(m.ClassFiltered)) reasons.add(`class ${k} filtered`);
    for (const k of Object.keys(m.DimensionExhausted)) reasons.add(`${k} exhausted`);
    if (m.NodesEvaluated === 0) reasons.add("no nodes were eligible");
  }
  return reasons.size > 0 ? [...reasons].join(", ") : "no node can run it";
}

function isoFromNs(ns: number): string {
  return new Date(msFromNs(ns)).toISOString();
}

/**
 * Nomad's nanosecond times (int64) as whole milliseconds. Today's nanoseconds exceed 2^53, so a parsed value is
 * off by up to 128 ns, and `floor(ns / 1e6)` read one whole millisecond in eight as the one before it, so two
 * jobs submitted a millisecond apart could tie. Rounded to whole microseconds first, a time in whole
 * microseconds (milliseconds included) comes out exact; a time up to about 0.7 µs before a millisecond (the
 * parsed value's error plus the rounding) can come out as that millisecond. The mapping only ever moves forward with its input, so every reader orders builds alike.
 */
export function msFromNs(ns: number): number {
  return Math.floor(Math.round(ns / 1000) / 1000);
}
