import { randomBytes } from "node:crypto";
import { readFile } from "node:fs/promises";
import yaml from "js-yaml";
import type { z } from "zod";
import type { RepoKey } from "../registry/schema.js";
import { describeIssues, isRepoKey, RepoConfig, repoKeyFromUrl } from "../registry/schema.js";
import { seeHelp } from "./args.js";
import type { CliIo, Env } from "./ops.js";
import { CliError, EXIT, expectPositionals, parseCommandArgs, processIo, progressTo, readAllText, runCommand } from "./ops.js";
import type { RepoStore, StoredRepo } from "./repo-store.js";
import { cliConfig, openRepoStore } from "./repo-store.js";
import { formatTable, maskSecret } from "./table.js";

const WHERE_HELP = `Cluster mode (NOMAD_ADDR set): Consul KV at CONSUL_HTTP_ADDR under PETREL_CONSUL_PREFIX (CONSUL_HTTP_TOKEN).
Single-machine mode: the YAML file PETREL_CONFIG (default ./petrel.yaml), written with mode 0600.`;

const REPO_USAGE = `usage: petrel repo add|show|list|rm ...

  repo add <html-url> [options]   register a repository; prints the webhook URL and secret once
  repo show <key-or-url>          one entry, secrets and tokens masked
  repo list                       every entry
  repo rm <key-or-url>            remove an entry and its secrets

${WHERE_HELP}
`;

const ADD_USAGE = `usage: petrel repo add <html-url> [options]

Registers a repository (its Gitea/Forgejo page URL, or <host>/<owner>/<name>). A webhook secret of 32 random
bytes is generated unless --secret-from-file is given; the webhook URL and the secret are printed once.
  --secret-from-file F       the webhook secret is the content of F (whitespace trimmed)
  --token                    also require a shared token (?token= in the webhook URL); generated and printed once
  --trusted a,b              senders whose builds get the repository's secrets
  --flavor name=builder      a flavor and its Nomad builder job (repeatable; default: default=PETREL_BUILDER_JOB)
  --cache name=path          a build cache and where the build sees it (repeatable), e.g. npm=~/.npm
  --gitea-url U              Gitea's base URL for commit statuses (with --gitea-token-from-file)
  --gitea-token-from-file F  a Gitea token with write:repository, read from F
  --logs public|token        who may read build logs (default: public, token for private repositories)
  --secret NAME=@F           a build secret read from file F ("@-": stdin), repeatable; deploy_key=@F is the
                             SSH key used only to clone. Values are never taken from the command line.
                             The file's content is kept as is, minus one trailing newline (a deploy key keeps it).
  --force                    replace an existing entry (a new webhook secret, unless --secret-from-file);
                             its build secrets stay unless --secret is given
  --json                     {"key", "store", "location", "webhook": {"url", "secret", "token", "flavors"}}
  -q, --quiet                no progress lines on stderr

${WHERE_HELP}
`;

const SHOW_USAGE = `usage: petrel repo show <key-or-url> [--json]

Prints a repository's entry with its secrets and tokens masked (abcd…(64 chars)).
${WHERE_HELP}
`;

const LIST_USAGE = `usage: petrel repo list [--json]

Lists the registered repositories: KEY, AUTH, TRUSTED, FLAVORS, LOGS, SECRETS (names only).
${WHERE_HELP}
`;

const RM_USAGE = `usage: petrel repo rm <key-or-url> [--json]

Removes a repository's entry and its secrets. Exit code 4 when there was none.
${WHERE_HELP}
`;

const COMMON = {
  json: { type: "boolean" },
  quiet: { type: "boolean", short: "q" },
  help: { type: "boolean", short: "h" },
} as const;

/** `petrel repo add|show|list|rm`: the repository registry of the mode petrel runs in. */
export async function repoCommand(argv: string[], env: Env, io: CliIo = processIo()): Promise<number> {
  const [sub, ...rest] = argv;
  switch (sub) {
    case "add":
      return runCommand("repo add", io, () => repoAdd(rest, env, io));
    case "show":
      return runCommand("repo show", io, () => repoShow(rest, env, io));
    case "list":
    case "ls":
      return runCommand("repo list", io, () => repoList(rest, env, io));
    case "rm":
    case "remove":
      return runCommand("repo rm", io, () => repoRemove(rest, env, io));
    case "--help":
    case "-h":
    case "help":
      io.stdout.write(REPO_USAGE);
      return EXIT.ok;
    default:
      io.stderr.write(
        `petrel repo: ${sub === undefined ? "missing subcommand" : `unknown subcommand ${JSON.stringify(sub)}`}; ${seeHelp(REPO_USAGE)}\n`,
      );
      return EXIT.usage;
  }
}

/** The registry key of a `<key-or-url>` argument. */
export function keyOf(arg: string): RepoKey {
  const lower = arg.trim().toLowerCase();
  if (isRepoKey(lower)) return lower;
  const key = repoKeyFromUrl(arg.trim());
  if (key === undefined) {
    throw new CliError(
      "usage",
      `${JSON.stringify(arg)} is neither <host>/<owner>/<name> nor a repository URL like https://git.example.test/acme/widgets`,
    );
  }
  return key;
}

async function withStore<T>(env: Env, io: CliIo, quiet: boolean | undefined, fn: (store: RepoStore) => Promise<T>): Promise<T> {
  const config = cliConfig(env);
  const store = openRepoStore(config, progressTo(io, quiet));
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

function pairs(values: string[] | undefined, flag: string, what: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const raw of values ?? []) {
    const eq = raw.indexOf("=");
    if (eq <= 0 || eq === raw.length - 1) throw new CliError("usage", `${flag} wants name=value, got ${JSON.stringify(raw)}`);
    const name = raw.slice(0, eq);
    if (!/^[A-Za-z0-9._-]+$/.test(name)) {
      throw new CliError("usage", `${flag}: ${what} names are letters, digits, '.', '_' and '-', got ${JSON.stringify(name)}`);
    }
    out[name] = raw.slice(eq + 1);
  }
  return out;
}

async function readSecretFile(path: string, what: string, io: CliIo): Promise<string> {
  try {
    return path === "-" ? await readAllText(io.stdin) : await readFile(path, "utf8");
  } catch (err) {
    throw new CliError("bad_request", `cannot read ${what} from ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

async function buildSecrets(specs: string[] | undefined, io: CliIo): Promise<Record<string, string> | undefined> {
  if (specs === undefined || specs.length === 0) return undefined;
  const out: Record<string, string> = {};
  let stdinUsed = false;
  for (const spec of specs) {
    const eq = spec.indexOf("=");
    const name = eq > 0 ? spec.slice(0, eq) : "";
    const source = eq > 0 ? spec.slice(eq + 1) : "";
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name) || !source.startsWith("@") || source.length < 2) {
      // Never echo the argument: it may be a secret typed by mistake.
      throw new CliError(
        "usage",
        `--secret wants NAME=@file (or NAME=@- for stdin); secret values are never taken from the command line, where they would land in the shell history and ps${name ? ` (secret ${name})` : ""}`,
      );
    }
    const path = source.slice(1);
    if (path === "-") {
      if (stdinUsed) throw new CliError("usage", "only one --secret can read stdin (@-)");
      stdinUsed = true;
    }
    let value = await readSecretFile(path, `secret ${name}`, io);
    if (name === "deploy_key") {
      // OpenSSH refuses a private key without its final newline.
      if (!value.endsWith("\n")) value += "\n";
    } else {
      value = value.replace(/\r?\n$/, "");
    }
    out[name] = value;
  }
  return out;
}

function randomSecret(): string {
  return randomBytes(32).toString("hex");
}

async function repoAdd(argv: string[], env: Env, io: CliIo): Promise<number> {
  const parsed = parseCommandArgs(
    argv,
    {
      ...COMMON,
      "secret-from-file": { type: "string" },
      token: { type: "boolean" },
      trusted: { type: "string" },
      flavor: { type: "string", multiple: true },
      cache: { type: "string", multiple: true },
      "gitea-url": { type: "string" },
      "gitea-token-from-file": { type: "string" },
      logs: { type: "string" },
      secret: { type: "string", multiple: true },
      force: { type: "boolean" },
    },
    ADD_USAGE,
    io,
  );
  if (parsed === undefined) return EXIT.ok;
  const { values, positionals } = parsed;
  expectPositionals(positionals, 1, ADD_USAGE);
  const key = keyOf(positionals[0] as string);
  if ((values["gitea-url"] === undefined) !== (values["gitea-token-from-file"] === undefined)) {
    throw new CliError("usage", "--gitea-url and --gitea-token-from-file go together");
  }
  if (values.logs !== undefined && values.logs !== "public" && values.logs !== "token") {
    throw new CliError("usage", `--logs is public or token, got ${JSON.stringify(values.logs)}`);
  }

  const secretFile = values["secret-from-file"];
  const hookSecret = secretFile === undefined ? randomSecret() : (await readSecretFile(secretFile, "the webhook secret", io)).trim();
  if (hookSecret === "") throw new CliError("bad_request", `${secretFile} is empty; write the webhook secret into it`);
  const hookToken = values.token ? randomSecret() : undefined;

  const config: z.input<typeof RepoConfig> = { hook: { secret: hookSecret, ...(hookToken === undefined ? {} : { token: hookToken }) } };
  const giteaFile = values["gitea-token-from-file"];
  if (values["gitea-url"] !== undefined && giteaFile !== undefined) {
    const token = (await readSecretFile(giteaFile, "the Gitea token", io)).trim();
    config.gitea = { url: values["gitea-url"].replace(/\/+$/, ""), token };
  }
  if (values.trusted !== undefined) {
    config.trusted = {
      senders: values.trusted
        .split(",")
        .map((s) => s.trim())
        .filter(Boolean),
    };
  }
  const flavors = pairs(values.flavor, "--flavor", "flavor");
  if (Object.keys(flavors).length > 0) {
    config.flavors = Object.fromEntries(Object.entries(flavors).map(([name, builder]) => [name, { builder }]));
  }
  const caches = pairs(values.cache, "--cache", "cache");
  if (Object.keys(caches).length > 0) config.caches = caches;
  if (values.logs !== undefined) config.logs = values.logs as "public" | "token";
  const checked = RepoConfig.safeParse(config);
  if (!checked.success) throw new CliError("usage", `the entry would be invalid: ${describeIssues(checked.error)}`);
  const secrets = await buildSecrets(values.secret, io);

  const settings = cliConfig(env);
  return withStore(env, io, values.quiet, async (store) => {
    const existing = await store.get(key);
    if (existing !== undefined && !values.force) {
      throw new CliError(
        "bad_request",
        `${key} is already registered (${store.location(key)}); add --force to replace it (with a new webhook secret unless --secret-from-file is given)`,
      );
    }
    await store.put(key, config, secrets);

    const hook = `${settings.publicUrl}/hook`;
    const withToken = (url: string) => (hookToken === undefined ? url : `${url}${url.includes("?") ? "&" : "?"}token=${hookToken}`);
    const otherFlavors = Object.keys(flavors).filter((f) => f !== "default");
    const flavorUrls = Object.fromEntries(otherFlavors.map((f) => [f, withToken(`${hook}?flavor=${encodeURIComponent(f)}`)]));
    const url = withToken(hook);
    if (values.json) {
      const webhook: Record<string, unknown> = { url, flavors: flavorUrls };
      if (secretFile === undefined) webhook.secret = hookSecret;
      if (hookToken !== undefined) webhook.token = hookToken;
      io.stdout.write(
        `${JSON.stringify({ key, store: store.kind, location: store.location(key), replaced: existing !== undefined, webhook })}\n`,
      );
      return EXIT.ok;
    }
    const lines = [
      `${existing === undefined ? "Registered" : "Replaced"} ${key} (${store.location(key)}).`,
      "",
      "Add a webhook in Gitea or Forgejo (repository settings → Webhooks → Add webhook → Gitea):",
      `  Target URL    ${url}`,
      "  HTTP method   POST",
      "  Content type  application/json",
      `  Secret        ${secretFile === undefined ? hookSecret : `the content of ${secretFile}`}`,
      "  Trigger on    Push events, Pull request events",
    ];
    for (const [name, u] of Object.entries(flavorUrls)) lines.push(`  Flavor ${name}: a second webhook with Target URL ${u}`);
    if (!Object.keys(flavors).includes("default") && otherFlavors.length > 0) {
      lines.push("  (no flavor is named default: a webhook without ?flavor= is refused)");
    }
    lines.push(
      "",
      secretFile === undefined || hookToken !== undefined
        ? `This is the only time the ${[secretFile === undefined ? "secret" : "", hookToken === undefined ? "" : "token"].filter(Boolean).join(" and the ")} ${secretFile === undefined && hookToken !== undefined ? "are" : "is"} shown; \`petrel repo show ${key}\` masks ${secretFile === undefined && hookToken !== undefined ? "them" : "it"}.`
        : `\`petrel repo show ${key}\` shows the entry with its secrets masked.`,
    );
    if (existing !== undefined && secretFile === undefined) lines.push("The webhook secret changed: update it in Gitea too.");
    io.stdout.write(`${lines.join("\n")}\n`);
    return EXIT.ok;
  });
}

/** A copy of an entry whose secrets and tokens show only their first characters and length. */
export function maskedEntry(repo: StoredRepo): Record<string, unknown> {
  const out: Record<string, unknown> = structuredClone(repo.raw);
  const hook = out.hook;
  if (typeof hook === "object" && hook !== null) {
    const h = hook as Record<string, unknown>;
    for (const field of ["secret", "token"]) if (typeof h[field] === "string") h[field] = maskSecret(h[field] as string);
  }
  const gitea = out.gitea;
  if (typeof gitea === "object" && gitea !== null && typeof (gitea as Record<string, unknown>).token === "string") {
    (gitea as Record<string, unknown>).token = maskSecret((gitea as Record<string, string>).token as string);
  }
  if (repo.secrets !== undefined) {
    out.secrets = Object.fromEntries(Object.entries(repo.secrets).map(([k, v]) => [k, maskSecret(v)]));
  }
  return out;
}

async function repoShow(argv: string[], env: Env, io: CliIo): Promise<number> {
  const parsed = parseCommandArgs(argv, COMMON, SHOW_USAGE, io);
  if (parsed === undefined) return EXIT.ok;
  expectPositionals(parsed.positionals, 1, SHOW_USAGE);
  const key = keyOf(parsed.positionals[0] as string);
  return withStore(env, io, parsed.values.quiet, async (store) => {
    const repo = await store.get(key);
    if (repo === undefined) throw new CliError("not_found", `${key} is not registered in ${store.where}`);
    const masked = maskedEntry(repo);
    if (parsed.values.json) {
      const out: Record<string, unknown> = { key, location: store.location(key), entry: masked };
      if (repo.problem !== undefined) out.problem = repo.problem;
      if (repo.secretsProblem !== undefined) out.secrets_problem = repo.secretsProblem;
      io.stdout.write(`${JSON.stringify(out)}\n`);
    } else {
      io.stdout.write(`# ${key} (${store.location(key)})\n`);
      if (repo.problem !== undefined) io.stdout.write(`# INVALID: ${repo.problem}\n`);
      if (repo.secretsProblem !== undefined) io.stdout.write(`# secrets: ${repo.secretsProblem}\n`);
      io.stdout.write(yaml.dump(masked, { lineWidth: -1, noRefs: true }));
    }
    return repo.problem === undefined ? EXIT.ok : EXIT.refused;
  });
}

function summary(repo: StoredRepo): string[] {
  const raw = repo.raw as {
    hook?: { secret?: unknown; token?: unknown };
    trusted?: { senders?: unknown };
    flavors?: Record<string, { builder?: unknown }>;
    logs?: unknown;
  };
  const auth = [raw.hook?.secret ? "secret" : "", raw.hook?.token ? "token" : ""].filter(Boolean).join("+") || "none";
  const senders = Array.isArray(raw.trusted?.senders) ? (raw.trusted.senders as unknown[]).map(String).join(",") : "";
  const flavors =
    raw.flavors && typeof raw.flavors === "object"
      ? Object.entries(raw.flavors)
          .map(([n, f]) => `${n}=${String(f?.builder)}`)
          .join(",")
      : "default";
  const secrets = Object.keys(repo.secrets ?? {}).join(",");
  return [
    repo.key,
    repo.problem === undefined ? auth : "INVALID",
    senders || "-",
    flavors,
    typeof raw.logs === "string" ? raw.logs : "-",
    secrets || "-",
  ];
}

async function repoList(argv: string[], env: Env, io: CliIo): Promise<number> {
  const parsed = parseCommandArgs(argv, COMMON, LIST_USAGE, io);
  if (parsed === undefined) return EXIT.ok;
  expectPositionals(parsed.positionals, 0, LIST_USAGE);
  return withStore(env, io, parsed.values.quiet, async (store) => {
    const repos = await store.list();
    if (parsed.values.json) {
      io.stdout.write(
        `${JSON.stringify({
          repos: repos.map((r) => ({ key: r.key, entry: maskedEntry(r), ...(r.problem === undefined ? {} : { problem: r.problem }) })),
        })}\n`,
      );
      return EXIT.ok;
    }
    if (repos.length === 0) {
      io.stderr.write(`no repositories in ${store.where}; add one with \`petrel repo add <html-url>\`\n`);
      return EXIT.ok;
    }
    io.stdout.write(formatTable(["KEY", "AUTH", "TRUSTED", "FLAVORS", "LOGS", "SECRETS"], repos.map(summary)));
    for (const r of repos) if (r.problem !== undefined) io.stderr.write(`${r.key}: invalid: ${r.problem}\n`);
    return EXIT.ok;
  });
}

async function repoRemove(argv: string[], env: Env, io: CliIo): Promise<number> {
  const parsed = parseCommandArgs(argv, COMMON, RM_USAGE, io);
  if (parsed === undefined) return EXIT.ok;
  expectPositionals(parsed.positionals, 1, RM_USAGE);
  const key = keyOf(parsed.positionals[0] as string);
  return withStore(env, io, parsed.values.quiet, async (store) => {
    // Looked up first, so removing an unknown key writes nothing: the file stays byte for byte, Consul untouched.
    const removed = (await store.get(key)) !== undefined && (await store.remove(key));
    if (parsed.values.json) io.stdout.write(`${JSON.stringify({ key, removed })}\n`);
    if (!removed) throw new CliError("not_found", `${key} is not registered in ${store.where}; nothing was changed`);
    if (!parsed.values.json) io.stdout.write(`removed ${key} from ${store.where}\n`);
    return EXIT.ok;
  });
}
