import { createHash } from "node:crypto";
import {
  type BuildEvent,
  type BuildMeta,
  DISPATCH_PAYLOAD_LIMIT,
  type DispatchPayload,
  formatCaches,
  OPTIONAL_META,
  payloadBytes,
} from "../contract/dispatch.js";
import type { ErrorCode } from "../errors.js";
import { type BoundRepository, bindDelivery, isCloneUrlOfEntry, isRefName } from "../gitea/binding.js";
import type { Delivery, PullRequestEvent, PushEvent } from "../gitea/events.js";
import { flavorsOf, type RepoEntry } from "../registry/schema.js";
import type { BuilderParams } from "./backend.js";

/** The event a build records: what the forge sent, or `manual` for `POST /builds`. */
export type PlanEvent = NonNullable<BuildMeta["EVENT"]>;

/** A build to dispatch: the builder job, its meta and (trusted builds only) its payload. */
export interface BuildPlan {
  kind: "build";
  builder: string;
  flavor: string;
  /** `owner/name`, for commit statuses. */
  repo: string;
  meta: BuildMeta;
  /** Secrets and deploy key; present only when `trusted`. */
  payload?: DispatchPayload;
  trusted: boolean;
  /** Nomad dispatch idempotency token: hex SHA-256, 64 characters. */
  idempotencyToken: string;
  commit: string;
  /** Full ref: `refs/heads/x`, `refs/tags/t` or `refs/pull/<n>/head`. */
  ref: string;
  event: PlanEvent;
}

/** A delivery that is valid but starts no build; answered 200 `{"status":"skipped","reason"}`. */
export interface SkipPlan {
  kind: "skip";
  reason: string;
}

/** A request petrel refuses, answered with this code. */
export interface RejectPlan {
  kind: "reject";
  /** The HTTP status follows from the code (`statusOf` in src/errors.ts). */
  code: ErrorCode;
  message: string;
}

export type Plan = BuildPlan | SkipPlan | RejectPlan;

export interface PlanBuildInput {
  delivery: Delivery;
  entry: RepoEntry;
  /** The `?flavor=` of the hook URL; `default` when absent. */
  flavor: string;
  /** `PETREL_BUILDER_JOB`, the builder of the implicit `default` flavor. */
  defaultBuilder: string;
}

const ZERO_ID = /^0+$/;
const FLAVOR_NAME = /^[A-Za-z0-9._-]{1,64}$/;
const COMMIT_ID = /^[0-9a-f]{7,64}$/;
/** `[skip ci]` or `[ci skip]`, as GitHub, GitLab and Gitea Actions honour them. */
const SKIP_CI = /\[(?:skip ci|ci skip)\]/i;
const BUILD_ACTIONS: ReadonlySet<string> = new Set(["opened", "synchronized", "reopened"]);

/**
 * Decides what a verified delivery builds, pure: which builder, with which meta, and whether the build is
 * trusted with the repository's secrets (sender listed in `trusted.senders` and, for pull requests, head
 * repository = base repository). A delivery that names any repository but the entry's is refused
 * (`repository_mismatch`); what the build clones and reports on comes from the entry, not the payload.
 */
export function planBuild({ delivery, entry, flavor, defaultBuilder }: PlanBuildInput): Plan {
  const bound = bindDelivery(entry.key, entry, delivery);
  if (!bound.ok) return { kind: "reject", code: "repository_mismatch", message: bound.message };
  const builder = builderOf(entry, flavor, defaultBuilder);
  if (typeof builder !== "string") return builder;
  const target = { entry, flavor, builder, bound };
  switch (delivery.kind) {
    case "push":
      return planPush(delivery.payload, target);
    case "pull_request":
      return planPullRequest(delivery.payload, target);
    default:
      return { kind: "skip", reason: `event "${delivery.event}" does not start a build` };
  }
}

export interface PlanManualInput {
  entry: RepoEntry;
  /** `refs/heads/x`, `refs/tags/t`, `refs/pull/<n>/head`, or a bare branch name. */
  ref: string;
  /** The commit to build, already resolved from the ref by the caller. */
  commit: string;
  flavor: string;
  defaultBuilder: string;
  /** Random per request, so each manual trigger is a fresh build. */
  nonce: string;
  /** Clone URL the caller found (the repository's last build); the entry's `clone_url` wins over it. */
  repoUrl?: string;
  private?: boolean;
  /** A re-run: the event and BRANCH of the build it repeats, and whether it may be trusted (decided by the caller). */
  rerun?: RerunOf;
}

export interface RerunOf {
  event: PlanEvent;
  /** The BRANCH meta of the original (a pull request's head branch name, say). */
  branch: string;
  /** At most the original's trust: see `POST /builds/<id>/rerun` in the README. */
  trusted: boolean;
}

/**
 * Plans a manual build or re-run (`POST /builds`, `POST /builds/<id>/rerun`), pure. An admin asked for a manual
 * build, so branches and tags are trusted; `refs/pull/*` may hold fork code and is never trusted. A re-run is
 * trusted only when the caller says so (`rerun.trusted`), whatever its ref.
 */
export function planManual(input: PlanManualInput): Plan {
  const { entry, flavor, defaultBuilder, rerun } = input;
  const builder = builderOf(entry, flavor, defaultBuilder);
  if (typeof builder !== "string") return builder;
  const commit = input.commit.toLowerCase();
  if (!COMMIT_ID.test(commit)) return badRequest("commit must be a hex commit id (7 to 64 characters)");
  const ref = input.ref.startsWith("refs/") ? input.ref : `refs/heads/${input.ref}`;
  if (!isRefName(ref)) return badRequest(`ref ${JSON.stringify(ref.slice(0, 200))} is not a valid git ref name`);
  const pull = /^refs\/pull\/([1-9][0-9]*)\/head$/.exec(ref);
  let branch: string;
  let extra: Partial<BuildMeta> = {};
  if (ref.startsWith("refs/heads/") && ref.length > "refs/heads/".length) {
    branch = ref.slice("refs/heads/".length);
  } else if (ref.startsWith("refs/tags/") && ref.length > "refs/tags/".length) {
    branch = ref.slice("refs/tags/".length);
    extra = { TAG: branch };
  } else if (pull) {
    branch = ref;
    extra = { PR: pull[1] ?? "" };
  } else {
    return badRequest("ref must be a branch, refs/tags/<tag> or refs/pull/<n>/head");
  }
  // A pull request build keeps its head branch name as BRANCH, as the webhook gave it.
  if (rerun !== undefined && pull && rerun.branch !== "" && isRefName(`refs/heads/${rerun.branch}`)) branch = rerun.branch;
  const [, owner = "", name = ""] = entry.key.split("/");
  return build({
    target: { entry, flavor, builder },
    repo: `${owner}/${name}`,
    // The entry's clone_url is the operator's word and wins over any URL found elsewhere.
    cloneUrl: entry.config.clone_url ?? input.repoUrl ?? cloneUrlOf(entry),
    ...(input.private === undefined ? {} : { isPrivate: input.private }),
    event: rerun?.event ?? "manual",
    ref,
    commit,
    branch,
    extra,
    trusted: rerun === undefined ? pull === null : rerun.trusted,
    nonce: input.nonce,
  });
}

export interface PlanCronInput {
  entry: RepoEntry;
  schedule: { name: string; ref: string; flavor: string };
  /** The scheduled instant this run stands for (not the moment it fired). */
  instant: Date;
  /** What the ref pointed to when the run fired. */
  commit: string;
  cloneUrl: string;
  defaultBuilder: string;
}

/**
 * Plans one run of a `cron` schedule, pure: `EVENT=cron`, trusted like a trusted sender's push (the operator
 * wrote the schedule). Its idempotency token derives from the repository, the schedule's name and the
 * scheduled instant only, so two leaders firing the same instant (a failover) dispatch one build even when
 * the ref moved between their two reads of it.
 */
export function planCron(input: PlanCronInput): Plan {
  const { entry, schedule, instant } = input;
  const plan = planManual({
    entry,
    ref: schedule.ref,
    commit: input.commit,
    flavor: schedule.flavor,
    defaultBuilder: input.defaultBuilder,
    repoUrl: input.cloneUrl,
    nonce: "",
    ...(entry.config.private === undefined ? {} : { private: entry.config.private }),
    rerun: { event: "cron", branch: "", trusted: true },
  });
  if (plan.kind !== "build") return plan;
  const canonical = JSON.stringify(["petrel-cron/1", entry.key, schedule.name, instant.toISOString()]);
  return { ...plan, idempotencyToken: createHash("sha256").update(canonical, "utf8").digest("hex") };
}

/**
 * The meta to send to one builder, as Nomad's dispatch `Meta` map: the four required keys always, the optional
 * ones only when the builder declares them, since Nomad refuses undeclared keys (an Albatros builder knows
 * just the required four).
 */
export function metaForBuilder(meta: BuildMeta, params: Pick<BuilderParams, "metaRequired" | "metaOptional">): Record<string, string> {
  const declared = new Set([...params.metaRequired, ...params.metaOptional]);
  const out: Record<string, string> = {
    REPO_URL: meta.REPO_URL,
    COMMIT: meta.COMMIT,
    BRANCH: meta.BRANCH,
    FLAVOR: meta.FLAVOR,
  };
  for (const key of OPTIONAL_META) {
    const value = meta[key];
    if (value !== undefined && declared.has(key)) out[key] = value;
  }
  return out;
}

/** The idempotency token of a build: same inputs, same token; any input changed, another token. */
export function idempotencyToken(parts: {
  repoKey: string;
  event: PlanEvent;
  ref: string;
  commit: string;
  flavor: string;
  nonce?: string;
}): string {
  // JSON of a fixed-order array: no separator inside one field can make two different inputs collide.
  const canonical = JSON.stringify([
    "petrel-build/1",
    parts.repoKey,
    parts.event,
    parts.ref,
    parts.commit,
    parts.flavor,
    parts.nonce ?? null,
  ]);
  return createHash("sha256").update(canonical, "utf8").digest("hex");
}

interface Target {
  entry: RepoEntry;
  flavor: string;
  builder: string;
}

interface BoundTarget extends Target {
  bound: BoundRepository;
}

function planPush(push: PushEvent, target: BoundTarget): Plan {
  const { ref, after } = push;
  if (!isRefName(ref)) return badRequest(`push ref ${JSON.stringify(ref.slice(0, 200))} is not a valid git ref name`);
  if (ZERO_ID.test(after)) return { kind: "skip", reason: `ref deleted: ${ref}` };
  let branch: string;
  let event: BuildEvent;
  let extra: Partial<BuildMeta> = {};
  let commit = after;
  if (ref.startsWith("refs/heads/") && ref.length > "refs/heads/".length) {
    branch = ref.slice("refs/heads/".length);
    event = "push";
  } else if (ref.startsWith("refs/tags/") && ref.length > "refs/tags/".length) {
    // BRANCH carries the tag name as Albatros did, so builders that only read BRANCH still see which tag.
    branch = ref.slice("refs/tags/".length);
    event = "tag";
    extra = { TAG: branch };
    commit = push.head_commit?.id ?? after;
  } else {
    return { kind: "skip", reason: `push to ${ref} is neither a branch nor a tag` };
  }
  if (SKIP_CI.test(push.head_commit?.message ?? "")) return { kind: "skip", reason: "skip ci" };
  return build({
    target,
    repo: target.bound.repo,
    cloneUrl: target.bound.repoUrl,
    isPrivate: push.repository.private,
    event,
    ref,
    commit,
    branch,
    extra,
    trusted: isTrustedSender(target.entry, push.sender.login),
  });
}

function planPullRequest(event: PullRequestEvent, target: BoundTarget): Plan {
  const { action, number, pull_request: pr, repository, sender } = event;
  if (!BUILD_ACTIONS.has(action)) {
    const what = action === "closed" && pr.merged ? "closed (merged)" : `"${action}"`;
    return { kind: "skip", reason: `pull request #${number} ${what} does not start a build` };
  }
  if (SKIP_CI.test(pr.title ?? "")) return { kind: "skip", reason: "skip ci" };
  const pullRef = `refs/pull/${number}/head`;
  // head.ref becomes BRANCH in the build's environment: a forged one must not carry anything a ref cannot.
  if (pr.head.ref !== "" && !isRefName(`refs/heads/${pr.head.ref}`)) {
    return badRequest(`pull request head ref ${JSON.stringify(pr.head.ref.slice(0, 200))} is not a valid git branch name`);
  }
  const head = pr.head.repo;
  // A fork's code must never see the base repository's secrets; a deleted head repository counts as a fork.
  const sameRepo =
    head !== null && sameName(head.full_name, pr.base.repo.full_name) && sameName(pr.base.repo.full_name, repository.full_name);
  return build({
    target,
    repo: target.bound.repo,
    // The executor fetches refs/pull/<n>/head from the base repository (the entry's), which works for forks too.
    cloneUrl: target.bound.repoUrl,
    isPrivate: repository.private,
    event: "pull_request",
    ref: pullRef,
    commit: pr.head.sha,
    branch: head !== null && pr.head.ref ? pr.head.ref : pullRef,
    extra: { PR: String(number) },
    trusted: sameRepo && isTrustedSender(target.entry, sender.login),
  });
}

interface BuildParts {
  target: Target;
  repo: string;
  cloneUrl: string;
  isPrivate?: boolean;
  event: PlanEvent;
  ref: string;
  commit: string;
  branch: string;
  extra: Partial<BuildMeta>;
  trusted: boolean;
  nonce?: string;
}

function build(parts: BuildParts): Plan {
  const { target, event, ref, commit, trusted } = parts;
  const { entry, flavor, builder } = target;
  const caches = formatCaches(entry.config.caches);
  const meta: BuildMeta = {
    REPO_URL: parts.cloneUrl,
    COMMIT: commit,
    BRANCH: parts.branch,
    FLAVOR: flavor,
    REPO: parts.repo,
    EVENT: event,
    ...parts.extra,
    TRUSTED: trusted ? "true" : "false",
    ...(parts.isPrivate === undefined ? {} : { PRIVATE: parts.isPrivate ? "true" : "false" }),
    ...(caches ? { CACHES: caches } : {}),
  };
  const plan: BuildPlan = {
    kind: "build",
    builder,
    flavor,
    repo: parts.repo,
    meta,
    trusted,
    idempotencyToken: idempotencyToken({
      repoKey: entry.key,
      event,
      ref,
      commit,
      flavor,
      ...(parts.nonce === undefined ? {} : { nonce: parts.nonce }),
    }),
    commit,
    ref,
    event,
  };
  if (!trusted) return plan;
  const payload: DispatchPayload = {
    secrets: { ...entry.secrets },
    ...(entry.deployKey === undefined ? {} : { deploy_key: entry.deployKey }),
    ...(entry.inject === undefined ? {} : { inject: entry.inject }),
  };
  if (payloadBytes(payload) > DISPATCH_PAYLOAD_LIMIT) {
    return {
      kind: "reject",
      code: "config_invalid",
      message: `the secrets of ${entry.key} exceed Nomad's 16 KiB dispatch payload limit`,
    };
  }
  return { ...plan, payload };
}

function builderOf(entry: RepoEntry, flavor: string, defaultBuilder: string): string | RejectPlan {
  if (!FLAVOR_NAME.test(flavor)) return badRequest("flavor must be letters, digits, '.', '_' or '-'");
  const flavors = flavorsOf(entry.config, defaultBuilder);
  // hasOwn: a flavor named like an Object.prototype member ("constructor") must not resolve to one.
  // Albatros passed any flavor to its one builder as the FLAVOR meta; its entries keep working that way.
  if (!Object.hasOwn(flavors, flavor) && entry.albatros !== undefined) return flavors.default?.builder ?? defaultBuilder;
  if (!Object.hasOwn(flavors, flavor)) {
    const known = Object.keys(flavors).sort().join(", ");
    return badRequest(`unknown flavor "${flavor}"; ${entry.key} has: ${known}`);
  }
  const builder = flavors[flavor]?.builder;
  return builder ?? badRequest(`unknown flavor "${flavor}"`);
}

function isTrustedSender(entry: RepoEntry, login: string): boolean {
  // Gitea and Forgejo user names are unique case-insensitively, so "Dana" and "dana" are one account.
  const who = login.toLowerCase();
  return entry.config.trusted.senders.some((s) => s.toLowerCase() === who);
}

function sameName(a: string, b: string): boolean {
  return a.toLowerCase() === b.toLowerCase();
}

/** The clone URL of a registered repository: its `clone_url`, else on its `gitea.url`, else https on its key's host. */
export function cloneUrlOf(entry: RepoEntry): string {
  if (entry.config.clone_url !== undefined) return entry.config.clone_url;
  const [host = "", owner = "", name = ""] = entry.key.split("/");
  const base = entry.config.gitea?.url.replace(/\/+$/, "") ?? `https://${host.replace(/_(\d+)$/, ":$1")}`;
  return `${base}/${owner}/${name}.git`;
}

/**
 * True when `url` clones the entry's own repository: its `clone_url`, or a URL on the entry key's host or
 * `gitea.url`'s host whose path ends in the entry's owner/name. A URL read back from a build record (Nomad
 * meta anyone allowed to dispatch can set) is used for a trusted build only when this holds.
 */
export function isEntryCloneUrl(entry: RepoEntry, url: string): boolean {
  return isCloneUrlOfEntry(entry.key, entry, url);
}

function badRequest(message: string): RejectPlan {
  return { kind: "reject", code: "bad_request", message };
}
