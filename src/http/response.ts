import { once } from "node:events";
import type { ServerResponse } from "node:http";
import type { Socket } from "node:net";

// How petrel writes its streaming answers: Server-Sent Events framed by hand (so one frame can go to many
// viewers as the same bytes), written straight to a Node response, and the gzip negotiation of stored logs.

/** Where an SSE stream's frames go: a write answers a promise only while the viewer's connection is full. */
export interface SseSink {
  write(frame: Frame | string): Promise<void> | undefined;
  end(): void;
}

/** An encoded SSE frame, `raw`, inside the HTTP/1.1 chunk that carries it, `chunked`. */
export interface Frame {
  raw: Buffer;
  chunked: Buffer;
}

export const EMPTY = Buffer.alloc(0);

/** An SSE event byte for byte as hono's `writeSSE` frames it (the SSE tests hold its bytes). */
export function sseFrame(event: string, data: string, id?: string): string {
  const lines = data.replace(/\r\n|\r|\n/g, "\ndata: ");
  return id === undefined ? `event: ${event}\ndata: ${lines}\n\n` : `event: ${event}\ndata: ${lines}\nid: ${id}\n\n`;
}

/** `text` as a chunk of a chunked HTTP/1.1 body (RFC 9112 §7.1), as Node's own `write` would send it. */
export function chunkedFrame(text: string): Frame {
  const size = Buffer.byteLength(text);
  const head = `${size.toString(16)}\r\n`;
  const chunked = Buffer.allocUnsafe(head.length + size + 2);
  chunked.write(head, 0, "latin1");
  chunked.write(text, head.length, "utf8");
  chunked.write("\r\n", head.length + size, "latin1");
  return { raw: chunked.subarray(head.length, head.length + size), chunked };
}

/**
 * Writes to a Node response. A frame goes to the socket in its own chunk when the response owns the socket
 * (headers sent, not queued behind another response): one write, no per-write chunk encoding, no deferred
 * uncork; everything else goes through the response, which keeps the order since both append to the socket.
 */
export function nodeSink(res: ServerResponse, signal: AbortSignal): SseSink {
  // One wait per emitter however many frames (heartbeats, states) are written while the connection is full:
  // a wait each would pile listeners on the response and the signal for as long as a viewer stalls.
  const waits = new Map<ServerResponse | Socket, Promise<void>>();
  const wait = (emitter: ServerResponse | Socket): Promise<void> => {
    const pending = waits.get(emitter);
    if (pending !== undefined) return pending;
    const done = () => void waits.delete(emitter);
    const waiting = once(emitter, "drain", { signal }).then(done, done);
    waits.set(emitter, waiting);
    return waiting;
  };
  return {
    write(frame) {
      const socket = res.socket;
      if (typeof frame !== "string" && socket !== null && res.headersSent && !res.writableEnded) {
        return socket.write(frame.chunked) ? undefined : wait(socket);
      }
      return res.write(typeof frame === "string" ? frame : frame.raw) ? undefined : wait(res);
    },
    end: () => void res.end(),
  };
}

/** How many leading bytes of `buf` are whole UTF-8 characters (or bytes that can never start one). */
export function wholeUtf8(buf: Buffer): number {
  for (let back = 1; back <= Math.min(3, buf.length); back++) {
    const b = buf[buf.length - back] as number;
    if ((b & 0xc0) === 0x80) continue;
    const need = b >= 0xf8 ? 1 : b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : b >= 0xc0 ? 2 : 1;
    return need > back ? buf.length - back : buf.length;
  }
  return buf.length;
}

/** Whether an Accept-Encoding header allows gzip (RFC 9110 §12.5.3: `gzip`, `x-gzip` or `*`, with q > 0). */
export function acceptsGzip(header: string | undefined): boolean {
  if (header === undefined) return false;
  let gzip: number | undefined;
  let star: number | undefined;
  for (const part of header.split(",")) {
    const [name = "", ...params] = part.split(";").map((p) => p.trim().toLowerCase());
    const qParam = params.find((p) => p.startsWith("q="));
    const q = qParam === undefined ? 1 : Number(qParam.slice(2));
    const weight = Number.isFinite(q) ? q : 0;
    if (name === "gzip" || name === "x-gzip") gzip = Math.max(gzip ?? 0, weight);
    else if (name === "*") star = weight;
  }
  return (gzip ?? star ?? 0) > 0;
}
