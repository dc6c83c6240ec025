// A minimal entry for `petrel executor` and `petrel run` that loads nothing else (no server code): the
// executor's start-up time is on every build's critical path. `node dist/executor/entry.js executor|run ...`.
const [command, ...rest] = process.argv.slice(2);
if (command === "executor") {
  const { runExecutorCommand } = await import("../cli/executor.js");
  process.exitCode = await runExecutorCommand(rest, process.env);
} else if (command === "run") {
  const { runLocalCommand } = await import("../cli/run.js");
  process.exitCode = await runLocalCommand(rest, process.env);
} else {
  process.stderr.write("usage: entry.js executor | run [--flavor F] [--debug]\n");
  process.exitCode = 64;
}
