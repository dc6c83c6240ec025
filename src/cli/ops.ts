import type { Readable, Writable } from "node:stream";
import type { Dispatcher } from "undici";
import { Agent } from "undici";
import { AppError, type ErrorCode, UpstreamError } from "../errors.js";
import { openStream, request } from "../http/request.js";

/**
 * Exit codes of the operator commands (docs/cli.md). `logs -f` and `dispatch --follow` also exit with a failed
 * build's own exit code.
 */
export const EXIT = {
  ok: 0,
  /** A build failed without a known exit code, or petrel's CLI hit a bug. */
  failure: 1,
  /** The request or the input was refused: invalid arguments' values, a 4xx answer, a check that failed. */
  refused: 2,
  /** The build ended in error or was cancelled. */
  buildError: 3,
  /** The build, repository or key does not exist (or the build is not petrel's). */
  notFound: 4,
  /** petrel, Nomad or Consul could not be reached or answered 5xx. */
  unreachable: 5,
  /** A token is missing or wrong (401/403). */
  unauthorized: 6,
  /** The build has not finished (only `logs` without `-f`). */
  unfinished: 7,
  usage: 64,
  /** Our stdout was closed by its reader (`| head`), as SIGPIPE would end a C program: 128 + 13. */
  outputClosed: 141,
} as const;
export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

/** Where a command reads and writes; tests pass their own streams. */
export interface CliIo {
  stdout: Writable;
  stderr: Writable;
  stdin: Readable;
}

/** The process's own streams. */
export function processIo(): CliIo {
  return { stdout: process.stdout, stderr: process.stderr, stdin: process.stdin };
}

/** The exit code of each error code: one table, so every command fails the same way for the same cause. */
const EXIT_OF_CODE: Record<ErrorCode, ExitCode> = {
  bad_request: EXIT.refused,
  malformed_body: EXIT.refused,
  repository_mismatch: EXIT.refused,
  commit_not_on_ref: EXIT.refused,
  entry_invalid: EXIT.refused,
  aborted: EXIT.refused,
  usage: EXIT.usage,
  unauthorized: EXIT.unauthorized,
  forbidden: EXIT.unauthorized,
  not_registered: EXIT.notFound,
  not_found: EXIT.notFound,
  already_finished: EXIT.refused,
  gone: EXIT.notFound,
  payload_too_large: EXIT.refused,
  unsupported_media_type: EXIT.refused,
  output_closed: EXIT.outputClosed,
  config_invalid: EXIT.refused,
  internal: EXIT.failure,
  upstream_error: EXIT.refused,
  nomad_unavailable: EXIT.unreachable,
  consul_unavailable: EXIT.unreachable,
  gitea_unavailable: EXIT.unreachable,
  unreachable: EXIT.unreachable,
  insufficient_storage: EXIT.failure,
};

/** The exit code of an error; an upstream's 4xx is told apart by its status (401/403, 404, others). */
export function exitOf(err: AppError): number {
  return EXIT_OF_CODE[err instanceof UpstreamError ? codeForUpstream(err) : err.code];
}

/** The code that says what a failed Nomad or Consul call means to an operator. */
export function codeForUpstream(err: UpstreamError): ErrorCode {
  if (err.unavailable) return err.code;
  if (err.upstreamStatus === 401 || err.upstreamStatus === 403) return "unauthorized";
  if (err.upstreamStatus === 404) return "not_found";
  return err.code;
}

/** The code of an HTTP status petrel answered with (its body's code is not trusted: a proxy may answer). */
export function codeForStatus(status: number): ErrorCode {
  if (status === 401 || status === 403) return "unauthorized";
  if (status === 404 || status === 410) return "not_found";
  if (status >= 500) return "unreachable";
  return "bad_request";
}

/** A command's failure: a one-line message for stderr; the exit code scripts see follows from its code. */
export class CliError extends AppError {
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = "CliError";
  }

  get exit(): number {
    return exitOf(this);
  }
}

export type Env = Readonly<Record<string, string | undefined>>;

// Argument handling lives in args.ts, one place for every command; re-exported for the commands that import it here.
export { expectPositionals, parseCommandArgs } from "./args.js";

/** Writes progress to stderr unless `--quiet`. */
export type Progress = (line: string) => void;

export function progressTo(io: CliIo, quiet: boolean | undefined): Progress {
  return quiet ? () => undefined : (line) => io.stderr.write(`petrel: ${line}\n`);
}

/**
 * Runs a command body and turns what it throws into a message on stderr and an exit code, so every command
 * fails the same way: `petrel <command>: <what failed>` on one line.
 */
export async function runCommand(name: string, io: CliIo, body: () => Promise<number>): Promise<number> {
  try {
    return await body();
  } catch (err) {
    if (err instanceof AppError) {
      if (err.code !== "output_closed") io.stderr.write(`petrel ${name}: ${err.message}\n`);
      return exitOf(err);
    }
    io.stderr.write(`petrel ${name}: unexpected error: ${err instanceof Error ? err.message : String(err)}\n`);
    return EXIT.failure;
  }
}

/** petrel's address for the API commands: `--url`, else PETREL_URL, else `http://<PETREL_LISTEN>`. */
export function petrelUrl(flag: string | undefined, env: Env): string {
  const raw = flag?.trim() || env.PETREL_URL?.trim() || listenUrl(env.PETREL_LISTEN?.trim() || "127.0.0.1:8080");
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(raw) ? raw : `http://${raw}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch {
    throw new CliError("usage", `${JSON.stringify(raw)} is not petrel's address; use --url http://host:port`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new CliError("usage", `petrel's address must be http:// or https://, got ${url.protocol}`);
  }
  return withScheme.replace(/\/+$/, "");
}

function listenUrl(listen: string): string {
  // A wildcard listen address is where petrel accepts connections, not where to send them.
  const m = /^(?:\[([^\]]*)\]|([^:]*)):(\d+)$/.exec(listen);
  if (!m) return `http://${listen}`;
  const host = m[1] ?? m[2] ?? "";
  if (host === "" || host === "0.0.0.0") return `http://127.0.0.1:${m[3]}`;
  if (host === "::") return `http://[::1]:${m[3]}`;
  return `http://${m[1] === undefined ? host : `[${host}]`}:${m[3]}`;
}

/** One answer from petrel's API: status, and the body as text. */
export interface ApiAnswer {
  status: number;
  text: string;
}

/** petrel's HTTP API as the operator commands use it; every failure is a CliError naming the address. */
export interface PetrelApi {
  readonly url: string;
  readonly hasToken: boolean;
  /** A JSON call; throws CliError for network errors and non-2xx answers (with petrel's error message). */
  json<T = unknown>(method: "GET" | "POST" | "DELETE", path: string, body?: unknown): Promise<{ status: number; body: T }>;
  /** A raw call that never throws for a status, for replay; `shown` is the path messages print (no token). */
  raw(method: "POST", path: string, headers: Record<string, string>, body: Buffer, shown?: string): Promise<ApiAnswer>;
  /** Opens a streamed GET; resolves once the headers arrived; throws CliError for non-2xx. */
  stream(path: string, signal?: AbortSignal): Promise<Dispatcher.ResponseData>;
  close(): Promise<void>;
}

export interface PetrelApiOptions {
  url: string;
  token?: string | undefined;
  progress: Progress;
  dispatcher?: Dispatcher;
}

/** A client of petrel's own API for the operator commands. */
export function createPetrelApi(opts: PetrelApiOptions): PetrelApi {
  const owned = opts.dispatcher === undefined ? new Agent({ connections: 4 }) : undefined;
  const dispatcher = opts.dispatcher ?? (owned as Agent);
  const headers = (extra: Record<string, string> = {}): Record<string, string> => ({
    accept: "application/json",
    "user-agent": "petrel-cli",
    ...(opts.token ? { authorization: `Bearer ${opts.token}` } : {}),
    ...extra,
  });

  const fail = (method: string, path: string, err: unknown): CliError => {
    const code = (err as { code?: unknown }).code;
    const what = err instanceof Error ? err.message : String(err);
    const detail = typeof code === "string" && !what.includes(code) ? `${code}: ${what}` : what;
    return new CliError(
      "unreachable",
      `cannot reach petrel at ${opts.url} (${method} ${path}): ${detail}; is \`petrel serve\` running there? (--url or PETREL_URL)`,
      { cause: err },
    );
  };

  const refuse = (method: string, path: string, status: number, text: string): CliError => {
    let message = text.trim().slice(0, 500);
    try {
      const parsed = JSON.parse(text) as { error?: { message?: unknown } };
      if (typeof parsed.error?.message === "string") message = parsed.error.message;
    } catch {
      // Not petrel's JSON error body (a proxy in front, say): keep the text.
    }
    let hint = "";
    if (status === 401 && !opts.token) hint = " (no token was sent: pass --token or set PETREL_ADMIN_TOKEN)";
    else if (status === 401) hint = " (the token was refused: check --token / PETREL_ADMIN_TOKEN)";
    return new CliError(
      codeForStatus(status),
      `petrel at ${opts.url} answered ${status} to ${method} ${path}: ${message || "(empty body)"}${hint}`,
    );
  };

  /** The CLI's wording for what the shared HTTP layer throws: which address, and what to check. */
  const translate = (method: string, path: string, err: unknown): unknown => {
    if (!(err instanceof UpstreamError) || err.service !== "petrel") return err;
    if (err.upstreamStatus === 0) return fail(method, path, err.cause ?? err);
    return refuse(method, path, err.upstreamStatus, err.upstreamBody);
  };

  return {
    url: opts.url,
    hasToken: Boolean(opts.token),
    async json<T>(method: "GET" | "POST" | "DELETE", path: string, body?: unknown) {
      opts.progress(`${method} ${opts.url}${path}`);
      const answer = await request({
        service: "petrel",
        action: `${method} ${path}`,
        dispatcher,
        method,
        url: new URL(`${opts.url}${path}`),
        headers: headers(body === undefined ? {} : { "content-type": "application/json" }),
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
        headersTimeoutMs: 30_000,
        bodyTimeoutMs: 30_000,
      }).catch((err: unknown) => {
        throw translate(method, path, err);
      });
      try {
        return { status: answer.status, body: JSON.parse(answer.text) as T };
      } catch {
        throw new CliError(
          "internal",
          `petrel at ${opts.url} answered ${method} ${path} with something that is not JSON (is that petrel?)`,
        );
      }
    },
    async raw(method, path, extra, body, shown = path) {
      opts.progress(`${method} ${opts.url}${shown}`);
      const answer = await request({
        service: "petrel",
        action: `${method} ${shown}`,
        dispatcher,
        method,
        url: new URL(`${opts.url}${path}`),
        headers: { "user-agent": "petrel-cli", ...extra },
        body,
        answers: () => true,
        headersTimeoutMs: 30_000,
        bodyTimeoutMs: 30_000,
      }).catch((err: unknown) => {
        throw translate(method, shown, err);
      });
      return { status: answer.status, text: answer.text };
    },
    stream(path, signal) {
      return openStream({
        service: "petrel",
        action: `GET ${path}`,
        dispatcher,
        url: new URL(`${opts.url}${path}`),
        headers: headers({ accept: "text/plain" }),
        signal,
        headersTimeoutMs: 60_000,
        // A build may print nothing for a long time; the stream ends when the build does.
        bodyTimeoutMs: 0,
      }).catch((err: unknown) => {
        throw translate("GET", path, err);
      });
    },
    async close() {
      await owned?.close();
    },
  };
}

/** Writes to a stream and waits when it is full, so a slow reader (a pipe to `less`) is not flooded. */
export async function writeAll(out: Writable, chunk: Uint8Array | string): Promise<void> {
  if (out.write(chunk)) return;
  await new Promise<void>((resolve, reject) => {
    const done = (err?: Error) => {
      out.off("drain", onDrain);
      out.off("error", done);
      out.off("close", onClose);
      if (err) reject(err);
      else resolve();
    };
    const onDrain = () => done();
    const onClose = () => done(new Error("output closed"));
    out.once("drain", onDrain);
    out.once("error", done);
    out.once("close", onClose);
  });
}

/** Percent-encodes a build ID for a path, as petrel expects (`builder%2Fdispatch-...`). */
export function buildPath(id: string): string {
  return `/builds/${encodeURIComponent(id)}`;
}

/** Reads a whole stream (stdin) as a string. */
export async function readAllText(input: Readable): Promise<string> {
  const parts: Buffer[] = [];
  for await (const chunk of input) parts.push(typeof chunk === "string" ? Buffer.from(chunk) : (chunk as Buffer));
  return Buffer.concat(parts).toString("utf8");
}
