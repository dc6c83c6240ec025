import { randomBytes } from "node:crypto";
import type { Context } from "hono";
import { payloadForBuilder } from "../builds/albatros.js";
import type { Build } from "../builds/backend.js";
import { isTerminal } from "../builds/backend.js";
import type { BuildPlan, Plan, PlanEvent } from "../builds/plan.js";
import { isEntryCloneUrl, metaForBuilder, planManual } from "../builds/plan.js";
import { entryOfBuild } from "../builds/statuses.js";
import { AppError } from "../errors.js";
import { isRefName } from "../gitea/binding.js";
import { checkCommitOnRef } from "../gitea/commit-check.js";
import type { RepoEntry } from "../registry/schema.js";
import type { Access } from "./access.js";
import type { AppDeps } from "./deps.js";

/** How long `POST /builds` may spend fetching the ref to check that the commit is on it. */
const COMMIT_CHECK_TIMEOUT_MS = 60_000;
const PLAN_EVENTS: ReadonlySet<string> = new Set(["push", "tag", "pull_request", "manual"]);

/** A re-run as dispatched: the new build, and why it runs without the secrets when it does. */
export interface Rerun {
  plan: BuildPlan & { id: string };
  untrusted?: string;
}

/** What changes builds, shared by the API (bearer token) and the pages' forms (session cookie and CSRF token). */
export interface BuildActions {
  dispatchPlan(c: Context, plan: Plan): Promise<BuildPlan & { id: string }>;
  commitCheck(c: Context, entry: RepoEntry, url: string, ref: string, commit: string): ReturnType<typeof checkCommitOnRef>;
  /** Stops a running build; the build as it is after the cancel. */
  cancel(c: Context, id: string): Promise<Build>;
  /**
   * The same clone URL, commit, ref, flavor and event as build <id>, as a new build. Trust is decided again and
   * never grows: only a trusted original whose commit its ref still reaches (at a clone URL of the entry's own
   * forge) gives a trusted re-run; anything else runs without the secrets.
   */
  rerun(c: Context, id: string): Promise<Rerun>;
}

/** The callers must have checked the admin's credential: these only check what the build allows. */
export function createBuildActions(deps: AppDeps, access: Access): BuildActions {
  const dispatchPlan = async (c: Context, plan: Plan): Promise<BuildPlan & { id: string }> => {
    if (plan.kind === "skip") throw new AppError("bad_request", plan.reason);
    if (plan.kind === "reject") throw new AppError(plan.code, plan.message);
    const params = await deps.backend.parameterized(plan.builder, c.req.raw.signal);
    const payload = payloadForBuilder(plan.payload, params);
    const result = await deps.backend.dispatch(
      {
        builder: plan.builder,
        meta: metaForBuilder(plan.meta, params),
        ...(payload === undefined ? {} : { payload }),
        idempotencyToken: plan.idempotencyToken,
      },
      c.req.raw.signal,
    );
    return { ...plan, id: result.id };
  };

  const commitCheck = (c: Context, entry: RepoEntry, url: string, ref: string, commit: string) =>
    checkCommitOnRef({
      url,
      ref,
      commit,
      timeoutMs: COMMIT_CHECK_TIMEOUT_MS,
      signal: c.req.raw.signal,
      ...(entry.deployKey === undefined ? {} : { deployKey: entry.deployKey }),
    });

  return {
    dispatchPlan,
    commitCheck,
    async cancel(c, id) {
      const build = await access.ourBuild(c, id);
      if (isTerminal(build.state)) {
        throw new AppError(
          "already_finished",
          `build ${id} had already ended: ${build.state}${build.reason ? ` (${build.reason})` : ""}; nothing to cancel`,
        );
      }
      await deps.reader.cancel(id, c.req.raw.signal);
      const after = (await deps.reader.getBuild(id, c.req.raw.signal)) ?? build;
      deps.log.info({ build: id, state: after.state }, "build cancelled by an admin");
      return after;
    },
    async rerun(c, id) {
      const original = await access.ourBuild(c, id);
      const entry = await entryOfBuild(deps.registry, original);
      if (entry === undefined)
        throw new AppError("not_registered", `the repository of build ${id} (${original.repo}) is no longer registered with petrel`);
      const ref = original.pr
        ? `refs/pull/${original.pr}/head`
        : original.tag !== undefined || original.event === "tag"
          ? `refs/tags/${original.tag ?? original.ref}`
          : `refs/heads/${original.ref}`;
      if (!isRefName(ref))
        throw new AppError("bad_request", `build ${id} has no ref petrel can build again (${JSON.stringify(ref.slice(0, 200))})`);
      const cloneUrl = entry.config.clone_url ?? original.repoUrl;
      let untrusted: string | undefined;
      if (!original.trusted) untrusted = "the original build was not trusted";
      else if (!isEntryCloneUrl(entry, cloneUrl)) untrusted = "the original build's clone URL is not on the repository's forge";
      else {
        const check = await commitCheck(c, entry, cloneUrl, ref, original.commit);
        if (check.kind !== "on_ref") untrusted = `the commit can no longer be checked to be on ${ref}: ${check.message}`;
      }
      const plan = await dispatchPlan(
        c,
        planManual({
          entry,
          ref,
          commit: original.commit,
          flavor: original.flavor,
          defaultBuilder: deps.defaultBuilder,
          nonce: randomBytes(8).toString("hex"),
          repoUrl: cloneUrl,
          ...(entry.config.private === undefined ? {} : { private: entry.config.private }),
          rerun: {
            event: PLAN_EVENTS.has(original.event) ? (original.event as PlanEvent) : "manual",
            branch: original.ref,
            trusted: untrusted === undefined,
          },
        }),
      );
      deps.log.info(
        { build: plan.id, rerunOf: id, repo: entry.key, ref: plan.ref, commit: plan.commit, trusted: plan.trusted },
        "build re-run dispatched",
      );
      return untrusted === undefined ? { plan } : { plan, untrusted };
    },
  };
}
