import type { Build, BuildFilter, BuildReader, BuildState } from "../builds/backend.js";
import { isTerminal } from "../builds/backend.js";
import { isBuildOf, parentOfBuildId } from "../builds/dispatch.js";
import { buildFromMeta, matchesFilter } from "../builds/model.js";
import { AppError } from "../errors.js";
import type { Logger } from "../log.js";
import type { NomadClient } from "./client.js";
import { createNomadLogs, type NomadLogsOptions } from "./logs.js";
import { buildAllocation, buildOf } from "./outcome.js";
import type { Job, JobListStub } from "./schema.js";

/** The Nomad build reader's collaborators and limits. */
export interface NomadBuildReaderOptions {
  nomad: NomadClient;
  /** The builder jobs whose children are petrel's builds; read on every call. */
  builders: () => ReadonlySet<string>;
  log: Logger;
  /** Timings of the log follower (tests shorten them). */
  logs?: Omit<NomadLogsOptions, "nomad" | "log" | "readBuild">;
  /** Most children one listing reads in detail; with `concurrency`, this bounds the Nomad calls per list. */
  maxScan?: number;
  concurrency?: number;
  /** Finished builds remembered, so listings do not read them again. */
  cacheSize?: number;
}

/** The Nomad build reader, plus `readBuild` for callers that already checked the ID (the tracker). */
export type NomadBuildReader = BuildReader & {
  /** The build from Nomad with no builder check; undefined when the job is gone or not a dispatched child. */
  readBuild(id: string, signal?: AbortSignal): Promise<Build | undefined>;
};

const DEFAULT_MAX_SCAN = 500;
const DEFAULT_CONCURRENCY = 8;
const DEFAULT_CACHE = 4096;

/**
 * Builds as Nomad sees them (cluster mode). Each answer comes from Nomad's current state; the only memory is
 * a bounded cache of finished builds keyed by the job's ModifyIndex, which any change to the job invalidates.
 *
 * Calls per `listBuilds`: one `GET /v1/jobs?prefix=<builder>/dispatch-` per builder, then, newest first and
 * at most `concurrency` at a time, `GET /v1/job/:id` + `/allocations` (+ `/evaluations` while a build has no
 * allocation) for each child that is not a cached finished build, stopping once `limit` builds matched or
 * `maxScan` children were read: at most builders + 3 × maxScan, usually builders + 2 × (builds in progress).
 */
export function createNomadBuildReader(options: NomadBuildReaderOptions): NomadBuildReader {
  const { nomad, log } = options;
  const maxScan = options.maxScan ?? DEFAULT_MAX_SCAN;
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
      throw new AppError("not_found", 404, `${id} is not a petrel build (not a dispatched child of a configured builder job)`);
    }
  };

  const signalOpt = (signal: AbortSignal | undefined) => (signal === undefined ? {} : { signal });

  async function readBuild(id: string, signal?: AbortSignal, known?: Job): Promise<Build | undefined> {
    const job = known ?? (await nomad.readJob(id, signalOpt(signal)))?.job;
    if (job === undefined || !job.Dispatched || job.ParentID !== parentOfBuildId(id)) return undefined;
    remember(metas, id, job.Meta);
    const { allocations } = await nomad.jobAllocations(id, signalOpt(signal));
    const evaluations =
      buildAllocation(allocations) === undefined && !job.Stop
        ? (await nomad.jobEvaluations(id, signalOpt(signal))).evaluations
        : undefined;
    const build = buildOf(job, allocations, evaluations);
    // Any later change that could alter a finished build (a placement after a blocked evaluation, a stop)
    // moves the job's status and so its ModifyIndex.
    if (isTerminal(build.state)) remember(finished, id, { modifyIndex: job.ModifyIndex, build });
    return build;
  }

  const follower = createNomadLogs({ ...options.logs, nomad, log, readBuild: (id, signal) => readBuild(id, signal) });

  /** A listed child as a build, from the cache when it finished and has not changed since. */
  async function fromStub(stub: JobListStub, filter: BuildFilter, signal?: AbortSignal): Promise<Build | undefined> {
    const cached = finished.get(stub.ID);
    if (cached !== undefined && cached.modifyIndex === stub.ModifyIndex) return cached.build;
    const meta = metas.get(stub.ID);
    if (meta !== undefined && !matchesFilter(buildFromMeta(stub.ID, stub.ParentID, meta) as Build, withoutState(filter))) {
      return undefined;
    }
    return readBuild(stub.ID, signal);
  }

  return {
    readBuild: (id, signal) => readBuild(id, signal),

    async getBuild(id, signal) {
      refuse(id);
      return readBuild(id, signal);
    },

    async listBuilds(filter, signal) {
      const builders = [...options.builders()];
      const lists = await Promise.all(
        builders.map(async (builder) => {
          const stubs = await nomad.listJobs({ prefix: `${builder}/dispatch-`, ...signalOpt(signal) });
          // The prefix also matches children of a builder whose name extends this one's; ParentID decides.
          return stubs.filter((s) => s.ParentID === builder && isBuildOf(s.ID, new Set([builder])));
        }),
      );
      const candidates = lists
        .flat()
        .filter((s) => mayHaveState(s, filter.state))
        .sort((a, b) => b.SubmitTime - a.SubmitTime || (a.ID < b.ID ? 1 : a.ID > b.ID ? -1 : 0))
        .slice(0, maxScan);
      const out: Build[] = [];
      for (let at = 0; at < candidates.length && out.length < filter.limit; at += concurrency) {
        signal?.throwIfAborted();
        const batch = await Promise.all(candidates.slice(at, at + concurrency).map((s) => fromStub(s, filter, signal)));
        for (const build of batch) {
          if (build !== undefined && matchesFilter(build, filter) && out.length < filter.limit) out.push(build);
        }
      }
      return out;
    },

    logs(id, request) {
      refuse(id);
      return follower.follow(id, request);
    },

    async cancel(id, signal) {
      refuse(id);
      // Stop, not purge: the job stays inspectable with `nomad job status` (contracts/nomad.md §2.6).
      await nomad.stopJob(id, signalOpt(signal));
      finished.delete(id);
    },
  };
}

function withoutState(filter: BuildFilter): { repo?: string; ref?: string } {
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
