import { randomUUID } from "node:crypto";
import { readFile } from "node:fs/promises";
import { sign } from "../gitea/signature.js";
import { repoKeyFromUrl } from "../registry/schema.js";
import type { CliIo, Env } from "./ops.js";
import {
  CliError,
  codeForStatus,
  createPetrelApi,
  EXIT,
  expectPositionals,
  parseCommandArgs,
  petrelUrl,
  processIo,
  progressTo,
  runCommand,
} from "./ops.js";
import { cliConfig, openRepoStore } from "./repo-store.js";

const USAGE = `usage: petrel replay <delivery.json> [--event E] [--flavor F] [--json]

Sends a saved webhook delivery to petrel's /hook the way Gitea redelivers it: signed with the repository's
hook secret (read like \`petrel repo show\`), with ?token= when the entry uses a token, and a new
X-Gitea-Delivery id. The file is either the payload itself (sent byte for byte) or
{"headers": {...}, "body": <object or string>} (the event is taken from the saved X-Gitea-Event headers).
  --event E      push, pull_request, ... (default: the saved headers, else inferred from the payload)
  --flavor F     adds ?flavor=F
  --url U        petrel's address (default PETREL_URL, else http://<PETREL_LISTEN>)
  --json         {"status", "body"} of petrel's answer
  -q, --quiet    no progress lines on stderr
Exit code 0 when petrel answers 2xx.
`;

/** What `replay` sends: the bytes, and the event names for X-Gitea-Event / X-Gitea-Event-Type. */
export interface SavedDelivery {
  body: Buffer;
  payload: unknown;
  event: string;
  eventType: string;
}

// Gitea's fine-grained X-Gitea-Event-Type of pull request actions (https://github.com/go-gitea/gitea/blob/main/modules/webhook/type.go).
const PR_EVENT_TYPES: Record<string, string> = {
  synchronized: "pull_request_sync",
  assigned: "pull_request_assign",
  unassigned: "pull_request_assign",
  label_updated: "pull_request_label",
  label_cleared: "pull_request_label",
  milestoned: "pull_request_milestone",
  demilestoned: "pull_request_milestone",
  review_requested: "pull_request_review_request",
  review_request_removed: "pull_request_review_request",
};

function headerOf(headers: Record<string, unknown>, names: readonly string[]): string | undefined {
  for (const name of names) {
    for (const [k, v] of Object.entries(headers)) {
      const value = Array.isArray(v) ? v[0] : v;
      if (k.toLowerCase() === name.toLowerCase() && typeof value === "string" && value !== "") return value;
    }
  }
  return undefined;
}

/** Reads a saved delivery: a bare payload, or `{headers, body}`; `event` overrides what the file says. */
export function parseDeliveryFile(file: string, bytes: Buffer, event: string | undefined): SavedDelivery {
  let json: unknown;
  try {
    json = JSON.parse(bytes.toString("utf8"));
  } catch (err) {
    throw new CliError("bad_request", `${file} is not JSON: ${(err as Error).message}`);
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) throw new CliError("bad_request", `${file} is not a JSON object`);
  const top = json as Record<string, unknown>;
  let body = bytes;
  let payload: unknown = json;
  let saved: Record<string, unknown> = {};
  const headers = top.headers;
  if ("body" in top && typeof headers === "object" && headers !== null && !Array.isArray(headers)) {
    saved = headers as Record<string, unknown>;
    if (typeof top.body === "string") {
      body = Buffer.from(top.body, "utf8");
      try {
        payload = JSON.parse(top.body);
      } catch (err) {
        throw new CliError("bad_request", `${file}: "body" is a string that is not JSON: ${(err as Error).message}`);
      }
    } else {
      payload = top.body;
      // Gitea sends its payloads indented by two spaces; the signature covers exactly what is sent.
      body = Buffer.from(JSON.stringify(top.body, null, 2), "utf8");
    }
  }
  const p = (typeof payload === "object" && payload !== null ? payload : {}) as Record<string, unknown>;
  const name = event ?? headerOf(saved, ["X-Gitea-Event", "X-Forgejo-Event", "X-GitHub-Event", "X-Gogs-Event"]) ?? inferEvent(p);
  if (name === undefined) {
    throw new CliError("usage", `cannot tell which event ${file} is (no pull_request, no ref/after); pass --event push|pull_request|...`);
  }
  const savedType =
    event === undefined ? headerOf(saved, ["X-Gitea-Event-Type", "X-Forgejo-Event-Type", "X-GitHub-Event-Type"]) : undefined;
  const action = typeof p.action === "string" ? p.action : "";
  const eventType = savedType ?? (name === "pull_request" ? (PR_EVENT_TYPES[action] ?? "pull_request") : name);
  return { body, payload, event: name, eventType };
}

function inferEvent(p: Record<string, unknown>): string | undefined {
  if ("pull_request" in p) return "pull_request";
  if ("ref" in p && "after" in p) return "push";
  return undefined;
}

/** `petrel replay <delivery.json>`: sign a saved delivery with the repository's secret and POST it to /hook. */
export async function replayCommand(argv: string[], env: Env, io: CliIo = processIo()): Promise<number> {
  return runCommand("replay", io, async () => {
    const parsed = parseCommandArgs(
      argv,
      {
        event: { type: "string" },
        flavor: { type: "string" },
        url: { type: "string" },
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
    let bytes: Buffer;
    try {
      bytes = await readFile(file);
    } catch (err) {
      throw new CliError("bad_request", `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
    const delivery = parseDeliveryFile(file, bytes, values.event);
    const repository = (delivery.payload as { repository?: { html_url?: unknown } }).repository;
    const htmlUrl = typeof repository?.html_url === "string" ? repository.html_url : undefined;
    if (htmlUrl === undefined) throw new CliError("bad_request", `${file} names no repository (repository.html_url is missing)`);
    const key = repoKeyFromUrl(htmlUrl);
    if (key === undefined) throw new CliError("bad_request", `repository.html_url ${JSON.stringify(htmlUrl)} is not a repository URL`);

    const config = cliConfig(env);
    const store = openRepoStore(config, progress);
    let hook: { secret?: unknown; token?: unknown } | undefined;
    try {
      const repo = await store.get(key);
      if (repo === undefined) throw new CliError("not_found", `${key} is not registered in ${store.where}; petrel would answer 404`);
      hook = (repo.config?.hook ?? repo.raw.hook) as typeof hook;
    } finally {
      await store.close();
    }
    const secret = typeof hook?.secret === "string" && hook.secret !== "" ? hook.secret : undefined;
    const token = typeof hook?.token === "string" && hook.token !== "" ? hook.token : undefined;
    if (secret === undefined && token === undefined)
      throw new CliError("bad_request", `${key} has neither hook.secret nor hook.token; petrel refuses its deliveries`);

    const headers: Record<string, string> = {
      "content-type": "application/json",
      "x-gitea-event": delivery.event,
      "x-gitea-event-type": delivery.eventType,
      "x-gitea-delivery": randomUUID(),
    };
    if (secret !== undefined) {
      const signature = sign(secret, delivery.body);
      headers["x-gitea-signature"] = signature;
      headers["x-hub-signature-256"] = `sha256=${signature}`;
    }
    const query = new URLSearchParams();
    const shownQuery = new URLSearchParams();
    if (values.flavor !== undefined) {
      query.set("flavor", values.flavor);
      shownQuery.set("flavor", values.flavor);
    }
    if (token !== undefined) {
      query.set("token", token);
      shownQuery.set("token", "…");
    }
    const path = `/hook${query.size ? `?${query}` : ""}`;
    const shown = `/hook${shownQuery.size ? `?${shownQuery}` : ""}`;
    progress(
      `replaying ${delivery.event} (${delivery.eventType}) for ${key} as delivery ${headers["x-gitea-delivery"]}${secret === undefined ? "" : ", signed with its hook secret"}`,
    );
    const api = createPetrelApi({ url: petrelUrl(values.url, env), progress });
    try {
      const answer = await api.raw("POST", path, headers, delivery.body, shown);
      const ok = answer.status >= 200 && answer.status < 300;
      if (values.json) {
        let body: unknown = answer.text;
        try {
          body = JSON.parse(answer.text);
        } catch {
          // Not JSON (a proxy's page): pass the text on.
        }
        io.stdout.write(`${JSON.stringify({ status: answer.status, body })}\n`);
      } else {
        io.stdout.write(`${answer.status}\n${answer.text.trimEnd()}\n`);
      }
      if (!ok) throw new CliError(codeForStatus(answer.status), `petrel at ${api.url} answered ${answer.status} to POST ${shown}`);
      return EXIT.ok;
    } finally {
      await api.close();
    }
  });
}
