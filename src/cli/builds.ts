import type { Writable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import type { Build } from "../builds/backend.js";
import type { CliIo, Env, PetrelApi, Progress } from "./ops.js";
import {
  buildPath,
  CliError,
  createPetrelApi,
  EXIT,
  expectPositionals,
  parseCommandArgs,
  petrelUrl,
  processIo,
  progressTo,
  runCommand,
  writeAll,
} from "./ops.js";
import { formatAge, formatDuration, formatTable } from "./table.js";

/** A build as petrel's API answers it. */
export type ApiBuild = Build & { links?: { self: string; logs: string } };

const CONNECTION = {
  url: { type: "string" },
  token: { type: "string" },
  quiet: { type: "boolean", short: "q" },
  help: { type: "boolean", short: "h" },
} as const;

const CONNECTION_HELP = `  --url U        petrel's address (default PETREL_URL, else http://<PETREL_LISTEN>)
  --token T      admin token (default PETREL_ADMIN_TOKEN; prefer the variable: argv shows in ps)
  -q, --quiet    no progress lines on stderr`;

const BUILDS_USAGE = `usage: petrel builds [--repo R] [--ref R] [--state S] [--limit N] [--cursor C] [--json]

Lists builds, newest first: ID, STATE, REPO, REF, COMMIT, STARTED, TOOK, WHY (why a build was cancelled or errored).
  --repo R       owner/name
  --ref R        branch, tag or pull request head ref
  --state S      queued, running, success, failure, cancelled or error
  --limit N      at most N builds (default 20, at most 500)
  --cursor C     the next page: the cursor a previous listing printed
  --json         petrel's JSON answer ({"builds": [...], "hidden", "cursor"}) instead of the table
${CONNECTION_HELP}
`;

const LOGS_USAGE = `usage: petrel logs [-f] [--stdout | --stderr] <id>

Writes the build's log to stdout byte for byte: by default its stdout, its stderr and the executor's step
lines (==>) merged in the order they were written. With -f, follows it until the build ends.
  -f, --follow   follow the log until the build ends (reconnects and resumes where it left off)
  --stdout       only the build's stdout log
  --stderr       only the build's stderr log (with the step lines)
  --all          the merged log (the default)
${CONNECTION_HELP}

Exit code: 0 success; the build's exit code when it failed (1 if unknown); 3 error or cancelled;
4 not found or not petrel's build; 5 petrel unreachable; 6 token missing or refused; 7 not finished (without -f).
`;

const CANCEL_USAGE = `usage: petrel cancel <id> [--json]

Stops a build (needs the admin token); its state becomes cancelled.
  --json         the build as petrel answers it
${CONNECTION_HELP}

Exit code: 0 stopped (or being stopped); 8 the build had already ended (its state is printed).
`;

const DISPATCH_USAGE = `usage: petrel dispatch <repo> <ref> [--commit C] [--flavor F] [--follow] [--json]

Starts a build of <repo> (owner/name or <host>/<owner>/<name>) at <ref> (needs the admin token). Prints the
build ID on the first line, then its links. The clone URL is the entry's clone_url, else the one of the
repository's latest build, else the entry's forge (gitea.url).
  --commit C     the commit to build (default: petrel resolves <ref> with git ls-remote)
  --flavor F     the flavor (default: default)
  --follow       then follow its logs (stdout to stdout, stderr to stderr) and exit like \`petrel logs -f\`
  --json         petrel's JSON answer ({"build", "status", "logs"})
${CONNECTION_HELP}
`;

const RERUN_USAGE = `usage: petrel rerun <id> [--follow] [--json]

Starts a new build with exactly the inputs of build <id>: clone URL, commit, ref, flavor and event (needs the
admin token). It gets the secrets only if the original was trusted and its ref still reaches the commit.
Prints the new build ID on the first line, then its links.
  --follow       then follow its logs (stdout to stdout, stderr to stderr) and exit like \`petrel logs -f\`
  --json         petrel's JSON answer ({"build", "status", "logs", "rerun_of", "trusted", "untrusted_because"?})
${CONNECTION_HELP}
`;

/** \`petrel cancel\` of a build that had already ended (docs/cli.md). */
export const ALREADY_ENDED_EXIT = 8;

type Connection = { url?: string | undefined; token?: string | undefined; quiet?: boolean | undefined };

function connect(values: Connection, env: Env, io: CliIo): { api: PetrelApi; progress: Progress } {
  const progress = progressTo(io, values.quiet);
  const token = values.token ?? (env.PETREL_ADMIN_TOKEN?.trim() || undefined);
  return { api: createPetrelApi({ url: petrelUrl(values.url, env), token, progress }), progress };
}

/** `petrel builds`: the builds table, or petrel's JSON with `--json`. */
export async function buildsCommand(argv: string[], env: Env, io: CliIo = processIo()): Promise<number> {
  return runCommand("builds", io, async () => {
    const parsed = parseCommandArgs(
      argv,
      {
        ...CONNECTION,
        repo: { type: "string" },
        ref: { type: "string" },
        state: { type: "string" },
        limit: { type: "string" },
        cursor: { type: "string" },
        json: { type: "boolean" },
      },
      BUILDS_USAGE,
      io,
    );
    if (parsed === undefined) return EXIT.ok;
    const { values, positionals } = parsed;
    expectPositionals(positionals, 0, BUILDS_USAGE);
    const query = new URLSearchParams();
    if (values.repo !== undefined) query.set("repo", values.repo);
    if (values.ref !== undefined) query.set("ref", values.ref);
    if (values.state !== undefined) query.set("state", values.state);
    query.set("limit", values.limit ?? "20");
    if (values.cursor !== undefined) query.set("cursor", values.cursor);
    const { api } = connect(values, env, io);
    try {
      const { body } = await api.json<{ builds: ApiBuild[]; hidden?: number; cursor?: string }>("GET", `/builds?${query}`);
      // Notes go to stderr, so the table (or the JSON) on stdout stays what scripts read.
      const hidden = typeof body.hidden === "number" ? body.hidden : 0;
      if (hidden > 0) {
        io.stderr.write(
          `${hidden} build${hidden === 1 ? "" : "s"} of private repositories hidden; set PETREL_ADMIN_TOKEN to see ${hidden === 1 ? "it" : "them"}\n`,
        );
      }
      const builds = body.builds ?? [];
      if (values.json) io.stdout.write(`${JSON.stringify(body)}\n`);
      else if (builds.length === 0) io.stderr.write("no builds match\n");
      else io.stdout.write(buildsTable(builds, Date.now()));
      if (typeof body.cursor === "string") {
        const next = new URLSearchParams(query);
        next.set("cursor", body.cursor);
        const flags = [...next].filter(([k]) => k !== "limit" || values.limit !== undefined).map(([k, v]) => `--${k} ${shellWord(v)}`);
        io.stderr.write(`more builds: petrel builds ${flags.join(" ")}\n`);
      }
      return EXIT.ok;
    } finally {
      await api.close();
    }
  });
}

/** The human table of `petrel builds`. */
export function buildsTable(builds: readonly ApiBuild[], now: number): string {
  return formatTable(
    ["ID", "STATE", "REPO", "REF", "COMMIT", "STARTED", "TOOK", "WHY"],
    builds.map((b) => [
      b.id,
      b.state === "failure" && b.exitCode !== undefined ? `failure(${b.exitCode})` : b.state,
      b.repo,
      b.pr ? `${b.ref} (#${b.pr})` : b.ref,
      b.commit.slice(0, 7),
      formatAge(b.startedAt ?? b.createdAt, now),
      took(b, now),
      // "superseded by <id>", "timed out after 2h", "could not be placed: ...": what a cancelled or errored build says.
      (b.state === "cancelled" || b.state === "error") && b.reason ? b.reason : "",
    ]),
  );
}

function took(b: ApiBuild, now: number): string {
  if (b.startedAt === undefined) return "-";
  const end = b.finishedAt === undefined ? now : Date.parse(b.finishedAt);
  const start = Date.parse(b.startedAt);
  return Number.isNaN(start) || Number.isNaN(end) ? "-" : formatDuration((end - start) / 1000);
}

/** The exit code that reports a build's result (docs/cli.md). */
export function exitForBuild(build: Pick<Build, "state" | "exitCode">): number {
  switch (build.state) {
    case "success":
      return EXIT.ok;
    case "failure":
      return build.exitCode !== undefined && Number.isInteger(build.exitCode) && build.exitCode >= 1 && build.exitCode <= 255
        ? build.exitCode
        : EXIT.failure;
    case "cancelled":
    case "error":
      return EXIT.buildError;
    default:
      return EXIT.unfinished;
  }
}

function describeBuild(b: ApiBuild): string {
  const parts = [`${b.repo}@${b.commit.slice(0, 7)}`, b.ref ? `(${b.ref})` : "", b.state];
  if (b.reason) parts.push(`— ${b.reason}`);
  else if (b.exitCode !== undefined && b.state === "failure") parts.push(`— exit code ${b.exitCode}`);
  if (b.startedAt !== undefined && b.finishedAt !== undefined) {
    parts.push(`after ${formatDuration((Date.parse(b.finishedAt) - Date.parse(b.startedAt)) / 1000)}`);
  }
  return parts.filter(Boolean).join(" ");
}

/** `petrel logs [-f] [--stdout|--stderr] <id>`: the log bytes (merged by default); exits with the build's result. */
export async function logsCommand(argv: string[], env: Env, io: CliIo = processIo()): Promise<number> {
  return runCommand("logs", io, async () => {
    const parsed = parseCommandArgs(
      argv,
      {
        ...CONNECTION,
        follow: { type: "boolean", short: "f" },
        stdout: { type: "boolean" },
        stderr: { type: "boolean" },
        all: { type: "boolean" },
      },
      LOGS_USAGE,
      io,
    );
    if (parsed === undefined) return EXIT.ok;
    const { values, positionals } = parsed;
    expectPositionals(positionals, 1, LOGS_USAGE);
    if ([values.stdout, values.stderr, values.all].filter(Boolean).length > 1) {
      throw new CliError("usage", "--stdout, --stderr and --all cannot be combined");
    }
    const type: LogKind = values.stdout ? "stdout" : values.stderr ? "stderr" : "all";
    const id = positionals[0] as string;
    const { api, progress } = connect(values, env, io);
    try {
      return await showLogs(api, id, [{ type, out: io.stdout }], values.follow ?? false, progress);
    } finally {
      await api.close();
    }
  });
}

/** Which log: the merged one (`all`) or one stream. */
type LogKind = "all" | "stdout" | "stderr";

async function showLogs(
  api: PetrelApi,
  id: string,
  streams: Array<{ type: LogKind; out: Writable }>,
  follow: boolean,
  progress: Progress,
): Promise<number> {
  const first = (await api.json<ApiBuild>("GET", buildPath(id))).body;
  // The summary is said once: before the log only while the build has not ended, and after it only when
  // something changed in between.
  let said: string | undefined;
  const summary = (b: ApiBuild) => {
    const line = `build ${id}: ${describeBuild(b)}`;
    if (line !== said) progress(line);
    said = line;
  };
  if (first.state === "queued" && follow) {
    said = `build ${id}: ${describeBuild(first)}`;
    progress(`${said}; waiting for it to start`);
  } else if (first.state === "queued" || first.state === "running") {
    summary(first);
  }
  const ends = await Promise.all(streams.map((s) => copyLog(api, id, s.type, s.out, follow, progress)));
  // A follow already read the terminal build; the last stream to end saw the latest state.
  const last = ends[ends.length - 1] ?? (await api.json<ApiBuild>("GET", buildPath(id))).body;
  summary(last);
  return exitForBuild(last);
}

/** How often a follow reconnects after losing petrel before it gives up. */
const MAX_RECONNECTS = 5;

/** Our own output went away (`petrel logs -f id | head`): stop quietly, as a program killed by SIGPIPE would. */
class OutputClosed extends CliError {
  constructor() {
    super("output_closed", "output closed");
  }
}

/**
 * Copies one log to `out`. With `follow`, a stream that ends while the build still runs (petrel restarted, a
 * proxy timed out) or breaks mid-way is resumed at the byte offset reached, so every byte is written once.
 */
async function copyLog(
  api: PetrelApi,
  id: string,
  type: LogKind,
  out: Writable,
  follow: boolean,
  progress: Progress,
): Promise<ApiBuild | undefined> {
  let outError: Error | undefined;
  // EPIPE arrives as an 'error' event; without a listener it would crash the process.
  const onOutError = (err: Error) => {
    outError = err;
  };
  out.on("error", onOutError);
  try {
    return await copyLogLoop(api, id, type, out, follow, progress, () => outError);
  } finally {
    out.off("error", onOutError);
  }
}

async function copyLogLoop(
  api: PetrelApi,
  id: string,
  type: LogKind,
  out: Writable,
  follow: boolean,
  progress: Progress,
  outError: () => Error | undefined,
): Promise<ApiBuild | undefined> {
  let offset = 0;
  let failures = 0;
  let connected = false;
  const name = type === "all" ? "merged" : type;
  for (;;) {
    const path = `${buildPath(id)}/logs?type=${type}&follow=${follow}${offset > 0 ? `&offset=${offset}` : ""}`;
    progress(`GET ${api.url}${path}`);
    let broken: unknown;
    try {
      const res = await api.stream(path);
      connected = true;
      try {
        for await (const chunk of res.body) {
          const bytes = chunk as Buffer;
          try {
            if (outError() !== undefined) throw outError();
            await writeAll(out, bytes);
          } catch {
            res.body.destroy();
            throw new OutputClosed();
          }
          offset += bytes.byteLength;
          failures = 0;
        }
      } catch (err) {
        if (err instanceof OutputClosed) throw err;
        broken = err;
      }
    } catch (err) {
      // Refusals (404, 401, 410) are final; only an unreachable petrel is worth another try.
      if (!(err instanceof CliError) || err instanceof OutputClosed || err.exit !== EXIT.unreachable || !follow || !connected) throw err;
      broken = err;
    }
    if (!follow) {
      if (broken !== undefined)
        throw new CliError("unreachable", `the ${name} log from ${api.url} broke off after ${offset} bytes: ${(broken as Error).message}`);
      return undefined;
    }
    if (broken === undefined) {
      const build = (await api.json<ApiBuild>("GET", buildPath(id))).body;
      if (build.state !== "queued" && build.state !== "running") return build;
      progress(`the ${name} log ended while the build is ${build.state}; resuming at byte ${offset}`);
    } else {
      failures++;
      if (failures > MAX_RECONNECTS) {
        throw new CliError("unreachable", `lost the ${name} log from ${api.url} ${failures} times in a row: ${(broken as Error).message}`);
      }
      progress(`lost the ${name} log (${(broken as Error).message}); resuming at byte ${offset}`);
    }
    await sleep(Math.min(250 * 2 ** failures, 4000));
  }
}

/** `petrel cancel <id>`: stops a build. */
export async function cancelCommand(argv: string[], env: Env, io: CliIo = processIo()): Promise<number> {
  return runCommand("cancel", io, async () => {
    const parsed = parseCommandArgs(argv, { ...CONNECTION, json: { type: "boolean" } }, CANCEL_USAGE, io);
    if (parsed === undefined) return EXIT.ok;
    const { values, positionals } = parsed;
    expectPositionals(positionals, 1, CANCEL_USAGE);
    const id = positionals[0] as string;
    const { api } = connect(values, env, io);
    try {
      let body: ApiBuild;
      try {
        body = (await api.json<ApiBuild>("DELETE", buildPath(id))).body;
      } catch (err) {
        // petrel answers 409 already_finished for a build that had ended; say which way it ended.
        if (!(err instanceof CliError) || err.exit !== EXIT.refused) throw err;
        const build = (await api.json<ApiBuild>("GET", buildPath(id)).catch(() => undefined))?.body;
        if (build === undefined || build.state === "queued" || build.state === "running") throw err;
        if (values.json) io.stdout.write(`${JSON.stringify(build)}\n`);
        else io.stdout.write(`${id} had already ended: ${build.state}${build.reason ? ` (${build.reason})` : ""}; nothing was cancelled\n`);
        return ALREADY_ENDED_EXIT;
      }
      if (values.json) {
        io.stdout.write(`${JSON.stringify(body)}\n`);
      } else if (body.state === "cancelled") {
        io.stdout.write(`cancelled ${id}\n`);
      } else if (body.state === "queued" || body.state === "running") {
        io.stdout.write(`cancel requested for ${id}; Nomad is stopping it (state still ${body.state})\n`);
      } else {
        io.stdout.write(`${id} had already ended: ${body.state}${body.reason ? ` (${body.reason})` : ""}\n`);
      }
      return EXIT.ok;
    } finally {
      await api.close();
    }
  });
}

/** `petrel dispatch <repo> <ref>`: a manual build; prints its ID and links, optionally follows it. */
export async function dispatchCommand(argv: string[], env: Env, io: CliIo = processIo()): Promise<number> {
  return runCommand("dispatch", io, async () => {
    const parsed = parseCommandArgs(
      argv,
      {
        ...CONNECTION,
        commit: { type: "string" },
        flavor: { type: "string" },
        follow: { type: "boolean", short: "f" },
        json: { type: "boolean" },
      },
      DISPATCH_USAGE,
      io,
    );
    if (parsed === undefined) return EXIT.ok;
    const { values, positionals } = parsed;
    expectPositionals(positionals, 2, DISPATCH_USAGE);
    const [repo, ref] = positionals as [string, string];
    const body: Record<string, string> = { repo, ref };
    if (values.commit !== undefined) body.commit = values.commit;
    if (values.flavor !== undefined) body.flavor = values.flavor;
    const { api, progress } = connect(values, env, io);
    try {
      const { body: answer } = await api.json<BuildLinks>("POST", "/builds", body);
      return await startedBuild(api, answer, values, io, progress);
    } finally {
      await api.close();
    }
  });
}

interface BuildLinks {
  build: string;
  status: string;
  logs: string;
  rerun_of?: string;
  trusted?: boolean;
  untrusted_because?: string;
}

/** Prints a build petrel just started (ID first, then its links) and follows it with `--follow`. */
async function startedBuild(
  api: PetrelApi,
  answer: BuildLinks,
  values: { json?: boolean | undefined; follow?: boolean | undefined },
  io: CliIo,
  progress: Progress,
): Promise<number> {
  if (values.json) io.stdout.write(`${JSON.stringify(answer)}\n`);
  else io.stdout.write(`${answer.build}\n  status: ${answer.status}\n  logs:   ${answer.logs}\n`);
  if (!values.follow) return EXIT.ok;
  return showLogs(
    api,
    answer.build,
    [
      { type: "stdout", out: io.stdout },
      { type: "stderr", out: io.stderr },
    ],
    true,
    progress,
  );
}

/** \`petrel rerun <id>\`: the same build again, as a new build; prints its ID and links, optionally follows it. */
export async function rerunCommand(argv: string[], env: Env, io: CliIo = processIo()): Promise<number> {
  return runCommand("rerun", io, async () => {
    const parsed = parseCommandArgs(
      argv,
      { ...CONNECTION, follow: { type: "boolean", short: "f" }, json: { type: "boolean" } },
      RERUN_USAGE,
      io,
    );
    if (parsed === undefined) return EXIT.ok;
    const { values, positionals } = parsed;
    expectPositionals(positionals, 1, RERUN_USAGE);
    const id = positionals[0] as string;
    const { api, progress } = connect(values, env, io);
    try {
      const { body: answer } = await api.json<BuildLinks>("POST", `${buildPath(id)}/rerun`, {});
      // On stderr whatever --quiet says: a re-run without the secrets may fail where the original passed.
      if (answer.trusted === false && !values.json)
        io.stderr.write(`petrel rerun: ${answer.build} runs untrusted (no secrets): ${answer.untrusted_because ?? "not trusted"}\n`);
      return await startedBuild(api, answer, values, io, progress);
    } finally {
      await api.close();
    }
  });
}

/** A value as one shell word, for the command lines petrel suggests. */
function shellWord(value: string): string {
  return /^[A-Za-z0-9._/=:@%+-]+$/.test(value) ? value : `'${value.replace(/'/g, "'\\''")}'`;
}
