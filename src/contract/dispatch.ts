// The dispatch contract between petrel and the executor: what one build's dispatch carries and how its ID reads.
// The dispatcher (src/builds, src/nomad, src/local) and the executor both use this module, so it imports
// nothing: the executor must start in a few milliseconds, and zod alone costs ~55 ms to load on Node 20.

/** Meta keys every builder declares as required (Albatros-compatible). */
export const REQUIRED_META = ["REPO_URL", "COMMIT", "BRANCH", "FLAVOR"] as const;
/** Meta keys petrel sends when the builder's `meta_optional` declares them. */
export const OPTIONAL_META = ["REPO", "EVENT", "PR", "TAG", "TRUSTED", "PRIVATE", "CACHES"] as const;

/** The events a forge sends that start a build. */
export type BuildEvent = "push" | "tag" | "pull_request";

/** The dispatch meta of one build, as the dispatcher sends it and the executor reads it back. */
export interface BuildMeta {
  REPO_URL: string;
  COMMIT: string;
  BRANCH: string;
  FLAVOR: string;
  REPO?: string;
  /** A forge event, `manual` for a build started through `POST /builds`, `cron` for a scheduled one. */
  EVENT?: BuildEvent | "manual" | "cron";
  PR?: string;
  TAG?: string;
  TRUSTED?: "true" | "false";
  PRIVATE?: "true" | "false";
  CACHES?: string;
}

/**
 * The dispatch payload: present only for trusted builds. `inject` is shell text the build sources after the
 * secrets (an Albatros entry's). A builder that declares no optional meta (an Albatros builder) gets the shell
 * text alone instead of this JSON, as Albatros sent it; the executor reads either.
 */
export interface DispatchPayload {
  secrets: Record<string, string>;
  deploy_key?: string;
  inject?: string;
}

/** Nomad refuses dispatch payloads over 16 KiB of decoded data (nomad/job_endpoint.go DispatchPayloadSizeLimit). */
export const DISPATCH_PAYLOAD_LIMIT = 16 * 1024;

/** The size of a payload as it is sent: its JSON (or, for an Albatros builder, its shell text) in UTF-8. */
export function payloadBytes(payload: DispatchPayload | string): number {
  return Buffer.byteLength(typeof payload === "string" ? payload : JSON.stringify(payload), "utf8");
}

/** One thing wrong with a checked value; `path` names the field (empty for the value itself), never its value. */
export interface ContractProblem {
  path: string;
  message: string;
}

/** A checked value, or why it is refused. */
export type Checked<T> = { ok: true; value: T } | { ok: false; problems: ContractProblem[] };

const COMMIT_ID = /^[0-9a-f]{7,64}$/;
const META_EVENTS: ReadonlySet<string> = new Set<NonNullable<BuildMeta["EVENT"]>>(["push", "tag", "pull_request", "manual", "cron"]);
const BOOLS: ReadonlySet<string> = new Set(["true", "false"]);

/** Checks dispatch meta; unknown keys are dropped, every problem is reported. */
export function checkBuildMeta(raw: Record<string, unknown>): Checked<BuildMeta> {
  const problems: ContractProblem[] = [];
  const text = (key: string, rule?: (v: string) => string | undefined): string | undefined => {
    const v = raw[key];
    if (v === undefined) return undefined;
    if (typeof v !== "string") {
      problems.push({ path: key, message: "expected a string" });
      return undefined;
    }
    const wrong = rule?.(v);
    if (wrong !== undefined) problems.push({ path: key, message: wrong });
    return wrong === undefined ? v : undefined;
  };
  const required = (key: (typeof REQUIRED_META)[number], rule?: (v: string) => string | undefined): string => {
    if (raw[key] === undefined) problems.push({ path: key, message: "required" });
    return text(key, rule) ?? "";
  };
  const nonEmpty = (v: string) => (v.length > 0 ? undefined : "must not be empty");
  const oneOf = (set: ReadonlySet<string>) => (v: string) => (set.has(v) ? undefined : `expected one of ${[...set].join(", ")}`);

  const meta: BuildMeta = {
    REPO_URL: required("REPO_URL", nonEmpty),
    COMMIT: required("COMMIT", (v) => (COMMIT_ID.test(v) ? undefined : "must be a hex commit id")),
    BRANCH: required("BRANCH"),
    FLAVOR: required("FLAVOR", nonEmpty),
  };
  for (const key of ["REPO", "PR", "TAG", "CACHES"] as const) {
    const v = text(key);
    if (v !== undefined) meta[key] = v;
  }
  const event = text("EVENT", oneOf(META_EVENTS));
  if (event !== undefined) meta.EVENT = event as NonNullable<BuildMeta["EVENT"]>;
  for (const key of ["TRUSTED", "PRIVATE"] as const) {
    const v = text(key, oneOf(BOOLS));
    if (v !== undefined) meta[key] = v as "true" | "false";
  }
  return problems.length ? { ok: false, problems } : { ok: true, value: meta };
}

/** Checks a dispatch payload (parsed JSON); `secrets` defaults to none. */
export function checkDispatchPayload(raw: unknown): Checked<DispatchPayload> {
  if (!isPlainObject(raw)) return { ok: false, problems: [{ path: "", message: "expected an object" }] };
  const problems: ContractProblem[] = [];
  const secrets: Record<string, string> = {};
  if (raw.secrets !== undefined) {
    if (!isPlainObject(raw.secrets)) problems.push({ path: "secrets", message: "expected an object" });
    else {
      for (const [k, v] of Object.entries(raw.secrets)) {
        // Never a key of the result: it would set the object's prototype.
        if (k === "__proto__") continue;
        if (typeof v === "string") secrets[k] = v;
        else problems.push({ path: `secrets.${k}`, message: "expected a string" });
      }
    }
  }
  const deployKey = raw.deploy_key;
  if (deployKey !== undefined && typeof deployKey !== "string") problems.push({ path: "deploy_key", message: "expected a string" });
  const inject = raw.inject;
  if (inject !== undefined && typeof inject !== "string") problems.push({ path: "inject", message: "expected a string" });
  if (problems.length) return { ok: false, problems };
  return {
    ok: true,
    value: {
      secrets,
      ...(typeof deployKey === "string" ? { deploy_key: deployKey } : {}),
      ...(typeof inject === "string" && inject !== "" ? { inject } : {}),
    },
  };
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (typeof v !== "object" || v === null || Array.isArray(v)) return false;
  const proto = Object.getPrototypeOf(v) as unknown;
  return proto === Object.prototype || proto === null;
}

/** `name=path,name=path` from a repository's `caches`, the form of the `CACHES` meta key. */
export function formatCaches(caches: Record<string, string>): string {
  return Object.entries(caches)
    .map(([name, path]) => `${name}=${path}`)
    .join(",");
}

/** Parses the `CACHES` meta key back into a map; entries without a name before `=` are ignored. */
export function parseCaches(value: string | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const part of (value ?? "").split(",")) {
    const eq = part.indexOf("=");
    if (eq <= 0) continue;
    out[part.slice(0, eq).trim()] = part.slice(eq + 1).trim();
  }
  return out;
}

// Nomad's form, `<parent>/dispatch-<unix seconds>-<8 hex>`, with the optional id_prefix_template part before the time.
const DISPATCH_ID = /^(.+)\/dispatch-(?:[^/]+-)?\d+-[0-9a-f]{8}$/;
const SUFFIX = /^[0-9a-f]{8}$/;

/** A build ID in Nomad's form, for builds petrel starts itself; `suffix` is 8 random hex digits. */
export function dispatchId(builder: string, suffix: string, now: number = Date.now()): string {
  if (!SUFFIX.test(suffix)) throw new Error(`dispatch ID suffix ${JSON.stringify(suffix)}: expected 8 hex digits`);
  return `${builder}/dispatch-${Math.floor(now / 1000)}-${suffix}`;
}

/** The parent job of a dispatched job ID (`builder/dispatch-1700000000-1a2b3c4d` → `builder`), if it is one. */
export function parentOfBuildId(id: string): string | undefined {
  return DISPATCH_ID.exec(id)?.[1];
}

/** True when `id` is a dispatched child of one of `builders`; nothing else is ever served. */
export function isBuildOf(id: string, builders: ReadonlySet<string>): boolean {
  const parent = parentOfBuildId(id);
  return parent !== undefined && builders.has(parent);
}
