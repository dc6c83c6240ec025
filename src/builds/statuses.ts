import type { StatusReport, StatusReporter } from "../gitea/client.js";
import type { CommitState } from "../gitea/schema.js";
import type { Logger } from "../log.js";
import type { Registry, RepoEntry } from "../registry/schema.js";
import { repoKeyFromUrl } from "../registry/schema.js";
import type { Build } from "./backend.js";

/**
 * The commit status a build state stands for; undefined for `queued` (the webhook already said pending) unless
 * Nomad says why it waits (a blocked evaluation).
 */
export function commitStatusOf(build: Build): { state: Exclude<CommitState, "warning">; description: string } | undefined {
  switch (build.state) {
    case "queued":
      return build.reason?.startsWith("waiting") ? { state: "pending", description: build.reason } : undefined;
    case "running":
      return { state: "pending", description: build.node ? `running on ${build.node}` : "running" };
    case "success":
      return { state: "success", description: "build succeeded" };
    case "failure":
      return { state: "failure", description: `build failed with exit code ${build.exitCode ?? "unknown"}` };
    case "cancelled":
      // A policy's reason ("superseded by <id>") tells the forge's reader why; a plain cancel says just that.
      return { state: "error", description: build.reason?.startsWith("superseded") ? build.reason : "build cancelled" };
    case "error":
      return { state: "error", description: build.reason ?? "build could not run" };
  }
}

/** The registry entry a build belongs to: by its clone URL (the entry's `clone_url` or its key), else by a unique `owner/name` match. */
export async function entryOfBuild(registry: Registry, build: Pick<Build, "repo" | "repoUrl">): Promise<RepoEntry | undefined> {
  const key = repoKeyFromUrl(build.repoUrl);
  const direct = key === undefined ? undefined : await registry.get(key);
  if (direct !== undefined) return direct;
  const all = await registry.list();
  const suffix = `/${build.repo.toLowerCase()}`;
  const configured = all.filter((e) => e.config.clone_url === build.repoUrl && e.key.endsWith(suffix));
  if (configured.length === 1) return configured[0];
  const matches = all.filter((e) => e.key.endsWith(suffix));
  return matches.length === 1 ? matches[0] : undefined;
}

const REMEMBERED = 4096;

/**
 * Turns build transitions into commit statuses. Each (build, state) is reported once per process, so a
 * replayed event or a reconciliation pass does not post the same status again.
 */
export function createStatusNotifier(options: {
  registry: Registry;
  reporter: StatusReporter;
  publicUrl: string;
  log: Logger;
  /** Where statuses go instead of straight to the reporter (cluster mode: only forward moves, only while leading). */
  post?: (report: StatusReport, build: Build) => void;
}): (build: Build) => void {
  const sent = new Set<string>();
  const post = options.post ?? ((report: StatusReport) => options.reporter.report(report));
  return (build) => {
    const status = commitStatusOf(build);
    if (status === undefined) return;
    const once = `${build.id}\0${build.state}\0${status.description}`;
    if (sent.has(once)) return;
    sent.add(once);
    if (sent.size > REMEMBERED) sent.delete(sent.values().next().value as string);
    void entryOfBuild(options.registry, build).then(
      (entry) => {
        const gitea = entry?.config.gitea;
        if (gitea === undefined) return;
        post(
          {
            baseUrl: gitea.url,
            token: gitea.token,
            fullName: build.repo,
            sha: build.commit,
            state: status.state,
            context: `petrel/${build.flavor}`,
            description: status.description,
            targetUrl: `${options.publicUrl}/builds/${encodeURIComponent(build.id)}`,
          },
          build,
        );
      },
      (err: unknown) => options.log.warn({ build: build.id, err: (err as Error).message }, "no registry entry for a build's status"),
    );
  };
}
