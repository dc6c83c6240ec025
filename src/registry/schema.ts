import { Cron } from "croner";
import { z } from "zod";
import { isRefName } from "../gitea/ref.js";
import { parseGoDuration } from "../util/go-duration.js";

/** One path segment of a repository key: lower-case, safe as a Consul key on every Consul version. */
export const SEGMENT = /^[a-z0-9._-]+$/;
const FLAVOR = /^[A-Za-z0-9._-]+$/;

/** `<host>/<owner>/<name>`, lower-cased, from a repository's `html_url`. */
export type RepoKey = string;

/** The repository's `html_url` as a registry key, or undefined when it cannot be one. */
export function repoKeyFromUrl(htmlUrl: string): RepoKey | undefined {
  let url: URL;
  try {
    url = new URL(htmlUrl);
  } catch {
    return undefined;
  }
  const host = url.host.toLowerCase();
  const parts = url.pathname
    .replace(/\.git$/, "")
    .split("/")
    .filter(Boolean)
    .map((p) => p.toLowerCase());
  if (parts.length < 2) return undefined;
  // Gitea may live under a sub-path (https://example.test/git/acme/widgets): owner and name are the last two.
  const [owner, name] = parts.slice(-2) as [string, string];
  const hostKey = host.replace(/:/g, "_");
  if (![hostKey, owner, name].every((s) => SEGMENT.test(s) && s !== "." && s !== "..")) return undefined;
  return `${hostKey}/${owner}/${name}`;
}

/** True when `key` has the shape `<host>/<owner>/<name>` with valid segments. */
export function isRepoKey(key: string): key is RepoKey {
  const parts = key.split("/");
  return parts.length === 3 && parts.every((s) => SEGMENT.test(s) && s !== "." && s !== "..");
}

/**
 * A clone URL an operator may set: a URL with a scheme git fetches from (`https`, `http`, `ssh`, `git`, `file`),
 * an scp-like `user@host:path`, or an absolute local path. Never one git could read as an option.
 */
export function isCloneUrl(url: string): boolean {
  if (url.startsWith("-") || /[\x00-\x1f\x7f]/.test(url)) return false;
  if (url.startsWith("/")) return true;
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(url);
  if (scheme !== null)
    return ["https", "http", "ssh", "git", "file"].includes((scheme[1] ?? "").toLowerCase()) && url.length > scheme[0].length;
  // scp-like `user@host:path`; `<transport>::<address>` (ext::, fd::) runs commands and is never a clone URL.
  return /^(?:[A-Za-z0-9._-]+@)?[A-Za-z0-9.-]+:(?!:)\S+$/.test(url);
}

export const HookAuth = z
  .object({
    secret: z.string().min(1, "must not be empty").optional(),
    token: z.string().min(1, "must not be empty").optional(),
  })
  .refine((h) => h.secret !== undefined || h.token !== undefined, {
    message: "needs a secret, a token, or both",
  });
export type HookAuth = z.infer<typeof HookAuth>;

/** The default `timeout` of a build (SPEC §11). */
export const DEFAULT_TIMEOUT = "2h";

/** A Go duration string above zero (`90s`, `45m`, `1h30m`), as Nomad job files write them. */
export const GoDuration = z.string().refine((s) => (parseGoDuration(s) ?? 0) > 0 && s.length <= 64, {
  message: 'must be a Go duration above zero, like "90s", "45m" or "1h30m"',
});

export const Flavor = z.object({ builder: z.string().min(1), timeout: GoDuration.optional() });
export type Flavor = z.infer<typeof Flavor>;

/** Why croner refuses a 5-field (or 6-field, seconds first) pattern; undefined when it takes it. */
export function cronProblem(pattern: string, timezone?: string): string | undefined {
  const fields = pattern.trim().split(/\s+/).length;
  if (fields !== 5 && fields !== 6) return `has ${fields} fields; expected 5 (minute hour day month weekday) or 6 (seconds first)`;
  try {
    new Cron(pattern, { paused: true, mode: "5-or-6-parts", ...(timezone === undefined ? {} : { timezone }) }).nextRun();
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

/** True when `tz` is an IANA time zone this Node knows (`Europe/Berlin`, `UTC`). */
export function isTimeZone(tz: string): boolean {
  try {
    new Intl.DateTimeFormat("en", { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}

/** One scheduled build: `ref` is a branch or tag (`main` means `refs/heads/main`). */
export const CronSchedule = z.strictObject({
  name: z.string().regex(/^[A-Za-z0-9._-]{1,64}$/, "schedule names are 1 to 64 letters, digits, '.', '_' and '-'"),
  schedule: z.string().superRefine((pattern, ctx) => {
    const problem = cronProblem(pattern);
    if (problem !== undefined) ctx.addIssue({ code: "custom", message: `not a cron schedule: ${problem}` });
  }),
  ref: z
    .string()
    .transform((ref) => (ref.startsWith("refs/") ? ref : `refs/heads/${ref}`))
    .refine((ref) => isRefName(ref) && (ref.startsWith("refs/heads/") || ref.startsWith("refs/tags/")), {
      message: "must be a branch (main, refs/heads/main) or a tag (refs/tags/v1)",
    }),
  flavor: z.string().regex(FLAVOR, "flavor names are letters, digits, '.', '_' and '-'").default("default"),
});
export type CronSchedule = z.infer<typeof CronSchedule>;

/** A repository's entry: `<prefix>/repos/<host>/<owner>/<name>` in Consul, `repos.<key>` in the YAML file. */
export const RepoConfig = z
  .object({
    hook: HookAuth,
    gitea: z.object({ url: z.url(), token: z.string().min(1) }).optional(),
    trusted: z.object({ senders: z.array(z.string().min(1)).default([]) }).default({ senders: [] }),
    flavors: z.record(z.string().regex(FLAVOR, "flavor names are letters, digits, '.', '_' and '-'"), Flavor).optional(),
    caches: z
      .record(z.string().regex(/^[A-Za-z0-9._-]+$/, "cache names are letters, digits, '.', '_' and '-'"), z.string().min(1))
      .default({}),
    logs: z.enum(["public", "token"]).optional(),
    /**
     * Whether the repository is private, as the operator states it. Without it (and without `logs`), privacy
     * comes from the PRIVATE meta the forge's payload set at dispatch; when neither tells, reading needs the token.
     */
    private: z.boolean().optional(),
    /** Set by the operator, so it may be a `file://` URL or a local path; every build of the repository clones it. */
    clone_url: z
      .string()
      .refine(isCloneUrl, "must be an https, http, ssh, git or file URL, user@host:path, or an absolute path")
      .optional(),
    /** A new build of a branch or pull request cancels the older ones still queued or running (SPEC §11). */
    supersede: z.boolean().default(true),
    /** How long a build may run before it is stopped; a flavor's own `timeout` wins. */
    timeout: GoDuration.default(DEFAULT_TIMEOUT),
    cron: z.array(CronSchedule).default([]),
    /** The IANA time zone of the `cron` schedules; UTC when absent. */
    tz: z.string().refine(isTimeZone, "must be an IANA time zone such as UTC or Europe/Berlin").optional(),
  })
  .superRefine((config, ctx) => {
    const names = new Set<string>();
    config.cron.forEach((schedule, i) => {
      if (names.has(schedule.name))
        ctx.addIssue({ code: "custom", path: ["cron", i, "name"], message: `duplicate schedule name "${schedule.name}"` });
      names.add(schedule.name);
      const flavors = config.flavors ?? { default: {} };
      if (!Object.hasOwn(flavors, schedule.flavor))
        ctx.addIssue({
          code: "custom",
          path: ["cron", i, "flavor"],
          message: `unknown flavor "${schedule.flavor}"; known: ${Object.keys(flavors).sort().join(", ")}`,
        });
    });
  });
export type RepoConfig = z.infer<typeof RepoConfig>;

/**
 * `<prefix>/secrets/<host>/<owner>/<name>`: build secrets plus an optional clone-only deploy key and an optional
 * `inject` (shell text the build sources after the secrets, kept from an Albatros entry that was not plain exports).
 */
export const RepoSecrets = z.record(z.string().min(1), z.string());
export type RepoSecrets = z.infer<typeof RepoSecrets>;

/** What the rest of petrel works with: config and secrets of one repository, already validated. */
export interface RepoEntry {
  key: RepoKey;
  config: RepoConfig;
  /** Build secrets without the deploy key. */
  secrets: Record<string, string>;
  deployKey?: string;
  /** Shell text given to trusted builds after the secrets (an Albatros entry's `inject`). */
  inject?: string;
  /** The Consul key of the Albatros entry this entry was read from (`albatros/<base64 of the URL>`). */
  albatros?: string;
}

/** Splits a validated secrets object into build secrets, the deploy key and the inject text. */
export function splitSecrets(raw: RepoSecrets): { secrets: Record<string, string>; deployKey?: string; inject?: string } {
  const { deploy_key: deployKey, inject, ...secrets } = raw;
  return {
    secrets,
    ...(deployKey === undefined ? {} : { deployKey }),
    ...(inject === undefined || inject === "" ? {} : { inject }),
  };
}

/**
 * An Albatros entry, `<PETREL_ALBATROS_PREFIX>/<base64 of the repository URL>`, as Albatros wrote it. `logs` and
 * `private` are petrel's own and optional: Albatros served every log to anyone.
 */
export const AlbatrosEntry = z.object({
  hook: z.object({ token: z.string().min(1, "must not be empty") }),
  gitea: z.object({ url: z.url(), token: z.string().min(1) }).optional(),
  trusted: z.object({ senders: z.array(z.string().min(1)).default([]) }).default({ senders: [] }),
  inject: z.string().optional(),
  logs: z.enum(["public", "token"]).optional(),
  private: z.boolean().optional(),
});
export type AlbatrosEntry = z.infer<typeof AlbatrosEntry>;

/** The flavors of a repository, with the documented default when the entry names none. */
export function flavorsOf(config: RepoConfig, defaultBuilder: string): Record<string, Flavor> {
  return config.flavors ?? { default: { builder: defaultBuilder } };
}

/** The timeout of a flavor's builds: the flavor's own, else the entry's, as written and in milliseconds. */
export function timeoutOf(config: RepoConfig, flavor: string): { text: string; ms: number } {
  const own = config.flavors !== undefined && Object.hasOwn(config.flavors, flavor) ? config.flavors[flavor]?.timeout : undefined;
  const text = own ?? config.timeout ?? DEFAULT_TIMEOUT;
  return { text, ms: parseGoDuration(text) ?? 2 * 3600 * 1000 };
}

/** The builder jobs of a set of entries, the default one included. */
export function buildersOf(entries: Iterable<RepoEntry>, defaultBuilder: string): Set<string> {
  const set = new Set([defaultBuilder]);
  for (const entry of entries) for (const flavor of Object.values(flavorsOf(entry.config, defaultBuilder))) set.add(flavor.builder);
  return set;
}

/** Formats a zod error as `field: problem; field: problem`, for messages that name the key and the field. */
export function describeIssues(error: z.ZodError): string {
  return error.issues.map((i) => `${i.path.length ? i.path.join(".") : "(root)"}: ${i.message}`).join("; ");
}

/** Where a registry stands: where it reads from and how old its view is. */
export interface RegistryHealth {
  ok: boolean;
  source: "consul" | "file";
  /** Seconds since the registry last confirmed its view with its source; 0 when current. */
  stalenessSeconds: number;
  repositories: number;
  lastError?: string;
}

/** Repository entries by key. Lookups are served from memory once the registry is warm. */
export interface Registry {
  get(key: RepoKey): Promise<RepoEntry | undefined>;
  list(): Promise<RepoEntry[]>;
  /**
   * The builder jobs of every entry's flavors plus the default one, from memory: whose children are petrel's
   * builds. Synchronous, so checks of foreign IDs never wait on (or go around) a registry still loading.
   */
  builders(): ReadonlySet<string>;
  health(): RegistryHealth;
  close(): Promise<void>;
}
