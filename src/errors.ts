/**
 * Every stable error code and the HTTP status it is answered with: the status is a function of the code, so no
 * call site chooses one. Codes that only the CLI or the configuration reader use still have a status, for the
 * rare path where they reach an HTTP answer.
 */
export const ERROR_STATUS = {
  bad_request: 400,
  malformed_body: 400,
  repository_mismatch: 400,
  commit_not_on_ref: 400,
  /** A repository entry (config or secrets) an operator sent is invalid. */
  entry_invalid: 400,
  /** The client closed the connection before its request arrived whole. */
  aborted: 400,
  /** A command line petrel cannot read. */
  usage: 400,
  unauthorized: 401,
  forbidden: 403,
  not_registered: 404,
  not_found: 404,
  already_finished: 409,
  gone: 410,
  payload_too_large: 413,
  unsupported_media_type: 415,
  /** The output a command writes to was closed by its reader. */
  output_closed: 499,
  /** petrel's own configuration (environment, files, builder jobs) is wrong: an operator must fix it. */
  config_invalid: 500,
  internal: 500,
  upstream_error: 502,
  nomad_unavailable: 503,
  consul_unavailable: 503,
  gitea_unavailable: 503,
  /** petrel's own API could not be reached (the CLI). */
  unreachable: 503,
  insufficient_storage: 507,
} as const satisfies Record<string, number>;

/** Stable error codes that reach clients in `{"error": {"code", "message"}}` bodies. */
export type ErrorCode = keyof typeof ERROR_STATUS;

/** The HTTP status an error code is answered with. */
export function statusOf(code: ErrorCode): number {
  return ERROR_STATUS[code];
}

/** An error petrel answers with on purpose: a literal code (its HTTP status follows) and a message safe to show. */
export class AppError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "AppError";
    this.code = code;
  }

  get status(): number {
    return statusOf(this.code);
  }
}

/** The services petrel calls; `petrel` is its own API, as the CLI calls it. */
export type UpstreamService = "nomad" | "consul" | "gitea" | "petrel";

const UNAVAILABLE: Record<UpstreamService, ErrorCode> = {
  nomad: "nomad_unavailable",
  consul: "consul_unavailable",
  gitea: "gitea_unavailable",
  petrel: "unreachable",
};

const MAX_BODY_IN_MESSAGE = 512;

/**
 * A call to Nomad, Consul or Gitea that failed: keeps the service, the HTTP status (0 when no answer came)
 * and the upstream's own message, truncated. `unavailable` separates "their outage" (network, 5xx, 429)
 * from an answer that says our request was wrong (4xx), which retrying will not fix.
 */
export class UpstreamError extends AppError {
  readonly service: UpstreamService;
  readonly upstreamStatus: number;
  readonly upstreamBody: string;
  readonly unavailable: boolean;

  constructor(service: UpstreamService, upstreamStatus: number, upstreamBody: string, options?: { cause?: unknown; action?: string }) {
    const body = truncate(upstreamBody.trim(), MAX_BODY_IN_MESSAGE);
    const unavailable = upstreamStatus === 0 || upstreamStatus >= 500 || upstreamStatus === 429;
    const what = options?.action ? `${service} ${options.action}` : service;
    const detail =
      upstreamStatus === 0
        ? `${what} unreachable${body ? `: ${body}` : ""}`
        : `${what} answered ${upstreamStatus}${body ? `: ${body}` : ""}`;
    super(
      unavailable ? UNAVAILABLE[service] : "upstream_error",
      detail,
      options?.cause === undefined ? undefined : { cause: options.cause },
    );
    this.name = "UpstreamError";
    this.service = service;
    this.upstreamStatus = upstreamStatus;
    this.upstreamBody = body;
    this.unavailable = unavailable;
  }
}

export function truncate(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max)}…`;
}

/** The message of anything thrown, for logs and error bodies. */
export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}
