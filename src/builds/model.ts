import type { Build, BuildState, BuildSummary } from "./backend.js";

/** The fields of a build that come from its dispatch meta, the same in both modes. */
export function buildFromMeta(id: string, builder: string, meta: Readonly<Record<string, string | undefined>>): BuildSummary {
  const repoUrl = meta.REPO_URL ?? "";
  const out = {
    id,
    builder,
    repo: meta.REPO || repoFromUrl(repoUrl),
    repoUrl,
    commit: meta.COMMIT ?? "",
    ref: meta.BRANCH ?? "",
    flavor: meta.FLAVOR || "default",
    event: meta.EVENT || (meta.TAG ? "tag" : meta.PR ? "pull_request" : "push"),
    trusted: meta.TRUSTED === "true",
  };
  const privacy = meta.PRIVATE === "true" ? { private: true } : meta.PRIVATE === "false" ? { private: false } : {};
  return { ...out, ...privacy, ...(meta.PR ? { pr: meta.PR } : {}), ...(meta.TAG ? { tag: meta.TAG } : {}) };
}

/** `owner/name` from a clone URL (https, ssh or file). */
export function repoFromUrl(url: string): string {
  const parts = url
    .replace(/\.git$/, "")
    .split(/[/:]/)
    .filter(Boolean);
  return parts.slice(-2).join("/");
}

/** True when `build` passes a `GET /builds` filter. */
export function matchesFilter(build: Build, filter: { repo?: string; ref?: string; state?: BuildState }): boolean {
  if (filter.repo !== undefined && build.repo.toLowerCase() !== filter.repo.toLowerCase()) return false;
  if (filter.ref !== undefined && build.ref !== filter.ref && `refs/heads/${build.ref}` !== filter.ref) return false;
  if (filter.state !== undefined && build.state !== filter.state) return false;
  return true;
}
