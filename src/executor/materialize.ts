import { mkdir, rename } from "node:fs/promises";
import { join } from "node:path";
import { diskFull, ExecutorError } from "./errors.js";
import { exists, randomSuffix, removeTree, signalOf, touch } from "./fsutil.js";
import { git, withSshEnv } from "./git.js";
import { type CacheLayout, redactUrl } from "./layout.js";
import { lockFile } from "./lock.js";
import { lastLine, type ProcessResult } from "./proc.js";

/** One commit of one repository to make available as a base worktree. */
export interface CheckoutRequest {
  layout: CacheLayout;
  url: string;
  commit: string;
  /** `owner/name@short`, for messages. */
  label: string;
  /** Refs that should contain the commit, fetched in this order (`refs/heads/main`, `refs/pull/7/head`). */
  refs: readonly string[];
  deployKey?: string;
  signal?: AbortSignal;
}

/** Fetches the commit into the repository's bare mirror if needed and checks it out into `final`, atomically. */
export async function createWorktree(req: CheckoutRequest, slug: string, dir: string, final: string): Promise<string> {
  const { layout } = req;
  await mkdir(layout.mirrors, { recursive: true });
  const mirror = join(layout.mirrors, `${slug}.git`);
  const mirrorLock = await lockFile(`${mirror}.lock`, signalOf(req));
  if (!mirrorLock) throw new ExecutorError("internal", `cannot lock ${mirror}.lock`);
  const tmp = join(dir, `.tmp-${req.commit}-${randomSuffix()}`);
  try {
    await touch(`${mirror}.lock`);
    await ensureMirror(req, mirror);
    const detail = (await hasCommit(mirror, req.commit, req.signal)) ? "from mirror" : await fetchCommit(req, mirror);
    const revParse = ["--git-dir", mirror, "rev-parse", "--verify", "--end-of-options", `${req.commit}^{commit}`];
    const full = await run(req, revParse, "rev-parse");
    const sha = full.stdout.trim();
    await mkdir(tmp);
    await run(req, ["init", "--quiet", "--template=", tmp], "init");
    await run(req, ["-C", tmp, "fetch", "--quiet", "--no-tags", "--depth=1", "--", mirror, sha], "fetch from mirror");
    // Writing thousands of small files is latency-bound: parallel checkout (git 2.32+) is several times faster
    // even on two cores.
    const config = ["-c", "advice.detachedHead=false", "-c", "checkout.workers=8"];
    await run(req, ["-C", tmp, ...config, "checkout", "--quiet", "--detach", sha], "checkout");
    await run(req, ["-C", tmp, "remote", "add", "origin", redactUrl(req.url)], "remote add");
    await rename(tmp, final);
    return detail;
  } catch (err) {
    await removeTree(tmp).catch(() => undefined);
    if (isDiskFullError(err)) throw await diskFull(layout.root, err);
    throw err;
  } finally {
    mirrorLock.release();
  }
}

async function ensureMirror(req: CheckoutRequest, mirror: string): Promise<void> {
  if (await exists(mirror)) return;
  const tmp = `${mirror}.tmp-${randomSuffix()}`;
  try {
    await run(req, ["init", "--quiet", "--bare", "--template=", tmp], "init mirror");
    // Lets the per-commit worktrees fetch exactly one commit by its id from the mirror.
    await run(req, ["--git-dir", tmp, "config", "uploadpack.allowAnySHA1InWant", "true"], "config");
    // Automatic gc runs inside the fetch, under the mirror's lock, not as a detached process the task outlives.
    await run(req, ["--git-dir", tmp, "config", "gc.autoDetach", "false"], "config");
    await rename(tmp, mirror);
  } catch (err) {
    await removeTree(tmp).catch(() => undefined);
    throw err;
  }
}

async function hasCommit(mirror: string, commit: string, signal: AbortSignal | undefined): Promise<boolean> {
  const r = await git(["--git-dir", mirror, "cat-file", "-e", `${commit}^{commit}`], signal ? { signal } : {});
  return r.code === 0;
}

async function fetchCommit(req: CheckoutRequest, mirror: string): Promise<string> {
  return withSshEnv(req.deployKey, req.layout.knownHosts, async (env) => {
    const opts = { env, ...signalOf(req) };
    let lastError = "";
    const attempts = req.refs.map((ref) => ({ what: ref, spec: `+${ref}:${ref}` }));
    if (/^([0-9a-f]{40}|[0-9a-f]{64})$/.test(req.commit)) {
      // Servers that allow it (uploadpack.allowReachableSHA1InWant, protocol v2) serve a commit no listed ref names.
      attempts.push({ what: "commit", spec: `${req.commit}:refs/petrel/commits/${req.commit}` });
    }
    for (const a of attempts) {
      const fetch = ["--git-dir", mirror, "fetch", "--quiet", "--no-tags", "--no-write-fetch-head"];
      const r = await git([...fetch, "--", req.url, a.spec], opts);
      if (r.code !== 0) {
        if (isDiskFullText(r.stderr)) throw await diskFull(req.layout.root, new Error(lastLine(r.stderr)));
        lastError = lastLine(r.stderr);
        continue;
      }
      if (await hasCommit(mirror, req.commit, req.signal)) return `fetched ${a.what}`;
    }
    const probe = await git(["ls-remote", "--quiet", "--", req.url, "HEAD"], opts);
    if (probe.code !== 0) {
      const why = lastLine(probe.stderr) || lastError;
      throw new ExecutorError("unreachable", `repository unreachable: ${redactUrl(req.url)}: ${why}`);
    }
    const tried = req.refs.length ? ` (looked in ${req.refs.join(", ")})` : "";
    throw new ExecutorError("missing_commit", `commit ${req.commit} not found in ${redactUrl(req.url)}${tried}`);
  });
}

async function run(req: CheckoutRequest, args: string[], what: string): Promise<ProcessResult> {
  const r = await git(args, signalOf(req));
  if (r.code === 0) return r;
  if (isDiskFullText(r.stderr)) throw await diskFull(req.layout.root, new Error(lastLine(r.stderr)));
  throw new ExecutorError("internal", `git ${what} failed for ${req.label}: ${lastLine(r.stderr) || `exit ${r.code}`}`);
}

// strerror(ENOSPC): git reports write failures with the C library's text, there is no code to key on.
function isDiskFullText(stderr: string): boolean {
  return stderr.includes("No space left on device");
}

function isDiskFullError(err: unknown): boolean {
  return (err as NodeJS.ErrnoException | undefined)?.code === "ENOSPC";
}
