import { readFileSync } from "node:fs";

const USAGE = `usage: petrel <command> [options]
       petrel help <command> | --help | --version

commands:
  serve                      run the petrel service (webhooks, builds, logs)
  executor                   run one build from the Nomad task environment
  run [--flavor F] [--debug] build the current working tree locally with the same executor
  builds [--repo R] [--ref R] [--state S] [--limit N] [--cursor C]
                             list builds, newest first
  logs [-f] [--stderr] <id>  a build's log; with -f follows it and exits with the build's result
  cancel <id>                stop a build (admin token)
  rerun <id>                 start a build again with the same inputs (admin token)
  dispatch <repo> <ref>      start a build by hand (admin token); --follow streams its logs
  repo add|show|list|rm      manage repositories in Consul (cluster mode) or PETREL_CONFIG (single machine)
  builder register <file.nomad.hcl>
                             check a builder job and register it with Nomad
  replay <delivery.json>     sign a saved webhook delivery and POST it to petrel
  migrate albatros [--apply] show (then write) the petrel entries of an Albatros installation's Consul keys

Every command takes --help; operator commands take --json. Exit codes: docs/cli.md.

environment: see README "Configuration"`;

type Command = (argv: string[], env: NodeJS.ProcessEnv) => Promise<number>;

// Each command is imported on demand so `petrel executor` starts without loading the HTTP service.
const COMMANDS: Record<string, () => Promise<Command>> = {
  serve: async () => (await import("./serve.js")).serveCliCommand,
  executor: async () => (await import("./executor.js")).runExecutorCommand,
  run: async () => (await import("./run.js")).runLocalCommand,
  builds: async () => (await import("./builds.js")).buildsCommand,
  logs: async () => (await import("./builds.js")).logsCommand,
  cancel: async () => (await import("./builds.js")).cancelCommand,
  dispatch: async () => (await import("./builds.js")).dispatchCommand,
  rerun: async () => (await import("./builds.js")).rerunCommand,
  repo: async () => (await import("./repo.js")).repoCommand,
  builder: async () => (await import("./builder.js")).builderCommand,
  replay: async () => (await import("./replay.js")).replayCommand,
  migrate: async () => (await import("./migrate.js")).migrateCommand,
};

/** petrel's version, from the package.json next to dist/ (and src/). */
function version(): string {
  const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version?: string };
  return pkg.version ?? "unknown";
}

/** Runs the CLI and returns its exit code. */
export async function main(argv: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const [first, ...rest] = argv;
  if (first === undefined) {
    process.stderr.write(`${USAGE}\n`);
    return 64;
  }
  if (first === "--help" || first === "-h") {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  if (first === "--version" || first === "-V" || first === "version") {
    process.stdout.write(`petrel ${version()}\n`);
    return 0;
  }
  // `petrel help <command>` is `petrel <command> --help`; subcommands (`help repo add`) pass through.
  const [name, args] = first === "help" ? [rest[0], [...rest.slice(1), "--help"]] : [first, rest];
  if (name === undefined) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  if (name.startsWith("-")) {
    process.stderr.write(`petrel: unknown option ${name.split("=")[0]}; see \`petrel --help\`\n`);
    return 64;
  }
  const load = Object.hasOwn(COMMANDS, name) ? COMMANDS[name] : undefined;
  if (load === undefined) {
    process.stderr.write(`petrel: unknown command ${JSON.stringify(name)}; see \`petrel --help\`\n`);
    return 64;
  }
  const command = await load();
  return command(args, env);
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
