import { executeBuild } from "../executor/build.js";
import { planFromNomadEnv } from "../executor/env.js";
import { ExecutorError } from "../executor/errors.js";
import { type BuildOutput, createBuildOutput, mergedLogPath } from "../executor/output.js";
import { parseCommandArgs, UsageError } from "./args.js";

const USAGE = `usage: petrel executor

Runs one build from the Nomad task environment (NOMAD_META_*, \${NOMAD_TASK_DIR}/payload.json,
NOMAD_SECRETS_DIR, PETREL_CACHE_DIR). Started by the builder job; see docs/executor.md.
`;

/** `petrel executor`: one build from the Nomad task environment; resolves to the process exit code. */
export async function runExecutorCommand(argv: readonly string[], env: Record<string, string | undefined>): Promise<number> {
  try {
    if (parseCommandArgs(argv, {}, USAGE, process, { positionals: false }) === undefined) return 0;
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`petrel executor: ${err.message}\n`);
    return err.exit;
  }
  const controller = new AbortController();
  const stop = () => controller.abort();
  const signals = ["SIGTERM", "SIGINT", "SIGHUP"] as const;
  for (const s of signals) process.on(s, stop);
  let output: BuildOutput | undefined;
  try {
    output = openOutput(env);
    const plan = await planFromNomadEnv(env);
    return await executeBuild(plan, output, controller.signal);
  } catch (err) {
    const e = err instanceof ExecutorError ? err : new ExecutorError("internal", (err as Error).message, { cause: err });
    (output?.stderr ?? process.stderr).write(`==> error: ${e.message}\n`);
    return e.exitCode;
  } finally {
    output?.close();
    for (const s of signals) process.off(s, stop);
  }
}

/** The executor's output with the merged log (`type=all` of petrel's HTTP API); without it when the file cannot be made. */
function openOutput(env: Record<string, string | undefined>): BuildOutput {
  try {
    return createBuildOutput(mergedLogPath(env), process.stdout, process.stderr);
  } catch (err) {
    process.stderr.write(`==> warning: no merged log (${(err as Error).message}); stdout and stderr are kept apart\n`);
    return createBuildOutput(undefined, process.stdout, process.stderr);
  }
}
