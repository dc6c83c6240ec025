import { closeSync, readFileSync } from "node:fs";
import { readFile, stat, unlink } from "node:fs/promises";
import { homedir } from "node:os";
import { isAbsolute, join } from "node:path";
import { type BuildMeta, type DispatchPayload, OPTIONAL_META, parseCaches, REQUIRED_META } from "../contract/dispatch.js";
import type { ExecutorPlan } from "./build.js";
import { ExecutorError } from "./errors.js";
import { cacheLayout, redactUrl, repoNameFromUrl, repoSlug } from "./layout.js";
import { validateBuildMeta, validateDispatchPayload } from "./meta.js";
import type { Isolation } from "./sandbox.js";
import { parseDuration, readEvictionSettings } from "./settings.js";

type Env = Record<string, string | undefined>;

/** Default of PETREL_CACHE_DIR (a Nomad host volume on clients). */
export const DEFAULT_CACHE_DIR = "/var/cache/petrel";
const DEFAULT_KILL_GRACE_MS = 10_000;
const ISOLATIONS: readonly Isolation[] = ["auto", "mount", "userns", "copy"];

/**
 * The dispatch meta from the task environment. Nomad exports each key as written and upper-cased
 * (`NOMAD_META_<KEY>`), and every declared optional key that was not sent as "" — so "" means absent here.
 */
export function readNomadMeta(env: Env): Record<string, string> {
  const raw: Record<string, string> = {};
  for (const key of REQUIRED_META) {
    const value = env[`NOMAD_META_${key}`];
    if (value === undefined) {
      throw new ExecutorError(
        "bad_environment",
        `NOMAD_META_${key} is not set: petrel executor runs as the task of a dispatched builder job (use petrel run locally)`,
      );
    }
    raw[key] = value;
  }
  for (const key of OPTIONAL_META) {
    const value = env[`NOMAD_META_${key}`];
    if (value !== undefined && value !== "") raw[key] = value;
  }
  return raw;
}

/**
 * The dispatch payload: read to its end from the inherited descriptor `PETREL_PAYLOAD_FD` (single-machine mode,
 * so it never rests on disk) and closed, or read from `${NOMAD_TASK_DIR}/payload.json` and deleted so the build
 * cannot read the deploy key.
 */
export async function readPayload(taskDir: string | undefined, payloadFd?: string): Promise<DispatchPayload | undefined> {
  if (payloadFd) return parsePayload(readPayloadFd(payloadFd), `descriptor ${payloadFd}`);
  if (!taskDir) return undefined;
  const path = join(taskDir, "payload.json");
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new ExecutorError("bad_environment", `cannot read ${path}: ${(err as Error).message}`);
  }
  await unlink(path).catch(() => undefined);
  return parsePayload(text, path);
}

function readPayloadFd(value: string): string {
  if (!/^\d+$/.test(value) || Number(value) < 3) {
    throw new ExecutorError("bad_environment", `PETREL_PAYLOAD_FD=${value}: expected a descriptor number of 3 or more`);
  }
  const fd = Number(value);
  try {
    return readFileSync(fd, "utf8");
  } catch (err) {
    throw new ExecutorError("bad_environment", `cannot read the payload from descriptor ${fd}: ${(err as Error).message}`);
  } finally {
    try {
      closeSync(fd);
    } catch {
      // not open
    }
  }
}

function parsePayload(text: string, path: string): DispatchPayload {
  // An Albatros builder's payload is the entry's shell text itself (SPEC §12); petrel's is a JSON object.
  if (!/^\s*\{/.test(text)) return text.trim() === "" ? { secrets: {} } : { secrets: {}, inject: text };
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new ExecutorError(
      "bad_environment",
      `${path} starts like JSON but is not JSON (expected {"secrets": {...}, "deploy_key": "..."} or shell text)`,
    );
  }
  return validateDispatchPayload(raw);
}

/** The refs that should hold the build's commit, most specific first. */
export function refsToFetch(meta: BuildMeta): string[] {
  const refs: string[] = [];
  if (meta.EVENT === "pull_request" && meta.PR && /^\d+$/.test(meta.PR)) refs.push(`refs/pull/${meta.PR}/head`);
  if (meta.TAG) refs.push(meta.TAG.startsWith("refs/") ? meta.TAG : `refs/tags/${meta.TAG}`);
  // A pull request's BRANCH names the head branch, which may live in a fork: only the PR ref is in the base repo.
  if (meta.BRANCH && meta.EVENT !== "pull_request") {
    const ref = meta.BRANCH.startsWith("refs/") ? meta.BRANCH : `refs/heads/${meta.BRANCH}`;
    if (!refs.includes(ref)) refs.push(ref);
  }
  return refs;
}

/** TERM, FORCE_COLOR and CLICOLOR_FORCE: kept when set, else set so tools colour logs that browsers render. */
export function colourVars(env: Env): Record<string, string> {
  return {
    TERM: env.TERM || "xterm-256color",
    FORCE_COLOR: env.FORCE_COLOR ?? "1",
    CLICOLOR_FORCE: env.CLICOLOR_FORCE ?? "1",
  };
}

/** Shared settings of `petrel executor` and `petrel run` read from the environment. */
export function readRuntimeSettings(env: Env): { isolation: Isolation; killGraceMs: number } {
  const isolation = (env.PETREL_ISOLATION || "auto") as Isolation;
  if (!ISOLATIONS.includes(isolation)) {
    const expected = ISOLATIONS.join(", ");
    throw new ExecutorError("bad_environment", `PETREL_ISOLATION=${env.PETREL_ISOLATION}: expected one of ${expected}`);
  }
  let killGraceMs = DEFAULT_KILL_GRACE_MS;
  if (env.PETREL_KILL_GRACE) {
    const parsed = parseDuration(env.PETREL_KILL_GRACE);
    if (parsed === undefined) {
      throw new ExecutorError("bad_environment", `PETREL_KILL_GRACE=${env.PETREL_KILL_GRACE}: expected a duration such as 10s`);
    }
    killGraceMs = parsed;
  }
  return { isolation, killGraceMs };
}

/** The build a Nomad task environment describes (petrel's executor interface, docs/executor.md): meta, payload, cache and secrets directories. */
export async function planFromNomadEnv(env: Env): Promise<ExecutorPlan> {
  const id = env.NOMAD_JOB_ID;
  if (!id) {
    throw new ExecutorError("bad_environment", "NOMAD_JOB_ID is not set: petrel executor runs as a Nomad task (use petrel run locally)");
  }
  const meta = validateBuildMeta(readNomadMeta(env));
  const cacheRoot = env.PETREL_CACHE_DIR || DEFAULT_CACHE_DIR;
  if (!isAbsolute(cacheRoot)) {
    throw new ExecutorError("bad_environment", `PETREL_CACHE_DIR=${cacheRoot}: must be an absolute path`);
  }
  const eviction = readEvictionSettings(env);
  if ("problem" in eviction) {
    const p = eviction.problem;
    throw new ExecutorError("bad_environment", `${p.variable}=${p.value}: expected ${p.expected}`);
  }
  const runtime = readRuntimeSettings(env);
  const taskDir = env.NOMAD_TASK_DIR || undefined;
  const payload = await readPayload(taskDir, env.PETREL_PAYLOAD_FD);
  const { PETREL_PAYLOAD_FD: _fd, ...baseEnv } = env;
  // A builder that does not declare TRUSTED (an Albatros builder) gets a payload only when the build is trusted.
  const trusted = meta.TRUSTED === undefined ? payload !== undefined : meta.TRUSTED === "true";
  const secretsDir = env.NOMAD_SECRETS_DIR && (await isDir(env.NOMAD_SECRETS_DIR)) ? env.NOMAD_SECRETS_DIR : undefined;
  const name = meta.REPO || repoNameFromUrl(meta.REPO_URL);
  const plan: ExecutorPlan = {
    id,
    layout: cacheLayout(cacheRoot),
    label: `${name}@${meta.COMMIT.slice(0, 7)}`,
    repoSlug: repoSlug(meta.REPO_URL),
    source: {
      kind: "commit",
      checkout: {
        url: meta.REPO_URL,
        commit: meta.COMMIT,
        refs: refsToFetch(meta),
        ...(payload?.deploy_key ? { deployKey: payload.deploy_key } : {}),
      },
    },
    baseEnv,
    vars: {
      COMMIT: meta.COMMIT,
      BRANCH: meta.BRANCH,
      REPO_URL: redactUrl(meta.REPO_URL),
      FLAVOR: meta.FLAVOR,
      CI: "true",
      PETREL_BUILD_ID: id,
      ...colourVars(env),
    },
    trusted,
    secrets: trusted ? (payload?.secrets ?? {}) : {},
    ...(trusted && payload?.inject !== undefined ? { inject: payload.inject } : {}),
    caches: parseCaches(meta.CACHES),
    home: env.HOME || homedir(),
    hideCacheRoot: true,
    isolation: runtime.isolation,
    debug: false,
    newSession: true,
    killGraceMs: runtime.killGraceMs,
    eviction: eviction.settings,
  };
  if (taskDir) plan.buildDir = join(taskDir, "build");
  if (secretsDir) plan.secretsDir = secretsDir;
  return plan;
}

async function isDir(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory();
  } catch {
    return false;
  }
}
