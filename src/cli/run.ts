import { homedir } from "node:os";
import { isAbsolute, join, relative } from "node:path";
import { dispatchId } from "../contract/dispatch.js";
import { type ExecutorPlan, executeBuild } from "../executor/build.js";
import { colourVars, readRuntimeSettings } from "../executor/env.js";
import { ExecutorError } from "../executor/errors.js";
import { randomSuffix } from "../executor/fsutil.js";
import { git } from "../executor/git.js";
import { cacheLayout, redactUrl, repoNameFromUrl, repoSlug } from "../executor/layout.js";
import { type Parsed, parseCommandArgs, UsageError } from "./args.js";

const USAGE = `usage: petrel run [--flavor F] [--debug]

Builds the current git working tree with the same executor as the builder job: the tree is the read-only lower
layer of an overlay, so the build never changes your files. --debug opens a shell in the build directory, with
the build's environment, when the build fails. See docs/executor.md.
`;

type Env = Record<string, string | undefined>;

/** `petrel run [--flavor F] [--debug]`: builds the working tree locally; resolves to the process exit code. */
export async function runLocalCommand(argv: readonly string[], env: Env): Promise<number> {
  const options = { flavor: { type: "string", short: "f" }, debug: { type: "boolean" } } as const;
  let parsed: Parsed<typeof options> | undefined;
  try {
    parsed = parseCommandArgs(argv, options, USAGE, process, {
      positionals: false,
    });
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`petrel run: ${err.message}\n`);
    return err.exit;
  }
  if (parsed === undefined) return 0;
  const { values } = parsed;
  const controller = new AbortController();
  const stop = () => controller.abort();
  // Ctrl-C reaches the build (same process group) and, in --debug, the shell; petrel waits for them to finish.
  const ignore = () => undefined;
  process.on("SIGTERM", stop);
  process.on("SIGHUP", stop);
  process.on("SIGINT", ignore);
  try {
    const plan = await planFromWorkingTree(process.cwd(), env, values.flavor ?? "default", values.debug ?? false);
    return await executeBuild(plan, { stderr: process.stderr }, controller.signal);
  } catch (err) {
    const e = err instanceof ExecutorError ? err : new ExecutorError("internal", (err as Error).message, { cause: err });
    process.stderr.write(`==> error: ${e.message}\n`);
    return e.exitCode;
  } finally {
    process.off("SIGTERM", stop);
    process.off("SIGHUP", stop);
    process.off("SIGINT", ignore);
  }
}

/** The build `petrel run` describes: the git toplevel of `cwd` as the lower layer, mounted over itself. */
export async function planFromWorkingTree(cwd: string, env: Env, flavor: string, debug: boolean): Promise<ExecutorPlan> {
  const top = await git(["rev-parse", "--show-toplevel"], { cwd });
  if (top.code !== 0) throw new ExecutorError("bad_environment", `not inside a git working tree: ${cwd}`);
  const dir = top.stdout.trim();
  const head = await git(["rev-parse", "-q", "--verify", "HEAD"], { cwd: dir });
  const commit = head.code === 0 ? head.stdout.trim() : "0".repeat(40);
  const branch = await git(["symbolic-ref", "-q", "--short", "HEAD"], { cwd: dir });
  const origin = await git(["config", "--get", "remote.origin.url"], { cwd: dir });
  const url = origin.code === 0 && origin.stdout.trim() ? origin.stdout.trim() : `file://${dir}`;
  const runtime = readRuntimeSettings(env);
  // A linked worktree (or a submodule) keeps its git directory outside the tree: the overlay does not cover it.
  const gitDirs = await git(["rev-parse", "--path-format=absolute", "--git-dir", "--git-common-dir"], { cwd: dir });
  const outside = [...new Set(gitDirs.stdout.split("\n").filter(Boolean))].filter((p) => {
    const rel = relative(dir, p);
    return rel.startsWith("..") || isAbsolute(rel);
  });
  const cacheRoot = env.PETREL_CACHE_DIR || join(env.XDG_CACHE_HOME || join(env.HOME || homedir(), ".cache"), "petrel");
  const id = dispatchId("run", randomSuffix());
  return {
    id,
    layout: cacheLayout(cacheRoot),
    label: `${repoNameFromUrl(url)}@${commit.slice(0, 7)}`,
    repoSlug: repoSlug(url),
    source: { kind: "worktree", dir },
    baseEnv: env,
    vars: {
      COMMIT: commit,
      BRANCH: branch.code === 0 ? branch.stdout.trim() : "",
      REPO_URL: redactUrl(url),
      FLAVOR: flavor,
      CI: "true",
      PETREL_BUILD_ID: id,
      ...colourVars(env),
    },
    trusted: false,
    secrets: {},
    caches: {},
    home: env.HOME || homedir(),
    buildDir: dir,
    buildDirIsLower: true,
    hideCacheRoot: false,
    readOnly: outside,
    isolation: runtime.isolation,
    // The developer's own tree and code: where nothing can be mounted, a copy keeps their files unchanged.
    copyFallback: true,
    debug,
    newSession: false,
    killGraceMs: runtime.killGraceMs,
  };
}
