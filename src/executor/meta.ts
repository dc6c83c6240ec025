// The executor must start in a few milliseconds and zod alone costs ~55 ms to import on Node 20 (no compile
// cache before Node 22), so the happy path checks the same rules by hand. test/executor/meta.test.ts proves with
// fast-check that these checks accept exactly what BuildMeta/DispatchPayload accept; zod is loaded only to word
// the error message when a check fails.
import type { BuildMeta, DispatchPayload } from "../builds/dispatch.js";
import { ExecutorError } from "./errors.js";

/** Same as REQUIRED_META in src/builds/dispatch.ts (kept in sync by a test). */
export const META_REQUIRED = ["REPO_URL", "COMMIT", "BRANCH", "FLAVOR"] as const;
/** Same as OPTIONAL_META in src/builds/dispatch.ts (kept in sync by a test). */
export const META_OPTIONAL = ["REPO", "EVENT", "PR", "TAG", "TRUSTED", "PRIVATE", "CACHES"] as const;

const COMMIT = /^[0-9a-f]{7,64}$/;
const EVENTS: ReadonlySet<string> = new Set(["push", "tag", "pull_request", "manual"]);
const BOOLS: ReadonlySet<string> = new Set(["true", "false"]);

/** The meta as BuildMeta would parse it, or undefined where BuildMeta would reject it. */
export function checkBuildMeta(raw: Record<string, unknown>): BuildMeta | undefined {
  const { REPO_URL, COMMIT: commit, BRANCH, FLAVOR } = raw;
  if (typeof REPO_URL !== "string" || REPO_URL.length < 1) return undefined;
  if (typeof commit !== "string" || !COMMIT.test(commit)) return undefined;
  if (typeof BRANCH !== "string") return undefined;
  if (typeof FLAVOR !== "string" || FLAVOR.length < 1) return undefined;
  const out: BuildMeta = { REPO_URL, COMMIT: commit, BRANCH, FLAVOR };
  for (const key of ["REPO", "PR", "TAG", "CACHES"] as const) {
    const v = raw[key];
    if (v === undefined) continue;
    if (typeof v !== "string") return undefined;
    out[key] = v;
  }
  const { EVENT, TRUSTED, PRIVATE } = raw;
  if (EVENT !== undefined) {
    if (typeof EVENT !== "string" || !EVENTS.has(EVENT)) return undefined;
    out.EVENT = EVENT as NonNullable<BuildMeta["EVENT"]>;
  }
  if (TRUSTED !== undefined) {
    if (typeof TRUSTED !== "string" || !BOOLS.has(TRUSTED)) return undefined;
    out.TRUSTED = TRUSTED as "true" | "false";
  }
  if (PRIVATE !== undefined) {
    if (typeof PRIVATE !== "string" || !BOOLS.has(PRIVATE)) return undefined;
    out.PRIVATE = PRIVATE as "true" | "false";
  }
  return out;
}

/** The payload as DispatchPayload would parse it, or undefined where DispatchPayload would reject it. */
export function checkDispatchPayload(raw: unknown): DispatchPayload | undefined {
  if (!isPlainObject(raw)) return undefined;
  const { secrets, deploy_key: deployKey } = raw;
  let out: Record<string, string> = {};
  if (secrets !== undefined) {
    if (!isPlainObject(secrets)) return undefined;
    out = {};
    for (const [k, v] of Object.entries(secrets)) {
      // zod's records drop this key unchecked (prototype pollution); so do we.
      if (k === "__proto__") continue;
      if (typeof v !== "string") return undefined;
      out[k] = v;
    }
  }
  if (deployKey !== undefined && typeof deployKey !== "string") return undefined;
  return deployKey === undefined ? { secrets: out } : { secrets: out, deploy_key: deployKey };
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (typeof v !== "object" || v === null || Array.isArray(v)) return false;
  const proto = Object.getPrototypeOf(v) as unknown;
  return proto === Object.prototype || proto === null;
}

/** Validates dispatch meta (BuildMeta); throws a one-line `bad_environment` error naming the fields. */
export async function validateBuildMeta(raw: Record<string, unknown>): Promise<BuildMeta> {
  const meta = checkBuildMeta(raw);
  if (meta) return meta;
  const { BuildMeta } = await import("../builds/dispatch.js");
  const result = BuildMeta.safeParse(raw);
  if (result.success) return result.data;
  throw new ExecutorError("bad_environment", `invalid dispatch meta: ${issues(result.error.issues, "NOMAD_META_")}`);
}

/** Validates the dispatch payload (DispatchPayload); the message never repeats the payload's values. */
export async function validateDispatchPayload(raw: unknown): Promise<DispatchPayload> {
  const payload = checkDispatchPayload(raw);
  if (payload) return payload;
  const { DispatchPayload } = await import("../builds/dispatch.js");
  const result = DispatchPayload.safeParse(raw);
  if (result.success) return result.data;
  throw new ExecutorError("bad_environment", `invalid dispatch payload: ${issues(result.error.issues, "")}`);
}

function issues(list: readonly { path: readonly PropertyKey[]; message: string }[], prefix: string): string {
  return list
    .map((i) => `${i.path.length ? prefix + i.path.map(String).join(".") : "(root)"}: ${i.message}`)
    .join("; ");
}
