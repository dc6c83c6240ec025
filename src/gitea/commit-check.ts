import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { git, withSshEnv } from "../executor/git.js";
import { redactUrl } from "../executor/layout.js";
import { isCloneUrl } from "../registry/schema.js";

export interface CommitCheckInput {
  /** The clone URL builds of the repository use. */
  url: string;
  /** A full ref: `refs/heads/x`, `refs/tags/t`, `refs/pull/<n>/head`. */
  ref: string;
  /** A full or abbreviated commit id. */
  commit: string;
  /** SSH key for private repositories cloned over SSH; written to a 0600 file only while git runs. */
  deployKey?: string;
  timeoutMs: number;
  signal?: AbortSignal;
}

export type CommitCheck =
  /** `commit` is the full id of the commit, which the ref reaches. */
  | { kind: "on_ref"; commit: string }
  | { kind: "not_on_ref"; message: string }
  /** The ref could not be fetched: missing, unreachable repository, or out of time. */
  | { kind: "unfetchable"; message: string };

/**
 * Whether `commit` is reachable from `ref` in the repository at `url`, asked of git itself: the ref is fetched
 * into a throw-away bare repository and `git merge-base --is-ancestor` decides. A commit that exists only on
 * another ref (a fork's pull request, say) is not fetched with this ref, so it is never found.
 */
export async function checkCommitOnRef(input: CommitCheckInput): Promise<CommitCheck> {
  const shown = redactUrl(input.url);
  if (!isCloneUrl(input.url)) return { kind: "unfetchable", message: `${JSON.stringify(shown.slice(0, 200))} is not a clone URL` };
  const timeout = AbortSignal.timeout(input.timeoutMs);
  const signal = input.signal === undefined ? timeout : AbortSignal.any([timeout, input.signal]);
  const dir = await mkdtemp(join(tmpdir(), "petrel-commit-check-"));
  try {
    const run = (args: string[], env: Record<string, string> = {}) => git(["-C", dir, ...args], { env, signal });
    const init = await run(["init", "-q", "--bare"]);
    if (init.code !== 0) throw new Error(`git init failed: ${firstLine(init.stderr)}`);
    const fetched = await withSshEnv(input.deployKey, join(dir, "known_hosts"), (env) =>
      run(["fetch", "-q", "--no-tags", "--end-of-options", input.url, `+${input.ref}:refs/petrel/check`], env),
    );
    if (fetched.code !== 0) {
      return {
        kind: "unfetchable",
        message: `cannot fetch ${input.ref} from ${shown}: ${firstLine(fetched.stderr.replaceAll(input.url, shown))}`,
      };
    }
    if (!/^[0-9a-fA-F]{4,64}$/.test(input.commit))
      return { kind: "not_on_ref", message: `${JSON.stringify(input.commit)} is not a commit id` };
    const resolved = await run(["rev-parse", "--verify", "--quiet", `${input.commit.toLowerCase()}^{commit}`]);
    const full = resolved.stdout.trim();
    const notOnRef: CommitCheck = { kind: "not_on_ref", message: `commit ${input.commit} is not reachable from ${input.ref} at ${shown}` };
    if (resolved.code !== 0 || !/^[0-9a-f]{40,64}$/.test(full)) return notOnRef;
    const ancestor = await run(["merge-base", "--is-ancestor", full, "refs/petrel/check"]);
    if (ancestor.code === 0) return { kind: "on_ref", commit: full };
    if (ancestor.code === 1) return notOnRef;
    throw new Error(`git merge-base failed: ${firstLine(ancestor.stderr)}`);
  } catch (err) {
    if (timeout.aborted)
      return { kind: "unfetchable", message: `checking ${input.ref} at ${shown} took longer than ${input.timeoutMs / 1000} s` };
    throw err;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

function firstLine(text: string): string {
  return text.trim().split("\n")[0]?.slice(0, 300) ?? "";
}
