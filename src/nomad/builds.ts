import type { Build, BuildPage, BuildReader, BuildState, BuildSummary } from "../builds/backend.js";
import { isAfterCursor, isTerminal, newestFirst } from "../builds/backend.js";
import { buildFromMeta, matchesFilter } from "../builds/model.js";
import { isBuildOf, parentOfBuildId } from "../contract/dispatch.js";
import { AppError } from "../errors.js";
import type { Logger } from "../log.js";
import { untilAborted } from "../util/abort.js";
import type { NomadClient } from "./client.js";
import { createNomadLogs, type NomadLogsOptions } from "./logs.js";
import { buildAllocation, buildOf, msFromNs } from "./outcome.js";
import type { Job, JobListStub } from "./schema.js";

/** The Nomad build reader's collaborators and limits. */
export interface NomadBuildReaderOptions {
  nomad: NomadClient;
  /** The builder jobs whose children are petrel's builds; read on every call. */
  builders: () => ReadonlySet<string>;
  log: Logger;
  /** Timings of the log follower (tests shorten them). */
  logs?: Omit<NomadLogsOptions, "nomad" | "log" | "readBuild">;
  /** Detail reads a listing runs at once. */
  concurrency?: number;
  /** Finished builds remembered, so listings do not read them again. */
  cacheSize?: number;
}

/** The Nomad build reader, plus `readBuild` for callers that already checked the ID (the tracker). */
export type NomadBuildReader = BuildReader & {
  /** The build from Nomad with no builder check; undefined when the job is gone or not a dispatched child. */
  readBuild(id: string, signal?: AbortSignal): Promise<Build | undefined>;
};

const DEFAULT_CONCURRENCY = 8;
const DEFAULT_CACHE = 4096;

/**
 * Builds as Nomad sees them (cluster mode). Each answer comes from Nomad's current state; the only memory is
 * a bounded cache of finished builds keyed by the job's ModifyIndex, which any change to the job invalidates.
 *
 * Calls per `listBuilds`: one `GET /v1/jobs?prefix=<builder>/dispatch-&meta=true` per builder (shared by
 * concurrent listings), then, newest first and at most `concurrency` at a time, `GET /v1/job/:id` +
 * `/allocations` (+ `/evaluations` while a build has no allocation) for at most `limit` children that pass the
 * repository, ref and visibility checks on their Meta and are not cached finished builds: at most
 * builders + 3 × limit whoever asks, and builds the caller may not see are never read.
 */
export function createNomadBuildReader(options: NomadBuildReaderOptions): NomadBuildReader {
  const { nomad, log } = options;
  const concurrency = options.concurrency ?? DEFAULT_CONCURRENCY;
  const cacheSize = options.cacheSize ?? DEFAULT_CACHE;
  const finished = new Map<string, { modifyIndex: number; build: Build }>();
  const metas = new Map<string, Record<string, string>>();

  const remember = <V>(map: Map<string, V>, id: string, value: V) => {
    map.delete(id);
    map.set(id, value);
    if (map.size > cacheSize) map.delete(map.keys().next().value as string);
  };

  const refuse = (id: string): void => {
    if (!isBuildOf(id, options.builders())) {
      throw new AppError("not_found", `${id} is not a petrel build (not a dispatched child of a configured builder job)`);
    }
  };

  const signalOpt = (signal: AbortSignal | undefined) => (signal === undefined ? {} : { signal });

  async function readBuild(id: string, signal?: AbortSignal, known?: Job): Promise<Build | undefined> {
    const job = known ?? (await nomad.readJob(id, signalOpt(signal)))?.job;
    if (job === undefined || !job.Dispatched || job.ParentID !== parentOfBuildId(id)) return undefined;
    remember(metas, id, job.Meta);
    const { allocations } = await nomad.jobAllocations(id, signalOpt(signal));
    const evaluations =
      buildAllocation(allocations) === undefined && !job.Stop ? (await nomad.jobEvaluations(id, signalOpt(signal))).evaluations : undefined;
    const build = buildOf(job, allocations, evaluations);
    // Any later change that could alter a finished build (a placement after a blocked evaluation, a stop)
    // moves the job's status and so its ModifyIndex.
    if (isTerminal(build.state)) remember(finished, id, { modifyIndex: job.ModifyIndex, build });
    return build;
  }

  const follower = createNomadLogs({ ...options.logs, nomad, log, readBuild: (id, signal) => readBuild(id, signal) });

  /** A listed child as a build, from the cache when it finished and has not changed since. */
  async function fromStub(stub: JobListStub, signal?: AbortSignal): Promise<Build | undefined> {
    const cached = finished.get(stub.ID);
    if (cached !== undefined && cached.modifyIndex === stub.ModifyIndex) return cached.build;
    return readBuild(stub.ID, signal);
  }

  const isCachedFinished = (stub: JobListStub): boolean => finished.get(stub.ID)?.modifyIndex === stub.ModifyIndex;

  /** What the stub's Meta (`?meta=true`) or an earlier read says of the build, without a request. */
  const summaryOf = (stub: JobListStub): BuildSummary | undefined => {
    const meta = stub.Meta ?? metas.get(stub.ID);
    return meta === undefined ? undefined : buildFromMeta(stub.ID, stub.ParentID, meta);
  };

  // Concurrent listings (a burst of anonymous readers) share one `GET /v1/jobs` per builder; a fresh one starts
  // its own, which later listings then share.
  const inflight = new Map<string, Promise<JobListStub[]>>();
  function children(builder: string, fresh: boolean, signal?: AbortSignal): Promise<JobListStub[]> {
    let pending = fresh ? undefined : inflight.get(builder);
    if (pending === undefined) {
      const started: Promise<JobListStub[]> = nomad
        .listJobs({ prefix: `${builder}/dispatch-`, meta: true })
        // The prefix also matches children of a builder whose name extends this one's; ParentID decides.
        .then((stubs) => stubs.filter((s) => s.ParentID === builder && isBuildOf(s.ID, new Set([builder]))))
        .finally(() => {
          if (inflight.get(builder) === started) inflight.delete(builder);
        });
      inflight.set(builder, started);
      // Every caller may have left (its signal aborted) before Nomad answers: a failure then has no one to go
      // to, and must not end the process as an unhandled rejection. Callers still waiting get it.
      started.catch(() => undefined);
      pending = started;
    }
    return untilAborted(pending, signal);
  }

  return {
    readBuild: (id, signal) => readBuild(id, signal),

    async getBuild(id, signal) {
      refuse(id);
      return readBuild(id, signal);
    },

    async listBuilds(filter, signal) {
      const builders = [...options.builders()];
      const lists = await Promise.all(builders.map((builder) => children(builder, filter.fresh === true, signal)));
      const candidates = lists
        .flat()
        .map((stub) => ({ stub, time: msFromNs(stub.SubmitTime), id: stub.ID }))
        .filter((c) => isAfterCursor(c.time, c.id, filter.after) && mayHaveState(c.stub, filter.state))
        .sort(newestFirst);
      const out: Build[] = [];
      let hidden = 0;
      let reads = 0;
      let at = 0;
      // Detail reads are bounded by the page size: a page that ran out of its budget ends early with a cursor.
      while (at < candidates.length && out.length < filter.limit && reads < filter.limit) {
        signal?.throwIfAborted();
        const batch: { stub: JobListStub }[] = [];
        while (at < candidates.length && batch.length < concurrency && reads + batch.length < filter.limit) {
          const { stub } = candidates[at] as { stub: JobListStub };
          at += 1;
          const summary = summaryOf(stub);
          if (summary !== undefined && !matchesFilter(summary as Build, withoutState(filter))) continue;
          if (summary !== undefined && filter.visible !== undefined && !(await filter.visible(summary))) {
            hidden += 1;
            continue;
          }
          batch.push({ stub });
        }
        reads += batch.filter(({ stub }) => !isCachedFinished(stub)).length;
        const builds = await Promise.all(batch.map(({ stub }) => fromStub(stub, signal)));
        for (const build of builds) {
          if (build === undefined || !matchesFilter(build, filter)) continue;
          // Stubs without Meta (an older Nomad) are checked once the build is read.
          if (filter.visible !== undefined && !(await filter.visible(build))) {
            hidden += 1;
            continue;
          }
          if (out.length < filter.limit) out.push(build);
        }
      }
      const last = candidates[at - 1];
      const page: BuildPage = { builds: out, hidden };
      if (at < candidates.length && last !== undefined) page.next = { time: last.time, id: last.id };
      return page;
    },

    logs(id, request) {
      refuse(id);
      return follower.follow(id, request);
    },

    async cancel(id, signal) {
      refuse(id);
      // Stop, not purge: the job stays inspectable with `nomad job status`
      // (https://developer.hashicorp.com/nomad/api-docs/jobs#stop-a-job).
      await nomad.stopJob(id, signalOpt(signal));
      finished.delete(id);
    },
  };
}

function withoutState(filter: { repo?: string; ref?: string }): { repo?: string; ref?: string } {
  const out: { repo?: string; ref?: string } = {};
  if (filter.repo !== undefined) out.repo = filter.repo;
  if (filter.ref !== undefined) out.ref = filter.ref;
  return out;
}

/** What a list stub alone rules out: a dead job is finished, and success or failure needs a dead job. */
function mayHaveState(stub: JobListStub, state: BuildState | undefined): boolean {
  if (state === undefined) return true;
  if (state === "queued" || state === "running") return stub.Status !== "dead";
  if (state === "success" || state === "failure") return stub.Status === "dead";
  return true;
}
