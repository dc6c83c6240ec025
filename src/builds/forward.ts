import type { GiteaClient, StatusReport, StatusReporter } from "../gitea/client.js";
import type { CommitState } from "../gitea/schema.js";
import type { Logger } from "../log.js";

/**
 * How far along a status is for one build: dispatched (0), waiting for a client (1), running (2), final (3).
 * Read back from what the forge shows, so it only uses the state and the wording petrel writes.
 */
export function statusRank(state: string, description: string | null | undefined): number {
  if (state !== "pending") return 3;
  const text = description ?? "";
  if (text.startsWith("running")) return 2;
  if (text.startsWith("waiting")) return 1;
  return 0;
}

/** The build a status links to (`<PETREL_URL>/builds/<id>`), or undefined for a status petrel did not write. */
export function buildOfTargetUrl(targetUrl: string | null | undefined): string | undefined {
  const m = /\/builds\/([^/?#]+)$/.exec(targetUrl ?? "");
  if (m === null) return undefined;
  try {
    return decodeURIComponent(m[1] as string);
  } catch {
    return undefined;
  }
}

/** Seconds of the dispatch time in a build ID (`builder/dispatch-1700000000-1a2b3c4d`), so builds can be ordered. */
function dispatchedAt(id: string): number {
  const m = /\/dispatch-(?:[a-z0-9]+-)*?(\d{9,})-[0-9a-f]+$/.exec(id);
  return m === null ? 0 : Number(m[1]);
}

interface Known {
  build: string | undefined;
  rank: number;
}

export interface ForwardStatuses {
  /** Queues the status if it moves the commit's status for its context forward; never throws. */
  report(report: StatusReport & { build: string }, signal?: AbortSignal): void;
  /** Forgets what the forge showed (a new term: another leader may have posted since). */
  reset(): void;
  /** Resolves when the reads and checks queued so far are done (the posts are the reporter's). */
  settled(): Promise<void>;
}

const REMEMBERED = 4096;

/**
 * Commit statuses that never go backwards, whichever replica posts: the first time a commit is touched, its
 * current statuses are read from the forge (one request per commit, then cached and kept up to date with what
 * this process posts), and a status is posted only if it is newer than what the forge shows for its context:
 * a later state of the same build, or any state of a build dispatched no earlier than the one shown.
 */
export function createForwardStatuses(options: { client: GiteaClient; reporter: StatusReporter; log: Logger }): ForwardStatuses {
  const { client, reporter, log } = options;
  // Per commit: the read of the forge (shared by every report for it) and then what each context shows.
  let commits = new Map<string, Promise<Map<string, Known> | undefined>>();
  const chains = new Map<string, Promise<void>>();

  function read(report: StatusReport, key: string): Promise<Map<string, Known> | undefined> {
    let known = commits.get(key);
    if (known === undefined) {
      const slash = report.fullName.indexOf("/");
      known = client
        .combinedStatus({
          baseUrl: report.baseUrl,
          token: report.token,
          owner: report.fullName.slice(0, slash),
          repo: report.fullName.slice(slash + 1),
          ref: report.sha,
        })
        .then(
          (combined) =>
            new Map(
              combined.statuses.map((s) => [
                s.context,
                { build: buildOfTargetUrl(s.target_url), rank: statusRank(s.status, s.description) },
              ]),
            ),
          (err: unknown) => {
            // Not knowing is no reason to lose a status: post it, as before there was a check.
            log.warn(
              { repo: report.fullName, sha: report.sha, err: (err as Error).message },
              "could not read the commit's statuses; posting unchecked",
            );
            commits.delete(key);
            return undefined;
          },
        );
      commits.set(key, known);
      if (commits.size > REMEMBERED) commits.delete(commits.keys().next().value as string);
    }
    return known;
  }

  function forward(shown: Known | undefined, build: string, rank: number): boolean {
    if (shown === undefined || shown.build === undefined) return true;
    if (shown.build === build) return rank > shown.rank;
    return dispatchedAt(build) >= dispatchedAt(shown.build);
  }

  return {
    report(report, signal) {
      const key = JSON.stringify([report.baseUrl.replace(/\/+$/, ""), report.fullName.toLowerCase(), report.sha.toLowerCase()]);
      const rank = statusRank(report.state as CommitState, report.description);
      const generation = commits;
      const run = (chains.get(key) ?? Promise.resolve()).then(async () => {
        const known = await read(report, key);
        if (signal?.aborted || generation !== commits) return;
        const { build, ...status } = report;
        if (known !== undefined) {
          if (!forward(known.get(report.context), build, rank)) {
            log.debug(
              { build, state: report.state, context: report.context },
              "the forge already shows this status or a later one; not posted",
            );
            return;
          }
          known.set(report.context, { build, rank });
        }
        reporter.report(status);
      });
      chains.set(key, run);
      void run.finally(() => {
        if (chains.get(key) === run) chains.delete(key);
      });
    },

    reset() {
      commits = new Map();
    },

    async settled() {
      while (chains.size > 0) await Promise.allSettled([...chains.values()]);
    },
  };
}
