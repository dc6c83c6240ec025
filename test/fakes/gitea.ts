import type { IncomingMessage, ServerResponse } from "node:http";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { assertExpected } from "./strict.js";

/** One request the fake received, for assertions on what a client sent. */
export interface GiteaFakeRequest {
  method: string;
  /** Path and query, as sent. */
  path: string;
  authorization?: string;
  body: string;
}

/** A commit status as the fake stored it; `status` holds the state, as in Gitea's API objects. */
export interface GiteaFakeStatus {
  id: number;
  owner: string;
  repo: string;
  sha: string;
  status: string;
  context: string;
  description: string;
  target_url: string;
}

export interface GiteaFakeOptions {
  /** The token with write access to every repository. */
  token: string;
  /** Tokens that authenticate but lack `write:repository`: creating a status answers 403. */
  readOnlyTokens?: string[];
  /** What `GET /api/v1/version` reports. */
  version?: string;
  /** Older Gitea answered a combined status with no statuses as 200 with an empty body. */
  emptyCombinedBody?: boolean;
}

/** Gitea's commit-status and version endpoints, as go-gitea/gitea routers/api/v1/repo/status.go and models/git/commit_status.go define them. */
export interface GiteaFake {
  url: string;
  requests: GiteaFakeRequest[];
  /** Requests the fake does not model (answered 501); `close()` rejects while this is not empty. */
  unexpected: string[];
  statuses: GiteaFakeStatus[];
  /** Answers the next `count` requests (any route) with `status` and a JSON `{"message","url"}` body. */
  failNext(count: number, status: number): void;
  /** The next `count` status creations answer 404, as for a commit Gitea cannot read yet. */
  unknownShaFor(count: number): void;
  close(): Promise<void>;
}

const STATES = new Set(["pending", "success", "error", "failure", "warning"]);
const SHA = /^[0-9a-f]{7,64}$/i;

/** Starts the fake on 127.0.0.1 with an ephemeral port. */
export async function startGiteaFake(options: GiteaFakeOptions): Promise<GiteaFake> {
  const requests: GiteaFakeRequest[] = [];
  const unexpected: string[] = [];
  const statuses: GiteaFakeStatus[] = [];
  let failures: { count: number; status: number } = { count: 0, status: 500 };
  let unknownSha = 0;
  let nextId = 1;
  let url = "";

  function send(res: ServerResponse, status: number, body?: unknown): void {
    const text = body === undefined ? "" : JSON.stringify(body);
    res.writeHead(status, {
      "content-type": "application/json;charset=utf-8",
      "content-length": Buffer.byteLength(text),
    });
    res.end(text);
  }

  function apiError(res: ServerResponse, status: number, message: string): void {
    send(res, status, { message, url: `${url}/api/swagger` });
  }

  /** The token of an Authorization header the way Gitea reads it: `token <t>` (lower case) or `Bearer <t>`. */
  function tokenOf(header: string | undefined): string | undefined {
    if (header === undefined) return undefined;
    const fields = header.trim().split(/\s+/);
    if (fields.length !== 2) return undefined;
    const [scheme = "", value] = fields;
    return scheme === "token" || scheme.toLowerCase() === "bearer" ? value : undefined;
  }

  /** "write", "read" or undefined (not signed in), as Gitea's reqToken and reqRepoWriter see the caller. */
  function access(req: IncomingMessage): "write" | "read" | undefined {
    const token = tokenOf(req.headers.authorization);
    if (token === undefined) return undefined;
    if (token === options.token) return "write";
    return options.readOnlyTokens?.includes(token) ? "read" : undefined;
  }

  function apiStatus(s: GiteaFakeStatus) {
    return {
      id: s.id,
      status: s.status,
      target_url: s.target_url,
      description: s.description,
      url: `${url}/api/v1/repos/${s.owner}/${s.repo}/statuses/${s.sha}`,
      context: s.context,
      creator: { id: 1, login: "petrel-bot", username: "petrel-bot" },
      created_at: "2025-03-14T09:21:10Z",
      updated_at: "2025-03-14T09:21:10Z",
    };
  }

  function createStatus(req: IncomingMessage, res: ServerResponse, owner: string, repo: string, sha: string, body: string) {
    const who = access(req);
    if (who === undefined) return apiError(res, 401, "token is required");
    if (who !== "write") return apiError(res, 403, "token lacks the write:repository scope");
    if (unknownSha > 0 || !SHA.test(sha)) {
      if (unknownSha > 0) unknownSha--;
      return apiError(res, 404, "commit not found");
    }
    let input: Record<string, unknown>;
    try {
      input = JSON.parse(body) as Record<string, unknown>;
    } catch {
      return apiError(res, 422, "body is not JSON");
    }
    const state = input.state;
    if (typeof state !== "string" || !STATES.has(state)) return apiError(res, 422, "state is not a valid status");
    // Gitea trims all three text fields before it stores them (models/git/commit_status.go).
    const text = (v: unknown) => (typeof v === "string" ? v.trim() : "");
    const status: GiteaFakeStatus = {
      id: nextId++,
      owner,
      repo,
      sha: sha.toLowerCase(),
      status: state,
      context: text(input.context),
      description: text(input.description),
      target_url: text(input.target_url),
    };
    statuses.push(status);
    send(res, 201, apiStatus(status));
  }

  function combined(res: ServerResponse, owner: string, repo: string, ref: string) {
    const latest = new Map<string, GiteaFakeStatus>();
    for (const s of statuses) {
      if (s.owner === owner && s.repo === repo && s.sha.startsWith(ref.toLowerCase())) latest.set(s.context, s);
    }
    const rows = [...latest.values()].sort((a, b) => b.id - a.id);
    if (rows.length === 0 && options.emptyCombinedBody) return send(res, 200);
    // Newer Gitea combines GitHub-style: any error/failure fails, all success/warning succeed, else pending.
    const states = rows.map((r) => r.status);
    const state =
      rows.length === 0
        ? ""
        : states.some((s) => s === "error" || s === "failure")
          ? "failure"
          : states.every((s) => s === "success" || s === "warning")
            ? "success"
            : "pending";
    send(res, 200, {
      state,
      sha: rows[0]?.sha ?? ref,
      total_count: rows.length,
      statuses: rows.map(apiStatus),
      commit_url: `${url}/api/v1/repos/${owner}/${repo}/git/commits/${ref}`,
      url: `${url}/api/v1/repos/${owner}/${repo}/commits/${ref}/status`,
    });
  }

  function route(req: IncomingMessage, res: ServerResponse, body: string): void {
    const parsed = new URL(req.url ?? "/", "http://fake");
    const path = parsed.pathname;
    // No modelled route reads a query parameter: petrel authenticates with the header, and neither `page`/`limit`
    // nor `access_token` (https://github.com/go-gitea/gitea/blob/main/services/auth/oauth2.go) is modelled.
    const params = [...new Set(parsed.searchParams.keys())];
    if (params.length > 0) {
      unexpected.push(`${req.method ?? ""} ${path}?${params.join("&")}`);
      return apiError(res, 501, `gitea fake: ${params.join(", ")} on ${path} is not modelled`);
    }
    if (failures.count > 0) {
      failures = { ...failures, count: failures.count - 1 };
      return apiError(res, failures.status, "fake failure");
    }
    if (req.method === "GET" && path === "/api/v1/version") return send(res, 200, { version: options.version ?? "1.22.3" });
    const parts = path.split("/").slice(1).map(decodeURIComponent);
    if (parts[0] !== "api" || parts[1] !== "v1" || parts[2] !== "repos") return notModelled(req, res, path);
    const [, , , owner = "", repo = "", kind, a, b] = parts;
    if (req.method === "POST" && kind === "statuses" && a && parts.length === 7) {
      return createStatus(req, res, owner, repo, a, body);
    }
    if (req.method === "GET" && kind === "commits" && a && b === "status" && parts.length === 8) {
      return combined(res, owner, repo, a);
    }
    return notModelled(req, res, path);
  }

  function notModelled(req: IncomingMessage, res: ServerResponse, path: string): void {
    unexpected.push(`${req.method ?? ""} ${path}`);
    apiError(res, 501, `gitea fake: ${req.method ?? ""} ${path} is not modelled`);
  }

  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks).toString("utf8");
      requests.push({
        method: req.method ?? "",
        path: req.url ?? "",
        ...(req.headers.authorization === undefined ? {} : { authorization: req.headers.authorization }),
        body,
      });
      try {
        route(req, res, body);
      } catch (err) {
        apiError(res, 500, err instanceof Error ? err.message : String(err));
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  return {
    url,
    requests,
    unexpected,
    statuses,
    failNext(count, status) {
      failures = { count, status };
    },
    unknownShaFor(count) {
      unknownSha = count;
    },
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      assertExpected("gitea", unexpected);
    },
  };
}
