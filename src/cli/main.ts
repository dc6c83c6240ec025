import { parseArgs } from "node:util";

const USAGE = `usage: petrel <command> [options]

commands:
  serve                      run the petrel service (webhooks, builds, logs)
  executor                   run one build from the Nomad task environment
  run [--flavor F] [--debug] build the current working tree locally with the same executor
  builds | logs | cancel | dispatch | repo | builder | replay
                             operator commands (see README)

environment: see README "Configuration"`;

type Command = (argv: string[], env: NodeJS.ProcessEnv) => Promise<number>;

// Each command is imported on demand so `petrel executor` starts without loading the HTTP service.
const COMMANDS: Record<string, () => Promise<Command>> = {
  serve: async () => {
    const { serveCommand } = await import("../main.js");
    return (_argv, env) => serveCommand(env);
  },
  executor: async () => (await import("./executor.js")).runExecutorCommand,
  run: async () => (await import("./run.js")).runLocalCommand,
};

/** Runs the CLI and returns its exit code. */
export async function main(argv: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const { positionals } = parseArgs({ args: argv.slice(0, 1), allowPositionals: true, strict: false });
  const name = positionals[0];
  if (name === undefined || name === "help" || name === "--help" || name === "-h") {
    process.stdout.write(`${USAGE}\n`);
    return name === undefined ? 64 : 0;
  }
  const load = COMMANDS[name];
  if (load === undefined) {
    process.stderr.write(`petrel: unknown command ${JSON.stringify(name)}\n\n${USAGE}\n`);
    return 64;
  }
  const command = await load();
  return command(argv.slice(1), env);
}

main(process.argv.slice(2), process.env).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`petrel: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  },
);
