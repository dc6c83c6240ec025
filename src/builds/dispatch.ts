import { z } from "zod";

/** Meta keys every builder declares as required (Albatros-compatible). */
export const REQUIRED_META = ["REPO_URL", "COMMIT", "BRANCH", "FLAVOR"] as const;
/** Meta keys petrel sends when the builder's `meta_optional` declares them. */
export const OPTIONAL_META = ["REPO", "EVENT", "PR", "TAG", "TRUSTED", "PRIVATE", "CACHES"] as const;

export type BuildEvent = "push" | "tag" | "pull_request";

/** The dispatch meta of one build, as the dispatcher sends it and the executor reads it back. */
export const BuildMeta = z.object({
  REPO_URL: z.string().min(1),
  COMMIT: z.string().regex(/^[0-9a-f]{7,64}$/, "must be a hex commit id"),
  BRANCH: z.string(),
  FLAVOR: z.string().min(1),
  REPO: z.string().optional(),
  EVENT: z.enum(["push", "tag", "pull_request", "manual"]).optional(),
  PR: z.string().optional(),
  TAG: z.string().optional(),
  TRUSTED: z.enum(["true", "false"]).optional(),
  PRIVATE: z.enum(["true", "false"]).optional(),
  CACHES: z.string().optional(),
});
export type BuildMeta = z.infer<typeof BuildMeta>;

/** The dispatch payload: present only for trusted builds. */
export const DispatchPayload = z.object({
  secrets: z.record(z.string(), z.string()).default({}),
  deploy_key: z.string().optional(),
});
export type DispatchPayload = z.infer<typeof DispatchPayload>;

/** `name=path,name=path` from a repository's `caches`, the form of the `CACHES` meta key. */
export function formatCaches(caches: Record<string, string>): string {
  return Object.entries(caches)
    .map(([name, path]) => `${name}=${path}`)
    .join(",");
}

/** Parses the `CACHES` meta key back into a map; entries without `=` are ignored. */
export function parseCaches(value: string | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const part of (value ?? "").split(",")) {
    const eq = part.indexOf("=");
    if (eq <= 0) continue;
    out[part.slice(0, eq).trim()] = part.slice(eq + 1).trim();
  }
  return out;
}

const DISPATCH_ID = /^(.+)\/dispatch-(?:[^/]+-)?\d+-[0-9a-f]{8}$/;

/** The parent job of a dispatched job ID (`builder/dispatch-1700000000-1a2b3c4d` → `builder`), if it is one. */
export function parentOfBuildId(id: string): string | undefined {
  return DISPATCH_ID.exec(id)?.[1];
}

/** True when `id` is a dispatched child of one of `builders`; nothing else is ever served. */
export function isBuildOf(id: string, builders: ReadonlySet<string>): boolean {
  const parent = parentOfBuildId(id);
  return parent !== undefined && builders.has(parent);
}
