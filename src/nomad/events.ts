import { setTimeout as sleep } from "node:timers/promises";
import { errorMessage, UpstreamError } from "../errors.js";
import type { Logger } from "../log.js";
import type { NomadClient } from "./client.js";
import { EventBatch, type StreamEvent } from "./schema.js";

/** One batch of the event stream: the events of one Raft index that match the topics. */
export interface EventStreamBatch {
  index: number;
  events: StreamEvent[];
}

/** Where to follow the event stream from, and what to do with what comes. */
export interface EventFollowOptions {
  nomad: NomadClient;
  log: Logger;
  /** `Topic` or `Topic:FilterKey`, e.g. `Job:*`. */
  topics: string[];
  /** First index wanted; the stream resumes from the last index seen + 1 after every reconnect. */
  index: number;
  signal: AbortSignal;
  /** Each new batch, in increasing index order, never twice. Awaited: a slow consumer slows the stream. */
  onBatch: (batch: EventStreamBatch) => void | Promise<void>;
  /**
   * Events may have been missed (the first batch after a (re)connect is past the index asked for, so the
   * server's buffer may have dropped some): re-sync with GET queries. Awaited before the batch is handed on.
   */
  onGap: (detail: { requested: number; received: number }) => void | Promise<void>;
  /** Called before every reconnect. */
  onReconnect?: (error: unknown) => void;
  retryMinMs?: number;
  retryMaxMs?: number;
  /** Silence after which the stream counts as dead (Nomad sends `{}` every 30 s). */
  idleTimeoutMs?: number;
}

const MAX_LINE = 64 * 1024 * 1024;

/**
 * Follows `/v1/event/stream` until `signal` aborts (https://developer.hashicorp.com/nomad/api-docs/events): reads NDJSON whether the body is
 * chunked or close-delimited, skips `{}` heartbeats, resumes with `index = last + 1` (the server's start is
 * inclusive), drops batches it has already seen, and reports a possible gap. A 200 that ends before its first
 * `{}` is how a v1.11.2+ agent refuses a request (e.g. a token without `read-job`): an error, retried with
 * back-off like any other failure. Resolves when `signal` aborts; never rejects.
 */
export async function followEvents(o: EventFollowOptions): Promise<void> {
  const retryMinMs = o.retryMinMs ?? 250;
  const retryMaxMs = o.retryMaxMs ?? 30_000;
  let last = Math.max(0, o.index - 1);
  let delay = retryMinMs;
  for (;;) {
    if (o.signal.aborted) return;
    const requested = last + 1;
    let greeted = false;
    let first = true;
    let failure: unknown;
    try {
      const body = await o.nomad.eventStream({
        index: requested,
        topics: o.topics,
        signal: o.signal,
        ...(o.idleTimeoutMs === undefined ? {} : { idleTimeoutMs: o.idleTimeoutMs }),
      });
      for await (const line of lines(body)) {
        const batch = parseLine(line);
        if (!greeted) {
          greeted = true;
          delay = retryMinMs;
        }
        if (batch === undefined) continue;
        if (first) {
          first = false;
          if (batch.index > requested && requested > 1) await o.onGap({ requested, received: batch.index });
        }
        if (batch.index <= last) continue;
        last = batch.index;
        await o.onBatch(batch);
      }
      if (!greeted) {
        failure = new UpstreamError(
          "nomad",
          200,
          "event stream closed before its first heartbeat (is the token allowed read-job in this namespace?)",
          {
            action: "event stream",
          },
        );
      }
    } catch (err) {
      if (o.signal.aborted) return;
      failure = err;
    }
    if (o.signal.aborted) return;
    if (failure !== undefined)
      o.log.warn({ err: errorMessage(failure), index: requested, retryInMs: delay }, "nomad event stream failed; reconnecting");
    else o.log.debug({ index: last + 1 }, "nomad event stream ended; reconnecting");
    o.onReconnect?.(failure);
    try {
      await sleep(delay, undefined, { signal: o.signal });
    } catch {
      return;
    }
    delay = Math.min(delay * 2, retryMaxMs);
  }
}

/** A line: undefined for a heartbeat (`{}` or a blank line), else a batch. Throws on anything else. */
function parseLine(line: string): EventStreamBatch | undefined {
  if (line.trim() === "") return undefined;
  let json: unknown;
  try {
    json = JSON.parse(line);
  } catch {
    throw new UpstreamError("nomad", 200, `event stream line is not JSON: ${line.slice(0, 200)}`, { action: "event stream" });
  }
  const parsed = EventBatch.safeParse(json);
  if (!parsed.success) {
    throw new UpstreamError("nomad", 200, `unexpected event stream line: ${line.slice(0, 200)}`, { action: "event stream" });
  }
  if (parsed.data.Index === undefined) return undefined;
  return { index: parsed.data.Index, events: parsed.data.Events };
}

/** Splits a byte stream into lines without the newline; a last line without one is kept too. */
async function* lines(body: AsyncIterable<Uint8Array>): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  let pending: string[] = [];
  let pendingLength = 0;
  for await (const chunk of body) {
    const text = decoder.decode(chunk, { stream: true });
    let from = 0;
    for (let nl = text.indexOf("\n"); nl !== -1; nl = text.indexOf("\n", from)) {
      const piece = text.slice(from, nl);
      from = nl + 1;
      if (pending.length === 0) {
        yield piece;
      } else {
        pending.push(piece);
        const line = pending.join("");
        pending = [];
        pendingLength = 0;
        yield line;
      }
    }
    if (from < text.length) {
      pending.push(text.slice(from));
      pendingLength += text.length - from;
      if (pendingLength > MAX_LINE) throw new UpstreamError("nomad", 200, "event stream line too long", { action: "event stream" });
    }
  }
  const rest = pending.join("") + decoder.decode();
  if (rest !== "") yield rest;
}
