import { Agent } from "undici";
import type { ConsulClient } from "../consul/client.js";
import { consulAgentOptions, createConsulClient } from "../consul/client.js";
import { parseStoredValue, repoKeyPath } from "../consul/registry.js";
import { repoKeyOfAlbatros, secretsFromInject } from "../registry/albatros.js";
import type { RepoKey, RepoSecrets } from "../registry/schema.js";
import { AlbatrosEntry, describeIssues, RepoConfig } from "../registry/schema.js";
import { seeHelp } from "./args.js";
import type { CliIo, Env } from "./ops.js";
import { CliError, EXIT, parseCommandArgs, processIo, progressTo, runCommand } from "./ops.js";
import { type ConsulStep, cliConfig, consulStep } from "./repo-store.js";

const MIGRATE_USAGE = `usage: petrel migrate albatros [--apply] [--prefix P] [--json] [-q]

Lists every Albatros entry under the prefix (Consul key <P>/<base64 of the repository URL>) and the petrel
keys it becomes: <PETREL_CONSUL_PREFIX>/repos/<host>/<owner>/<name> (hook token, trusted senders, forge) and
<PETREL_CONSUL_PREFIX>/secrets/<host>/<owner>/<name> (the secrets parsed out of plain \`export NAME=value\`
lines of \`inject\`; any other inject text is kept whole as "inject"). Secret values are never printed.
  --apply       write the petrel keys; a key that already exists is never overwritten (Consul check-and-set)
  --prefix P    where the Albatros entries are (default: PETREL_ALBATROS_PREFIX, else albatros)
  --flavor name=builder
                the flavors the petrel entries list (repeatable; \`default\` is added as PETREL_BUILDER_JOB).
                Albatros sent any ?flavor= to its one builder; a petrel entry accepts only the flavors it lists
  --json        {"prefix", "applied", "entries": [{"albatros", "repo", "repos", "fields", "secrets", "secret_names", "inject", "status", "problem"}]}
  -q, --quiet   no progress lines on stderr

Consul at CONSUL_HTTP_ADDR (CONSUL_HTTP_TOKEN). The Albatros entries are left in place: petrel prefers its own
entry for the same repository, so deleting the petrel keys rolls back. Exit code 2 when an entry is not (or
would not be) migrated: invalid, a duplicate, or petrel keys already there.
`;

const OPTIONS = {
  apply: { type: "boolean" },
  prefix: { type: "string" },
  flavor: { type: "string", multiple: true },
  json: { type: "boolean" },
  quiet: { type: "boolean", short: "q" },
} as const;

/** What happened (or, in a dry run, would happen) to one Albatros entry. */
export type MigrationStatus = "would_write" | "written" | "exists" | "conflict" | "invalid" | "duplicate";

/** One Albatros entry and the petrel keys it becomes. Secret names only, never values. */
export interface MigrationRow {
  albatros: string;
  repo?: RepoKey;
  repos?: string;
  /** The fields the petrel entry gets (`hook.token`, `trusted.senders`, `gitea`, ...), never their values. */
  fields: string[];
  secrets?: string;
  secret_names: string[];
  /** The inject text could not be parsed into secrets and is kept whole. */
  inject: boolean;
  status: MigrationStatus;
  problem?: string;
}

interface Planned {
  row: MigrationRow;
  config?: Record<string, unknown>;
  secretValues?: RepoSecrets;
}

/** `petrel migrate albatros`: shows, then with --apply writes, the petrel entries of an Albatros installation. */
export async function migrateCommand(argv: string[], env: Env, io: CliIo = processIo()): Promise<number> {
  const [what, ...rest] = argv;
  if (what === "--help" || what === "-h" || what === "help") {
    io.stdout.write(MIGRATE_USAGE);
    return EXIT.ok;
  }
  if (what !== "albatros") {
    io.stderr.write(
      `petrel migrate: ${what === undefined ? "missing source" : `unknown source ${JSON.stringify(what)}`}; ${seeHelp(MIGRATE_USAGE)}\n`,
    );
    return EXIT.usage;
  }
  return runCommand("migrate albatros", io, () => migrateAlbatros(rest, env, io));
}

async function migrateAlbatros(argv: string[], env: Env, io: CliIo): Promise<number> {
  const args = parseCommandArgs(argv, OPTIONS, MIGRATE_USAGE, io, { positionals: false });
  if (args === undefined) return EXIT.ok;
  const config = cliConfig(env);
  const source = (args.values.prefix ?? config.albatrosPrefix ?? "albatros").replace(/^\/+|\/+$/g, "");
  if (source === "") throw new CliError("usage", `--prefix must not be empty; ${seeHelp(MIGRATE_USAGE)}`);
  const flavors = flavorsFrom(args.values.flavor, config.builderJob);
  const progress = progressTo(io, args.values.quiet);
  const agent = new Agent(consulAgentOptions(config.consul.tls));
  const consul = createConsulClient({
    addr: config.consul.addr,
    dispatcher: agent,
    retry: { retries: 2, minTimeoutMs: 200 },
    timeoutMs: 15_000,
    ...(config.consul.token === undefined ? {} : { token: config.consul.token }),
  });
  const step = consulStep(config.consul.addr, progress);
  try {
    const found = await step(`GET ${source}/ (recurse)`, () => consul.get(`${source}/`, { recurse: true }));
    const planned: Planned[] = [];
    const seen = new Map<RepoKey, string>();
    for (const entry of [...(found.entries ?? [])].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))) {
      if (entry.key.endsWith("/") && !entry.value?.length) continue;
      const p = planEntry(entry.key, entry.key.slice(source.length + 1), entry.value?.toString("utf8") ?? "", config.consulPrefix, flavors);
      const repo = p.row.repo;
      if (repo !== undefined && p.row.status === "would_write") {
        const first = seen.get(repo);
        if (first !== undefined) {
          p.row.status = "duplicate";
          p.row.problem = `names the same repository as ${first}; only that one is migrated`;
        } else {
          seen.set(repo, entry.key);
          const taken = await existing(consul, step, p.row);
          if (taken.length > 0) {
            p.row.status = "exists";
            p.row.problem = `${taken.join(" and ")} already exist${taken.length === 1 ? "s" : ""}; left alone`;
          }
        }
      }
      planned.push(p);
    }
    if (args.values.apply) for (const p of planned) if (p.row.status === "would_write") await write(consul, step, p);
    const rows = planned.map((p) => p.row);
    if (args.values.json) {
      io.stdout.write(`${JSON.stringify({ prefix: source, applied: args.values.apply === true, entries: rows }, null, 2)}\n`);
    } else {
      io.stdout.write(formatRows(source, rows, args.values.apply === true, flavors !== undefined));
    }
    const failed = rows.filter((r) => r.status !== "would_write" && r.status !== "written");
    return failed.length > 0 ? EXIT.refused : EXIT.ok;
  } finally {
    await agent.close();
  }
}

/** The `flavors` of the migrated entries from `--flavor name=builder`; undefined when none is given. */
function flavorsFrom(values: string[] | undefined, defaultBuilder: string): Record<string, { builder: string }> | undefined {
  if (values === undefined || values.length === 0) return undefined;
  const flavors: Record<string, { builder: string }> = { default: { builder: defaultBuilder } };
  for (const raw of values) {
    const m = /^([A-Za-z0-9._-]+)=([A-Za-z0-9._-]+)$/.exec(raw);
    if (m === null) throw new CliError("usage", `--flavor wants name=builder, got ${JSON.stringify(raw)}; ${seeHelp(MIGRATE_USAGE)}`);
    flavors[m[1] as string] = { builder: m[2] as string };
  }
  return flavors;
}

/** The petrel keys one Albatros entry becomes, pure. */
export function planEntry(
  albatrosKey: string,
  encoded: string,
  text: string,
  petrelPrefix: string,
  flavors?: Record<string, { builder: string }>,
): Planned {
  const row: MigrationRow = { albatros: albatrosKey, fields: [], secret_names: [], inject: false, status: "invalid" };
  const repo = repoKeyOfAlbatros(encoded);
  if (repo === undefined) {
    row.problem = "the key is not base64 of a repository URL";
    return { row };
  }
  row.repo = repo;
  const raw = parseStoredValue(text);
  if (!raw.ok) {
    row.problem = raw.problem;
    return { row };
  }
  const checked = AlbatrosEntry.safeParse(raw.value);
  if (!checked.success) {
    row.problem = describeIssues(checked.error);
    return { row };
  }
  const value = checked.data;
  const config: Record<string, unknown> = { hook: { token: value.hook.token }, trusted: value.trusted };
  if (flavors !== undefined) config.flavors = flavors;
  if (value.gitea !== undefined) config.gitea = value.gitea;
  if (value.logs !== undefined) config.logs = value.logs;
  if (value.private !== undefined) config.private = value.private;
  const valid = RepoConfig.safeParse(config);
  if (!valid.success) {
    row.problem = describeIssues(valid.error);
    return { row };
  }
  row.repos = repoKeyPath(petrelPrefix, "repos", repo);
  row.fields = [
    "hook.token",
    ...(value.trusted.senders.length > 0 ? ["trusted.senders"] : []),
    ...Object.keys(config).filter((k) => k !== "hook" && k !== "trusted"),
  ];
  row.status = "would_write";
  const planned: Planned = { row, config };
  if (value.inject !== undefined && value.inject.trim() !== "") {
    const parsed = secretsFromInject(value.inject);
    const secrets: RepoSecrets = parsed ?? { inject: value.inject };
    if (Object.keys(secrets).length > 0) {
      row.secrets = repoKeyPath(petrelPrefix, "secrets", repo);
      row.secret_names = parsed === undefined ? [] : Object.keys(parsed).sort();
      row.inject = parsed === undefined;
      planned.secretValues = secrets;
    }
  }
  return planned;
}

async function existing(consul: ConsulClient, step: ConsulStep, row: MigrationRow): Promise<string[]> {
  const keys = [row.repos, row.secrets].filter((k): k is string => k !== undefined);
  const taken: string[] = [];
  for (const key of keys) {
    const res = await step(`GET ${key}`, () => consul.get(key));
    if (res.entries !== null) taken.push(key);
  }
  return taken;
}

/**
 * Writes the secrets, then the config, each only if absent (cas=0): a repository never exists for a moment
 * without its secrets, and nothing written meanwhile by someone else is overwritten. When the config lost
 * the race, the secrets just written are taken back (only if still ours).
 */
async function write(consul: ConsulClient, step: ConsulStep, p: Planned): Promise<void> {
  const { row } = p;
  const secretsText = p.secretValues === undefined ? undefined : JSON.stringify(p.secretValues, null, 2);
  if (row.secrets !== undefined && secretsText !== undefined) {
    const key = row.secrets;
    const ok = await step(`PUT ${key}?cas=0`, () => consul.put(key, secretsText, { cas: 0n }));
    if (!ok) {
      row.status = "conflict";
      row.problem = `${key} was created meanwhile; nothing written`;
      return;
    }
  }
  const reposKey = row.repos as string;
  const ok = await step(`PUT ${reposKey}?cas=0`, () => consul.put(reposKey, JSON.stringify(p.config, null, 2), { cas: 0n }));
  if (ok) {
    row.status = "written";
    return;
  }
  row.status = "conflict";
  row.problem = `${reposKey} was created meanwhile; nothing written`;
  if (row.secrets !== undefined) {
    const key = row.secrets;
    const back = await step(`GET ${key}`, () => consul.get(key));
    const mine = back.entries?.[0];
    if (mine !== undefined && mine.value?.toString("utf8") === secretsText) {
      await step(`DELETE ${key}?cas=${mine.modifyIndex}`, () => consul.delete(key, { cas: mine.modifyIndex }));
    }
  }
}

const STATUS_WORDS: Record<MigrationStatus, string> = {
  would_write: "would write",
  written: "written",
  exists: "skipped",
  conflict: "skipped",
  invalid: "invalid",
  duplicate: "skipped",
};

function formatRows(prefix: string, rows: readonly MigrationRow[], applied: boolean, flavorsGiven: boolean): string {
  if (rows.length === 0) return `no Albatros entries under ${prefix}/\n`;
  const out: string[] = [];
  for (const r of rows) {
    out.push(`${r.albatros}${r.repo === undefined ? "" : `  (${r.repo})`}`);
    if (r.repos !== undefined) out.push(`  ${r.repos}  ${r.fields.join(", ")}`);
    if (r.secrets !== undefined) {
      out.push(`  ${r.secrets}  ${r.inject ? "inject (kept as shell: not plain export lines)" : `secrets ${r.secret_names.join(", ")}`}`);
    }
    out.push(`  ${STATUS_WORDS[r.status]}${r.problem === undefined ? "" : `: ${r.problem}`}`);
  }
  const counts = new Map<string, number>();
  for (const r of rows) counts.set(STATUS_WORDS[r.status], (counts.get(STATUS_WORDS[r.status]) ?? 0) + 1);
  out.push("");
  out.push(`${rows.length} Albatros entr${rows.length === 1 ? "y" : "ies"}: ${[...counts].map(([w, n]) => `${n} ${w}`).join(", ")}`);
  if (!applied && rows.some((r) => r.status === "would_write")) out.push("dry run: nothing written; run again with --apply to write");
  if (!flavorsGiven && rows.some((r) => r.status === "would_write" || r.status === "written")) {
    out.push("note: Albatros sent every ?flavor= to one builder; the petrel entries accept only `default` (list more with --flavor)");
  }
  return `${out.join("\n")}\n`;
}
