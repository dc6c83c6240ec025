/** Stable error codes that reach clients in `{"error": {"code", "message"}}` bodies. */
export type ErrorCode =
  | "bad_request"
  | "malformed_body"
  | "unauthorized"
  | "forbidden"
  | "not_registered"
  | "repository_mismatch"
  | "commit_not_on_ref"
  | "not_found"
  | "already_finished"
  | "gone"
  | "payload_too_large"
  | "unsupported_media_type"
  | "nomad_unavailable"
  | "consul_unavailable"
  | "gitea_unavailable"
  | "upstream_error"
  | "config_invalid"
  | "aborted"
  | "internal";

/** An error petrel answers with on purpose: a literal code, an HTTP status and a message safe to show. */
export class AppError extends Error {
  readonly code: ErrorCode;
  readonly status: number;

  constructor(code: ErrorCode, status: number, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "AppError";
    this.code = code;
    this.status = status;
  }
}

export type UpstreamService = "nomad" | "consul" | "gitea";

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

  constructor(
    service: UpstreamService,
    upstreamStatus: number,
    upstreamBody: string,
    options?: { cause?: unknown; action?: string },
  ) {
    const body = truncate(upstreamBody.trim(), MAX_BODY_IN_MESSAGE);
    const unavailable = upstreamStatus === 0 || upstreamStatus >= 500 || upstreamStatus === 429;
    const what = options?.action ? `${service} ${options.action}` : service;
    const detail =
      upstreamStatus === 0
        ? `${what} unreachable${body ? `: ${body}` : ""}`
        : `${what} answered ${upstreamStatus}${body ? `: ${body}` : ""}`;
    super(
      unavailable ? (`${service}_unavailable` as ErrorCode) : "upstream_error",
      unavailable ? 503 : 502,
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
