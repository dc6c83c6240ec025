import { readFile } from "node:fs/promises";
import { Agent } from "undici";
import { OPTIONAL_META, REQUIRED_META } from "../contract/dispatch.js";
import { UpstreamError } from "../errors.js";
import { tlsAgentOptions } from "../http/tls.js";
import { createNomadClient } from "../nomad/client.js";
import type { CliIo, Env } from "./ops.js";
import { CliError, codeForUpstream, EXIT, expectPositionals, parseCommandArgs, processIo, progressTo, runCommand } from "./ops.js";
import { cliConfig } from "./repo-store.js";

const USAGE = `usage: petrel builder register <file.nomad.hcl> [--dry-run] [--json]

Has Nomad parse the job (POST /v1/jobs/parse), checks it is a petrel builder, then registers it with its HCL
source (POST /v1/jobs). A builder is a parameterized batch job whose meta_required includes REPO_URL,
COMMIT, BRANCH and FLAVOR, with a task group "runner" holding a task "executor".
  --dry-run      parse and check only
  --json         {"job", "problems", "warnings", "registered"}
  -q, --quiet    no progress lines on stderr

Talks to NOMAD_ADDR with NOMAD_TOKEN, NOMAD_NAMESPACE, NOMAD_REGION and the NOMAD_* TLS settings.
`;

/** What is wrong with a job as a petrel builder (problems) and what is merely unwise (warnings). */
export interface BuilderCheck {
  problems: string[];
  warnings: string[];
}

type Loose = Record<string, unknown>;

function obj(value: unknown): Loose | undefined {
  return typeof value === "object" && value !== null && !Array.isArray(value) ? (value as Loose) : undefined;
}

function strings(value: unknown): string[] {
  return Array.isArray(value) ? value.filter((v): v is string => typeof v === "string") : [];
}

/** Checks a parsed job (Nomad's JSON job, canonicalized) against petrel's builder contract (hcl/README.md, "The builder contract"). */
export function checkBuilderJob(job: Loose): BuilderCheck {
  const problems: string[] = [];
  const warnings: string[] = [];
  const type = typeof job.Type === "string" && job.Type !== "" ? job.Type : "service";
  if (type !== "batch") problems.push(`type is "${type}"; a builder is a batch job (type = "batch")`);

  const params = obj(job.ParameterizedJob);
  if (params === undefined) {
    problems.push("it has no parameterized block; a builder is dispatched once per build (parameterized { ... })");
  } else {
    const required = strings(params.MetaRequired);
    const optional = strings(params.MetaOptional);
    const missing = REQUIRED_META.filter((k) => !required.includes(k));
    if (missing.length > 0) {
      const misplaced = missing.filter((k) => optional.includes(k));
      problems.push(
        `meta_required lacks ${missing.join(", ")}${misplaced.length ? ` (${misplaced.join(", ")} ${misplaced.length === 1 ? "is" : "are"} in meta_optional)` : ""}; it must include ${REQUIRED_META.join(", ")}`,
      );
    }
    const extra = required.filter((k) => !(REQUIRED_META as readonly string[]).includes(k));
    if (extra.length > 0)
      problems.push(`meta_required also demands ${extra.join(", ")}, which petrel never sends: every dispatch would be refused`);
    const notDeclared = OPTIONAL_META.filter((k) => !optional.includes(k) && !required.includes(k));
    if (notDeclared.length > 0)
      warnings.push(`meta_optional lacks ${notDeclared.join(", ")}: petrel will not send ${notDeclared.length === 1 ? "it" : "them"}`);
    const payload = typeof params.Payload === "string" && params.Payload !== "" ? params.Payload : "optional";
    if (payload === "forbidden") warnings.push('payload = "forbidden": trusted builds cannot receive their secrets and deploy key');
    if (payload === "required")
      warnings.push('payload = "required": builds without secrets (untrusted senders, forks) will be refused by Nomad; use "optional"');
  }

  const groups = Array.isArray(job.TaskGroups) ? job.TaskGroups.map(obj).filter((g): g is Loose => g !== undefined) : [];
  const runner = groups.find((g) => g.Name === "runner");
  if (runner === undefined) {
    const names = groups.map((g) => String(g.Name));
    problems.push(
      `no task group "runner" (found ${names.length ? names.map((n) => `"${n}"`).join(", ") : "none"}); petrel reads logs from group "runner", task "executor"`,
    );
  } else {
    const tasks = (Array.isArray(runner.Tasks) ? runner.Tasks : []).map(obj).filter((t): t is Loose => t !== undefined);
    const executor = tasks.find((t) => t.Name === "executor");
    if (executor === undefined) {
      const names = tasks.map((t) => String(t.Name));
      problems.push(`group "runner" has no task "executor" (found ${names.length ? names.map((n) => `"${n}"`).join(", ") : "none"})`);
    } else if (obj(executor.DispatchPayload) === undefined && params !== undefined && params.Payload !== "forbidden") {
      warnings.push('task "executor" has no dispatch_payload { file = "payload.json" }: secrets sent with trusted builds never reach it');
    }
    const restart = Number(obj(runner.RestartPolicy)?.Attempts ?? 0);
    if (restart !== 0) warnings.push(`restart attempts = ${restart}: a failed build would run again; set restart { attempts = 0 }`);
    const reschedule = Number(obj(runner.ReschedulePolicy)?.Attempts ?? 0);
    if (reschedule !== 0 || obj(runner.ReschedulePolicy)?.Unlimited === true) {
      warnings.push(
        `reschedule attempts = ${reschedule}: a lost build would run again elsewhere; set reschedule { attempts = 0, unlimited = false }`,
      );
    }
  }
  return { problems, warnings };
}

/** `petrel builder register <file.nomad.hcl>`: parse with Nomad, check the builder contract, register. */
export async function builderCommand(argv: string[], env: Env, io: CliIo = processIo()): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === "--help" || sub === "-h" || sub === "help") {
    io.stdout.write(USAGE);
    return EXIT.ok;
  }
  if (sub !== "register") {
    io.stderr.write(
      `petrel builder: ${sub === undefined ? "missing subcommand" : `unknown subcommand ${JSON.stringify(sub)}`}; see \`petrel builder --help\`\n`,
    );
    return EXIT.usage;
  }
  return runCommand("builder register", io, () => register(rest, env, io));
}

async function register(argv: string[], env: Env, io: CliIo): Promise<number> {
  const parsed = parseCommandArgs(
    argv,
    {
      "dry-run": { type: "boolean" },
      json: { type: "boolean" },
      quiet: { type: "boolean", short: "q" },
      help: { type: "boolean", short: "h" },
    },
    USAGE,
    io,
  );
  if (parsed === undefined) return EXIT.ok;
  const { values, positionals } = parsed;
  expectPositionals(positionals, 1, USAGE);
  const file = positionals[0] as string;
  const progress = progressTo(io, values.quiet);
  const config = cliConfig(env);
  if (config.nomad === undefined) {
    throw new CliError(
      "bad_request",
      "builder register talks to Nomad: set NOMAD_ADDR (and NOMAD_TOKEN). Single-machine mode runs `petrel executor` itself and needs no builder job",
    );
  }
  let hcl: string;
  try {
    hcl = await readFile(file, "utf8");
  } catch (err) {
    throw new CliError("bad_request", `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }

  const nomadConfig = config.nomad;
  const agent = new Agent(tlsAgentOptions("Nomad", nomadConfig.tls));
  const nomad = createNomadClient({
    addr: nomadConfig.addr,
    dispatcher: agent,
    retryBudgetMs: 15_000,
    ...(nomadConfig.token === undefined ? {} : { token: nomadConfig.token }),
    ...(nomadConfig.namespace === undefined ? {} : { namespace: nomadConfig.namespace }),
    ...(nomadConfig.region === undefined ? {} : { region: nomadConfig.region }),
  });
  const step = async <T>(what: string, fn: () => Promise<T>): Promise<T> => {
    progress(`nomad ${nomadConfig.addr}: ${what}`);
    try {
      return await fn();
    } catch (err) {
      if (err instanceof UpstreamError)
        throw new CliError(codeForUpstream(err), `Nomad at ${nomadConfig.addr}: ${err.message}`, { cause: err });
      throw err;
    }
  };

  try {
    const job = (await step(`POST /v1/jobs/parse (${file})`, () => nomad.parseJob(hcl, { canonicalize: true }))) as Loose;
    const id = String(job.ID);
    const check = checkBuilderJob(job);
    const out: Record<string, unknown> = {
      job: id,
      problems: check.problems,
      warnings: check.warnings,
      registered: null,
      dry_run: values["dry-run"] ?? false,
    };
    const human = (line: string) => {
      if (!values.json) io.stdout.write(`${line}\n`);
    };
    human(`job "${id}" (${file})`);
    for (const p of check.problems) human(`  problem  ${p}`);
    for (const w of check.warnings) human(`  warning  ${w}`);
    if (check.problems.length === 0)
      human("  ok       a parameterized batch builder with group runner / task executor and the required meta keys");
    if (id !== config.builderJob)
      human(`  note     petrel's default builder is "${config.builderJob}" (PETREL_BUILDER_JOB); name this job in a flavor to use it`);
    if (check.problems.length > 0) {
      if (values.json) io.stdout.write(`${JSON.stringify(out)}\n`);
      throw new CliError(
        "bad_request",
        `${file} is not a petrel builder (${check.problems.length} problem${check.problems.length === 1 ? "" : "s"}); nothing registered`,
      );
    }
    if (values["dry-run"]) {
      human("dry run: nothing registered");
      if (values.json) io.stdout.write(`${JSON.stringify(out)}\n`);
      return EXIT.ok;
    }
    const result = await step(`POST /v1/jobs (${id}, with its HCL source)`, () => nomad.registerJob(job, { source: hcl }));
    out.registered = { job_modify_index: result.jobModifyIndex, warnings: result.warnings };
    human(`registered "${id}" with Nomad at ${nomadConfig.addr} (job modify index ${result.jobModifyIndex})`);
    if (result.warnings) io.stderr.write(`petrel builder register: Nomad warns: ${result.warnings}\n`);
    if (values.json) io.stdout.write(`${JSON.stringify(out)}\n`);
    return EXIT.ok;
  } finally {
    await agent.close();
  }
}
