import { parseCommandArgs, UsageError } from "./args.js";

const USAGE = `usage: petrel serve

Runs the petrel service: webhooks, builds, logs. Without NOMAD_ADDR it runs builds on this machine
(single-machine mode, repositories in PETREL_CONFIG); with it, on Nomad (cluster mode, repositories in Consul).
Settings come from the environment: see README "Configuration". Exit code 2 when it cannot start.
`;

/** `petrel serve [--help]`: the arguments are read here, the service itself lives in ../main.ts. */
export async function serveCliCommand(argv: string[], env: NodeJS.ProcessEnv): Promise<number> {
  try {
    if (parseCommandArgs(argv, {}, USAGE, process, { positionals: false }) === undefined) return 0;
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`petrel serve: ${err.message}\n`);
    return err.exit;
  }
  const { serveCommand } = await import("../main.js");
  return serveCommand(env);
}
