import pRetry from "p-retry";
import type { Logger } from "pino";
import { type Dispatcher, request as undiciRequest } from "undici";
import type { z } from "zod";
import { errorMessage, UpstreamError, type UpstreamService } from "../errors.js";

export type Method = "GET" | "POST" | "PUT" | "DELETE";

/** Response headers as undici gives them. */
export type ResponseHeaders = Dispatcher.ResponseData["headers"];

/**
 * How hard a call tries. With `budgetMs`, attempts and back-off together stay inside the budget: each attempt
 * is cut at the deadline and no retry starts that the slowest attempt so far says could not finish in time.
 */
export interface RetryPolicy {
  /** Total time the call may take, attempts and back-off included. */
  budgetMs?: number;
  /** Retries after the first attempt; unlimited inside a budget, else none. */
  retries?: number;
  /** First back-off; it doubles up to `maxDelayMs`. */
  minDelayMs: number;
  maxDelayMs?: number;
  /** Jitter on each back-off (p-retry's `randomize`). */
  randomize?: boolean;
  /** What is worth another attempt; by default outages: no answer, 5xx and 429. */
  retryable?: (err: UpstreamError) => boolean;
  /** Called before each back-off, e.g. for a log line. */
  onRetry?: (err: UpstreamError, info: { attempt: number; delayMs: number }) => void;
}

/** One call to Nomad, Consul, Gitea or petrel's own API; see {@link request}. */
export interface HttpRequest<S extends z.ZodType> {
  /** Named in errors, with `action`: "nomad dispatch answered 500: ...". */
  service: UpstreamService;
  action: string;
  dispatcher: Dispatcher;
  method: Method;
  url: URL;
  headers?: Record<string, string>;
  body?: string | Buffer;
  /** The 2xx answer's JSON schema; without one the answer is only read as text. */
  schema?: S;
  /** What a 2xx answer with no body at all stands for (Gitea's empty combined status); else it is not JSON. */
  emptyBody?: unknown;
  /** Statuses answered instead of thrown besides 2xx (a 404 that means "none"); their `value` is undefined. */
  answers?: (status: number) => boolean;
  /** The upstream's own message in an error body (Gitea's `{"message"}`); default: the whole body. */
  errorText?: (body: string) => string;
  /** A sentence added to an error's message that says what a terse status means for the operator. */
  hint?: (status: number, body: string) => string | undefined;
  headersTimeoutMs?: number;
  bodyTimeoutMs?: number;
  retry?: RetryPolicy;
  /** Cancels the call and its retries; the call then rejects with the signal's reason. */
  signal?: AbortSignal | undefined;
  /** Gets one debug line per answer (method, path, status, time); never the query, headers or body. */
  log?: Logger | undefined;
}

export interface HttpAnswer<T> {
  status: number;
  headers: ResponseHeaders;
  text: string;
  /** The parsed 2xx answer; undefined for an accepted non-2xx status or when no schema was given. */
  value: T | undefined;
}

/** Outages: no answer, 5xx and 429; a 4xx says our request was wrong, and trying again will not fix it. */
export function isOutage(err: UpstreamError): boolean {
  return err.unavailable;
}

/**
 * Sends one request (with retries as `retry` says) and reads the whole answer. Network errors become an
 * UpstreamError with status 0; a status other than 2xx or `answers` becomes one with the status and the body;
 * a 2xx answer that does not match `schema` is one too.
 */
export async function request<S extends z.ZodType>(req: HttpRequest<S>): Promise<HttpAnswer<z.output<S>>> {
  const policy = req.retry;
  if (policy === undefined) return attempt(req, req.signal, req.headersTimeoutMs);
  const budget = policy.budgetMs;
  const maxDelay = policy.maxDelayMs ?? Number.POSITIVE_INFINITY;
  const retryable = policy.retryable ?? isOutage;
  const start = performance.now();
  let slowest = 0;
  return pRetry(
    async () => {
      const began = performance.now();
      try {
        if (budget === undefined) return await attempt(req, req.signal, req.headersTimeoutMs);
        return await withDeadline(req, budget - (began - start), (s) => attempt(req, s, req.headersTimeoutMs));
      } finally {
        slowest = Math.max(slowest, performance.now() - began);
      }
    },
    {
      retries: policy.retries ?? (budget === undefined ? 0 : Number.POSITIVE_INFINITY),
      minTimeout: policy.minDelayMs,
      maxTimeout: maxDelay,
      factor: 2,
      randomize: policy.randomize ?? false,
      ...(budget === undefined ? {} : { maxRetryTime: budget }),
      ...(req.signal ? { signal: req.signal } : {}),
      shouldRetry: ({ error, retriesConsumed, attemptNumber }) => {
        if (!(error instanceof UpstreamError) || req.signal?.aborted || !retryable(error)) return false;
        const delayMs = Math.min(policy.minDelayMs * 2 ** retriesConsumed, maxDelay);
        if (budget !== undefined && performance.now() - start + delayMs + slowest > budget) return false;
        policy.onRetry?.(error, { attempt: attemptNumber, delayMs });
        return true;
      },
    },
  );
}

/** Runs `fn` with a signal that fires at the caller's abort or after `ms`; running out of time is an outage. */
async function withDeadline<T>(
  req: Pick<HttpRequest<z.ZodType>, "service" | "action" | "signal">,
  ms: number,
  fn: (signal: AbortSignal) => Promise<T>,
): Promise<T> {
  const timeout = AbortSignal.timeout(Math.max(1, Math.floor(ms)));
  const combined = req.signal ? AbortSignal.any([req.signal, timeout]) : timeout;
  try {
    return await fn(combined);
  } catch (err) {
    if (req.signal?.aborted) throw req.signal.reason;
    if (timeout.aborted) {
      throw new UpstreamError(req.service, 0, `no answer within ${Math.round(ms)} ms`, { cause: err, action: req.action });
    }
    throw err;
  }
}

/** One HTTP exchange, bounded by `signal`. */
async function attempt<S extends z.ZodType>(
  req: HttpRequest<S>,
  signal: AbortSignal | undefined,
  headersTimeout: number | undefined,
): Promise<HttpAnswer<z.output<S>>> {
  const started = performance.now();
  let res: Dispatcher.ResponseData;
  let text: string;
  try {
    res = await undiciRequest(req.url, {
      method: req.method,
      dispatcher: req.dispatcher,
      ...(req.headers ? { headers: req.headers } : {}),
      ...(req.body === undefined ? {} : { body: req.body }),
      ...(signal ? { signal } : {}),
      ...(headersTimeout === undefined ? {} : { headersTimeout }),
      ...(req.bodyTimeoutMs === undefined ? {} : { bodyTimeout: req.bodyTimeoutMs }),
    });
    text = await res.body.text();
  } catch (err) {
    if (signal?.aborted) throw signal.reason;
    throw new UpstreamError(req.service, 0, describeNetworkError(err), { cause: err, action: req.action });
  }
  const status = res.statusCode;
  req.log?.debug(
    { method: req.method, path: req.url.pathname, status, ms: Math.round(performance.now() - started) },
    `${req.service} request`,
  );
  const ok = status >= 200 && status < 300;
  if (!ok) {
    if (req.answers?.(status)) return { status, headers: res.headers, text, value: undefined };
    throw upstreamError(req, status, req.errorText ? req.errorText(text) : text);
  }
  if (req.schema === undefined) return { status, headers: res.headers, text, value: undefined };
  let json: unknown = req.emptyBody;
  if (req.emptyBody === undefined || text.trim() !== "") {
    try {
      json = JSON.parse(text);
    } catch {
      throw upstreamError(req, status, `answer is not JSON: ${text}`);
    }
  }
  const parsed = req.schema.safeParse(json);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`).join("; ");
    throw upstreamError(req, status, `unexpected answer: ${issues}`);
  }
  return { status, headers: res.headers, text, value: parsed.data };
}

function upstreamError(req: Pick<HttpRequest<z.ZodType>, "service" | "action" | "hint">, status: number, body: string): UpstreamError {
  const err = new UpstreamError(req.service, status, body, { action: req.action });
  const hint = req.hint?.(status, body);
  if (hint !== undefined) err.message = `${err.message} (${hint})`;
  return err;
}

/** A streamed GET; see {@link openStream}. */
export interface StreamRequest {
  service: UpstreamService;
  action: string;
  dispatcher: Dispatcher;
  url: URL;
  headers?: Record<string, string>;
  signal?: AbortSignal | undefined;
  headersTimeoutMs: number;
  /** Longest silence between two chunks; 0 for none. */
  bodyTimeoutMs: number;
}

/**
 * Opens a streamed GET and resolves once the headers arrived. Anything but 2xx is read whole and thrown as an
 * UpstreamError with its status and text; no answer is an UpstreamError with status 0.
 */
export async function openStream(req: StreamRequest): Promise<Dispatcher.ResponseData> {
  let res: Dispatcher.ResponseData;
  try {
    res = await undiciRequest(req.url, {
      method: "GET",
      dispatcher: req.dispatcher,
      ...(req.headers ? { headers: req.headers } : {}),
      ...(req.signal ? { signal: req.signal } : {}),
      headersTimeout: req.headersTimeoutMs,
      bodyTimeout: req.bodyTimeoutMs,
    });
  } catch (err) {
    if (req.signal?.aborted) throw req.signal.reason;
    throw new UpstreamError(req.service, 0, describeNetworkError(err), { cause: err, action: req.action });
  }
  if (res.statusCode < 200 || res.statusCode >= 300) {
    const text = await res.body.text().catch(() => "");
    throw new UpstreamError(req.service, res.statusCode, text, { action: req.action });
  }
  return res;
}

/** The first value of a header undici may give as a list. */
export function headerValue(headers: ResponseHeaders, name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v[0] : v;
}

/** A network error's message with its code (`ECONNREFUSED: ...`) when the message does not say it already. */
export function describeNetworkError(err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code;
  const message = errorMessage(err);
  return typeof code === "string" && !message.includes(code) ? `${code}: ${message}` : message;
}
