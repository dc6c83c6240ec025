import { Cron } from "croner";
import type { Build, BuildBackend, BuildReader, StopReason } from "../builds/backend.js";
import { isTerminal } from "../builds/backend.js";
import { cloneUrlOf, metaForBuilder, planCron } from "../builds/plan.js";
import { entryOfBuild } from "../builds/statuses.js";
import type { Leadership } from "../cluster/leadership.js";
import { errorMessage } from "../errors.js";
import { resolveRefHead } from "../gitea/commit-check.js";
import type { Logger } from "../log.js";
import type { CronSchedule, Registry, RepoEntry } from "../registry/schema.js";
import { timeoutOf } from "../registry/schema.js";

/** What the policies count; prom-client counters fit. */
export interface PolicyMetrics {
  superseded: { inc(): void };
  timedOut: { inc(): void };
  cron: { inc(labels: { result: "dispatched" | "duplicate" | "failed" }): void };
}

export interface PoliciesOptions {
  leadership: Leadership;
  registry: Registry;
  backend: BuildBackend;
  /** Reads builds and stops them; `cancel(id, signal, why)` records the reason with the build. */
  reader: BuildReader;
  log: Logger;
  metrics: PolicyMetrics;
  /** PETREL_BUILDER_JOB. */
  defaultBuilder: string;
  /** How often the cron schedules are read again from the registry (default 15 s). */
  syncMs?: number;
  /** How long resolving a schedule's ref may take (default 10 s). */
  resolveTimeoutMs?: number;
  now?: () => number;
}

/** The build policies of SPEC §11, run by the leader: supersede, timeout, cron. */
export interface Policies {
  /** Every build transition (the tracker's or the local runner's) comes through here. */
  observe(build: Build): void;
  close(): Promise<void>;
}

/** Builds of one branch or pull request (and flavor) of one repository: the ones a newer build supersedes. */
export function supersedeGroup(build: Pick<Build, "repo" | "event" | "ref" | "pr" | "flavor">): string | undefined {
  if (build.event === "push") return JSON.stringify([build.repo.toLowerCase(), "branch", build.ref, build.flavor]);
  if (build.event === "pull_request" && build.pr !== undefined)
    return JSON.stringify([build.repo.toLowerCase(), "pr", build.pr, build.flavor]);
  // Tags, manual and cron builds neither supersede nor get superseded.
  return undefined;
}

/** Dispatch order, oldest first: creation time, then ID, so every replica orders the same builds the same way. */
function olderFirst(a: Build, b: Build): number {
  return Date.parse(a.createdAt) - Date.parse(b.createdAt) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

/**
 * The builds to stop in one group, pure: every unfinished build with a newer build of another commit, each
 * "superseded by" the next newer one, so the reason is the same whichever replica decides and whenever.
 */
export function supersededIn(builds: readonly Build[]): Array<{ build: Build; by: Build }> {
  const sorted = [...builds].sort(olderFirst);
  const out: Array<{ build: Build; by: Build }> = [];
  sorted.forEach((build, i) => {
    if (isTerminal(build.state)) return;
    const by = sorted.slice(i + 1).find((b) => b.commit !== build.commit);
    if (by !== undefined) out.push({ build, by });
  });
  return out;
}

const LIST_LIMIT = 20;
const MAX_TIMER_MS = 2 ** 31 - 1;
const REMEMBERED = 10_000;

export function createPolicies(options: PoliciesOptions): Policies {
  const { leadership, registry, reader, backend, metrics } = options;
  const log = options.log.child({ component: "policies" });
  const now = options.now ?? Date.now;
  const syncMs = options.syncMs ?? 15_000;
  const resolveTimeoutMs = options.resolveTimeoutMs ?? 10_000;

  // Per term: cleared (timers stopped) when leadership ends.
  const stopping = new Set<string>();
  const checked = new Set<string>();
  const timers = new Map<string, NodeJS.Timeout>();
  const schedules = new Map<string, { spec: string; timer?: NodeJS.Timeout | undefined }>();
  let syncTimer: NodeJS.Timeout | undefined;
  let closed = false;
  const pending = new Set<Promise<unknown>>();

  /** Keeps async work to wait for at close; a failure is logged, never an unhandled rejection. */
  const track = (work: Promise<unknown>) => {
    const settled = work.catch((err: unknown) => log.warn({ err: errorMessage(err) }, "policy work failed"));
    pending.add(settled);
    void settled.finally(() => pending.delete(settled));
  };
  const leading = () => !closed && leadership.isLeader() && leadership.term()?.aborted !== true;
  const termSignal = () => leadership.term();

  async function stop(build: Build, why: StopReason, count: { inc(): void }): Promise<void> {
    if (stopping.has(build.id)) return;
    stopping.add(build.id);
    try {
      await reader.cancel(build.id, termSignal(), why);
      count.inc();
      log.info({ build: build.id, reason: why.reason }, "build stopped by policy");
    } catch (err) {
      stopping.delete(build.id);
      log.warn({ build: build.id, reason: why.reason, err: errorMessage(err) }, "could not stop a build");
    }
  }

  // --- supersede -------------------------------------------------------------------------------------------

  async function supersede(build: Build): Promise<void> {
    const group = supersedeGroup(build);
    if (group === undefined) return;
    const entry = await entryOfBuild(registry, build);
    if (entry === undefined || !entry.config.supersede) return;
    // Only the group's builds are read (the others are passed over on their meta), the newest LIST_LIMIT of them.
    // Fresh: a listing already in flight may predate this build, and then neither it nor, when the other build's
    // check shared that same listing, the other would ever be compared (two pushes racing through two replicas).
    const page = await reader.listBuilds(
      { repo: build.repo, ref: build.ref, limit: LIST_LIMIT, visible: (b) => supersedeGroup(b) === group, fresh: true },
      termSignal(),
    );
    const members = page.builds.filter((b) => supersedeGroup(b) === group);
    for (const { build: old, by } of supersededIn(members)) {
      if (!leading()) return;
      await stop(old, { state: "cancelled", reason: `superseded by ${by.id}` }, metrics.superseded);
    }
  }

  // --- timeout ---------------------------------------------------------------------------------------------

  async function watchTimeout(build: Build): Promise<void> {
    if (isTerminal(build.state)) {
      clearTimeout(timers.get(build.id));
      timers.delete(build.id);
      return;
    }
    if (build.state !== "running" || timers.has(build.id)) return;
    const entry = await entryOfBuild(registry, build);
    if (entry === undefined || !leading()) return;
    const timeout = timeoutOf(entry.config, build.flavor);
    const deadline = Date.parse(build.startedAt ?? build.createdAt) + timeout.ms;
    const arm = () => {
      const wait = Math.min(Math.max(0, deadline - now()), MAX_TIMER_MS);
      const timer = setTimeout(() => {
        if (deadline > now()) return arm();
        timers.delete(build.id);
        if (!leading()) return;
        track(
          (async () => {
            const current = await reader.getBuild(build.id, termSignal());
            if (current === undefined || isTerminal(current.state)) return;
            await stop(current, { state: "error", reason: `timed out after ${timeout.text}` }, metrics.timedOut);
          })().catch((err: unknown) => log.warn({ build: build.id, err: errorMessage(err) }, "timeout check failed")),
        );
      }, wait);
      timer.unref();
      timers.set(build.id, timer);
    };
    arm();
  }

  // --- cron ------------------------------------------------------------------------------------------------

  const scheduleKey = (entry: RepoEntry, s: CronSchedule) => `${entry.key}\0${s.name}`;
  const cronOf = (entry: RepoEntry, s: CronSchedule) =>
    new Cron(s.schedule, { paused: true, mode: "5-or-6-parts", timezone: entry.config.tz ?? "UTC" });

  async function fire(key: string, name: string, instant: Date): Promise<void> {
    if (!leading()) return;
    const entry = await registry.get(key);
    const schedule = entry?.config.cron.find((s) => s.name === name);
    if (entry === undefined || schedule === undefined) return;
    const at = { repo: key, schedule: name, instant: instant.toISOString() };
    try {
      const cloneUrl = cloneUrlOf(entry);
      const head = await resolveRefHead({
        url: cloneUrl,
        ref: schedule.ref,
        timeoutMs: resolveTimeoutMs,
        ...(termSignal() === undefined ? {} : { signal: termSignal() as AbortSignal }),
        ...(entry.deployKey === undefined ? {} : { deployKey: entry.deployKey }),
      });
      if (head.kind !== "head") throw new Error(head.message);
      const plan = planCron({ entry, schedule, instant, commit: head.commit, cloneUrl, defaultBuilder: options.defaultBuilder });
      if (plan.kind !== "build") throw new Error(plan.kind === "reject" ? plan.message : plan.reason);
      const params = await backend.parameterized(plan.builder, termSignal());
      const result = await backend.dispatch(
        {
          builder: plan.builder,
          meta: metaForBuilder(plan.meta, params),
          ...(plan.payload === undefined ? {} : { payload: plan.payload }),
          idempotencyToken: plan.idempotencyToken,
        },
        termSignal(),
      );
      metrics.cron.inc({ result: result.duplicate ? "duplicate" : "dispatched" });
      log.info({ ...at, build: result.id, commit: plan.commit, duplicate: result.duplicate }, "scheduled build dispatched");
    } catch (err) {
      metrics.cron.inc({ result: "failed" });
      log.warn({ ...at, err: errorMessage(err) }, "scheduled build could not be dispatched");
    }
  }

  /**
   * Starts a missed run unless a cron build of that ref and flavor exists from its instant on: the token alone
   * would not stop a second run once Nomad garbage-collected the first (4 h after it ended, by default).
   */
  async function catchUpRun(entry: RepoEntry, schedule: CronSchedule, instant: Date): Promise<void> {
    const [, owner = "", name = ""] = entry.key.split("/");
    const ref = schedule.ref.replace(/^refs\/(heads|tags)\//, "");
    const page = await reader.listBuilds({ repo: `${owner}/${name}`, ref, limit: 50 }, termSignal());
    const ran = page.builds.some(
      (b) => b.event === "cron" && b.flavor === schedule.flavor && Date.parse(b.createdAt) >= instant.getTime() - 1000,
    );
    if (ran) return;
    log.info({ repo: entry.key, schedule: schedule.name, instant: instant.toISOString() }, "starting the run missed while no leader ran");
    await fire(entry.key, schedule.name, instant);
  }

  /** Arms the next run of one schedule; the instant is croner's, so every replica names the same one. */
  function arm(key: string, name: string, cron: Cron, after: Date): NodeJS.Timeout | undefined {
    const next = cron.nextRun(after);
    if (next === null) return undefined;
    const state = schedules.get(`${key}\0${name}`);
    const timer = setTimeout(
      () => {
        if (next.getTime() > now()) {
          if (state !== undefined) state.timer = arm(key, name, cron, after);
          return;
        }
        if (state !== undefined) state.timer = arm(key, name, cron, next);
        track(fire(key, name, next));
      },
      Math.min(Math.max(0, next.getTime() - now()), MAX_TIMER_MS),
    );
    timer.unref();
    return timer;
  }

  /** Reads the schedules from the registry and (re)arms the changed ones; at a term's start, catches up the last run. */
  async function sync(catchUp: boolean): Promise<void> {
    if (!leading()) return;
    const seen = new Set<string>();
    for (const entry of await registry.list()) {
      for (const schedule of entry.config.cron) {
        const key = scheduleKey(entry, schedule);
        seen.add(key);
        const spec = JSON.stringify([schedule, entry.config.tz ?? "UTC"]);
        const known = schedules.get(key);
        if (known?.spec === spec) continue;
        clearTimeout(known?.timer);
        let cron: Cron;
        try {
          cron = cronOf(entry, schedule);
        } catch (err) {
          log.warn({ repo: entry.key, schedule: schedule.name, err: errorMessage(err) }, "schedule not armed");
          continue;
        }
        const state: { spec: string; timer?: NodeJS.Timeout | undefined } = { spec };
        schedules.set(key, state);
        const current = new Date(now());
        const timer = arm(entry.key, schedule.name, cron, current);
        if (timer !== undefined) state.timer = timer;
        // A run missed while no leader ran is not caught up, except the most recent one when it is less than one
        // period old; its token is the one the missed leader would have used, so Nomad drops it if it ran.
        if (catchUp) {
          const [last] = cron.previousRuns(1, current);
          const next = last === undefined ? null : cron.nextRun(last);
          if (last !== undefined && next !== null && current.getTime() - last.getTime() < next.getTime() - last.getTime()) {
            track(catchUpRun(entry, schedule, last));
          }
        }
      }
    }
    for (const [key, state] of schedules) {
      if (seen.has(key)) continue;
      clearTimeout(state.timer);
      schedules.delete(key);
    }
  }

  // --- terms -----------------------------------------------------------------------------------------------

  async function reconcile(builds: boolean): Promise<void> {
    await sync(true);
    if (!builds) return;
    // Builds that changed while another replica led (or none did): their timeouts, and groups left with two.
    for (const state of ["running", "queued"] as const) {
      const page = await reader.listBuilds({ state, limit: 500 }, termSignal());
      for (const build of page.builds) observe(build);
    }
  }

  /**
   * `afterFailover`: builds changed while another replica led, so queued and running ones are listed again. At
   * start there is no need: the tracker's first pass reports every recent build (the local runner has none left).
   */
  function startTerm(afterFailover: boolean): void {
    if (!leading()) return;
    if (syncTimer !== undefined) endTerm();
    track(reconcile(afterFailover).catch((err: unknown) => log.warn({ err: errorMessage(err) }, "policy reconciliation failed")));
    syncTimer = setInterval(() => {
      track(sync(false).catch((err: unknown) => log.warn({ err: errorMessage(err) }, "reading the cron schedules failed")));
    }, syncMs);
    syncTimer.unref();
  }

  function endTerm(): void {
    clearInterval(syncTimer);
    syncTimer = undefined;
    for (const timer of timers.values()) clearTimeout(timer);
    timers.clear();
    for (const state of schedules.values()) clearTimeout(state.timer);
    schedules.clear();
    stopping.clear();
    checked.clear();
  }

  function observe(build: Build): void {
    if (!leading()) return;
    // One group check per build and term: its first unfinished state is when it can supersede.
    const check = !isTerminal(build.state) && !checked.has(build.id);
    if (check) {
      checked.add(build.id);
      if (checked.size > REMEMBERED) checked.delete(checked.values().next().value as string);
    }
    const work = Promise.all([check ? supersede(build) : undefined, watchTimeout(build)]);
    track(work.catch((err: unknown) => log.warn({ build: build.id, err: errorMessage(err) }, "policy check failed")));
  }

  const unsubscribe = leadership.onChange((leader) => (leader ? startTerm(true) : endTerm()));
  startTerm(false);

  return {
    observe,
    async close() {
      closed = true;
      unsubscribe();
      endTerm();
      await Promise.allSettled([...pending]);
    },
  };
}
