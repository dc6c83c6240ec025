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
  /** The ref is not there (or the URL is none): the caller's input is wrong. */
  | { kind: "unfetchable"; message: string }
  /** The repository could not be reached, or not in time: the forge's outage, worth trying again. */
  | { kind: "unreachable"; message: string };

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
      const why = firstLine(fetched.stderr.replaceAll(input.url, shown));
      // git fetch exits 128 for a missing ref and for an unreachable host alike; `ls-remote --exit-code`
      // tells them apart by its status: 2 when the repository answered without the ref.
      const probe = await withSshEnv(input.deployKey, join(dir, "known_hosts"), (env) =>
        run(["ls-remote", "--exit-code", "--", input.url, input.ref], env),
      );
      if (probe.code === 2) return { kind: "unfetchable", message: `cannot fetch ${input.ref} from ${shown}: ${why}` };
      return { kind: "unreachable", message: `cannot reach ${shown} to fetch ${input.ref}: ${why}` };
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
      return { kind: "unreachable", message: `checking ${input.ref} at ${shown} took longer than ${input.timeoutMs / 1000} s` };
    throw err;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

function firstLine(text: string): string {
  return text.trim().split("\n")[0]?.slice(0, 300) ?? "";
}

/** What a ref points at in the repository at `url`, asked with `git ls-remote` (the deploy key when given). */
export type RefHead =
  | { kind: "head"; commit: string }
  /** The repository answered without the ref (or the URL is none): the caller's input is wrong. */
  | { kind: "missing"; message: string }
  /** The repository could not be reached, or not in time. */
  | { kind: "unreachable"; message: string };

export async function resolveRefHead(input: Omit<CommitCheckInput, "commit">): Promise<RefHead> {
  const shown = redactUrl(input.url);
  if (!isCloneUrl(input.url)) return { kind: "missing", message: `${JSON.stringify(shown.slice(0, 200))} is not a clone URL` };
  const timeout = AbortSignal.timeout(input.timeoutMs);
  const signal = input.signal === undefined ? timeout : AbortSignal.any([timeout, input.signal]);
  const dir = await mkdtemp(join(tmpdir(), "petrel-ls-remote-"));
  try {
    // `--exit-code`: 2 when the repository answered without the ref; anything else is the forge not answering.
    const listed = await withSshEnv(input.deployKey, join(dir, "known_hosts"), (env) =>
      git(["ls-remote", "--exit-code", "--", input.url, input.ref], { env, signal }),
    );
    const sha = listed.stdout.split(/\s+/)[0] ?? "";
    if (listed.code === 0 && /^[0-9a-f]{40,64}$/.test(sha)) return { kind: "head", commit: sha };
    if (listed.code === 2) return { kind: "missing", message: `${input.ref} does not exist at ${shown}` };
    return {
      kind: "unreachable",
      message: `cannot reach ${shown} to resolve ${input.ref}: ${firstLine(listed.stderr.replaceAll(input.url, shown))}`,
    };
  } catch (err) {
    if (timeout.aborted)
      return { kind: "unreachable", message: `resolving ${input.ref} at ${shown} took longer than ${input.timeoutMs / 1000} s` };
    throw err;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
