import { parseArgs } from "node:util";

const USAGE = `usage: petrel <command> [options]

commands:
  serve                      run the petrel service (webhooks, builds, logs)
  executor                   run one build from the Nomad task environment
  run [--flavor F] [--debug] build the current working tree locally with the same executor
  builds [--repo R] [--ref R] [--state S] [--limit N]
                             list builds, newest first
  logs [-f] [--stderr] <id>  a build's log; with -f follows it and exits with the build's result
  cancel <id>                stop a build (admin token)
  dispatch <repo> <ref>      start a build by hand (admin token); --follow streams its logs
  repo add|show|list|rm      manage repositories in Consul (cluster mode) or PETREL_CONFIG (single machine)
  builder register <file.nomad.hcl>
                             check a builder job and register it with Nomad
  replay <delivery.json>     sign a saved webhook delivery and POST it to petrel

Every command takes --help; operator commands take --json. Exit codes: docs/cli.md.

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
  builds: async () => (await import("./builds.js")).buildsCommand,
  logs: async () => (await import("./builds.js")).logsCommand,
  cancel: async () => (await import("./builds.js")).cancelCommand,
  dispatch: async () => (await import("./builds.js")).dispatchCommand,
  repo: async () => (await import("./repo.js")).repoCommand,
  builder: async () => (await import("./builder.js")).builderCommand,
  replay: async () => (await import("./replay.js")).replayCommand,
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
