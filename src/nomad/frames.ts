import { UpstreamError } from "../errors.js";

/**
 * One frame of Nomad's framed log stream (https://github.com/hashicorp/nomad/blob/main/client/lib/streamframer/framer.go). Every key is omitempty upstream, so an
 * absent key reads as its zero value; a heartbeat (`{}`) has them all zero.
 */
export interface LogFrame {
  /** Byte position inside `file` (a rotated file such as `alloc/logs/executor.stdout.1`), not across files. */
  offset: number;
  /**
   * The decoded log bytes, in order, in one or more pieces (a frame split across chunks is decoded where each
   * part lies). Empty for a frame without data.
   */
  data: Buffer[];
  file: string;
  /** `file deleted`, `file truncated`, or empty. */
  fileEvent: string;
}

/**
 * Incremental decoder of concatenated JSON frames; chunks may split a frame anywhere. The chunks handed in
 * become its own: it keeps references to them until their frames complete and decodes each frame's base64 in
 * place, so the data it returns are views into those chunks (no allocation per frame, and so no garbage
 * collections driven by it at hundreds of MB/s).
 */
export interface FrameDecoder {
  /** The frames `chunk` completes, in order. Throws UpstreamError once the stream is not framed JSON. */
  push(chunk: Uint8Array): LogFrame[];
  /** End of stream: throws when a partial frame or a non-JSON tail is left over. */
  end(): void;
  /** Bytes of an unfinished frame held back. */
  readonly pending: number;
}

/** True for `{}`, which Nomad sends every second whatever the data does. */
export function isHeartbeat(frame: LogFrame): boolean {
  return frame.data.length === 0 && frame.offset === 0 && frame.file === "" && frame.fileEvent === "";
}

const OPEN = 0x7b;
const CLOSE = 0x7d;
const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const DATA_KEY = Buffer.from('"Data":"');
/** A frame carries at most 64 KiB of data (≈ 88 KiB as base64); anything far larger is not a Nomad frame. */
const DEFAULT_MAX_FRAME_BYTES = 4 * 1024 * 1024;
/** How much of a non-JSON tail (the agent's error text, appended after a committed 200 by
 * https://github.com/hashicorp/nomad/blob/main/command/agent/http.go `wrap`) is kept for the error message. */
const MAX_TAIL = 512;
/** Pieces shorter than this are decoded into a small new buffer (Node's pool) instead of in place. */
const MIN_IN_PLACE = 16;

/**
 * Creates a decoder for `/v1/client/fs/logs` bodies. It scans every byte once: string contents are skipped
 * with `indexOf` (memchr) and braces are counted only outside strings. A frame split across chunks is not
 * joined: its base64 is decoded piece by piece straight from the chunks.
 */
export function createFrameDecoder(options: { maxFrameBytes?: number } = {}): FrameDecoder {
  const maxFrameBytes = options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
  let depth = 0;
  let inString = false;
  // Backslashes ending the string content scanned so far: whether the next quote is escaped can depend on
  // bytes of an earlier chunk.
  let backslashes = 0;
  let parts: Buffer[] = [];
  let partsLength = 0;
  let tail: string | undefined;

  const fail = (detail: string): never => {
    throw new UpstreamError("nomad", 200, detail, { action: "log stream" });
  };

  const appendTail = (bytes: Uint8Array) => {
    tail = (tail ?? "") + Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("utf8");
    if (tail.length >= MAX_TAIL) fail(`log stream broke off with: ${tail.trim()}`);
  };

  return {
    get pending() {
      return partsLength;
    },

    push(input) {
      const chunk = Buffer.isBuffer(input) ? input : Buffer.from(input.buffer, input.byteOffset, input.byteLength);
      const out: LogFrame[] = [];
      if (tail !== undefined) {
        appendTail(chunk);
        return out;
      }
      const n = chunk.length;
      let start = depth > 0 ? 0 : -1;
      let i = 0;
      while (i < n) {
        if (depth === 0) {
          const c = chunk[i] as number;
          if (c === OPEN) {
            depth = 1;
            start = i;
          } else if (c !== 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09) {
            appendTail(chunk.subarray(i));
            return out;
          }
          i++;
          continue;
        }
        if (inString) {
          const quote = chunk.indexOf(QUOTE, i);
          const stop = quote === -1 ? n : quote;
          let k = stop - 1;
          while (k >= i && chunk[k] === BACKSLASH) k--;
          const run = stop - 1 - k + (k < i ? backslashes : 0);
          if (quote === -1) {
            backslashes = run;
            break;
          }
          backslashes = 0;
          i = quote + 1;
          // An odd run of backslashes escapes the quote; pairs are escaped backslashes.
          if (run % 2 === 0) inString = false;
          continue;
        }
        const c = chunk[i] as number;
        if (c === QUOTE) {
          inString = true;
          backslashes = 0;
        } else if (c === OPEN) {
          depth++;
        } else if (c === CLOSE) {
          depth--;
          if (depth === 0) {
            const last = chunk.subarray(start, i + 1);
            const pieces = parts.length === 0 ? [last] : [...parts, last];
            parts = [];
            partsLength = 0;
            out.push(parseFrame(pieces));
            start = -1;
          }
        }
        i++;
      }
      if (depth > 0) {
        const rest = chunk.subarray(start);
        partsLength += rest.length;
        if (partsLength > maxFrameBytes) fail(`log frame larger than ${maxFrameBytes} bytes`);
        parts.push(rest);
      }
      return out;
    },

    end() {
      if (tail !== undefined) fail(`log stream broke off with: ${tail.trim()}`);
      if (depth > 0) fail(`log stream ended inside a frame (${partsLength} bytes)`);
    },
  };
}

/** Decodes one complete frame, given as the pieces of the chunks it lies in. */
function parseFrame(pieces: readonly Buffer[]): LogFrame {
  if (pieces.length === 1 && pieces[0]?.length === 2) return { offset: 0, data: [], file: "", fileEvent: "" };
  const cut = cutData(pieces);
  if (cut !== undefined) {
    const frame = parseObject(cut.rest);
    // The cut-out key was nested, not the frame's own Data: read the object the slow way below.
    if (frame.Data === "") return toFrame(frame, decodeInPlace(cut.data));
  }
  const frame = parseObject((pieces.length === 1 ? (pieces[0] as Buffer) : Buffer.concat(pieces)).toString("utf8"));
  const data = typeof frame.Data === "string" && frame.Data !== "" ? [Buffer.from(frame.Data, "base64")] : [];
  return toFrame(frame, data);
}

/**
 * Go writes []byte as bare base64 (no escapes, so no quote inside), which lets the Data value be cut out of
 * the raw bytes and decoded directly, instead of travelling through JSON.parse and a JS string twice.
 * Returns the value's bytes (in pieces, where they lie) and the frame's text with an empty Data; undefined
 * when the frame does not have that shape.
 */
function cutData(pieces: readonly Buffer[]): { data: Buffer[]; rest: string } | undefined {
  const head = pieces[0] as Buffer;
  const at = head.indexOf(DATA_KEY);
  if (at === -1) return undefined;
  const from = at + DATA_KEY.length;
  let last = 0;
  let to = head.indexOf(QUOTE, from);
  while (to === -1) {
    last += 1;
    const piece = pieces[last];
    if (piece === undefined) return undefined;
    to = piece.indexOf(QUOTE);
  }
  const end = pieces[last] as Buffer;
  const data = last === 0 ? [head.subarray(from, to)] : [head.subarray(from), ...pieces.slice(1, last), end.subarray(0, to)];
  if (data.some((d) => d.includes(BACKSLASH))) return undefined;
  const after = last + 1 < pieces.length ? Buffer.concat([end.subarray(to), ...pieces.slice(last + 1)]) : end.subarray(to);
  return { data, rest: head.toString("latin1", 0, from) + after.toString("utf8") };
}

function parseObject(text: string): Record<string, unknown> {
  let obj: unknown;
  try {
    obj = JSON.parse(text);
  } catch {
    throw new UpstreamError("nomad", 200, `log frame is not JSON: ${text.slice(0, 200)}`, { action: "log stream" });
  }
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) {
    throw new UpstreamError("nomad", 200, `log frame is not an object: ${text.slice(0, 200)}`, { action: "log stream" });
  }
  return obj as Record<string, unknown>;
}

function toFrame(frame: Record<string, unknown>, data: Buffer[]): LogFrame {
  return {
    offset: typeof frame.Offset === "number" ? frame.Offset : 0,
    data,
    file: typeof frame.File === "string" ? frame.File : "",
    fileEvent: typeof frame.FileEvent === "string" ? frame.FileEvent : "",
  };
}

/**
 * Standard base64, given in pieces, decoded into the pieces' own memory: each piece's text is copied out (a
 * latin1 string, which Node needs to decode anyway) before its bytes are overwritten, and 4 characters never
 * decode to more than 3 bytes, so the output never passes the text still to read. A quad split between two
 * pieces is decoded at the front of the second. Returns the decoded bytes as views, in order.
 */
function decodeInPlace(pieces: readonly Buffer[]): Buffer[] {
  const out: Buffer[] = [];
  let carry = "";
  for (const piece of pieces) {
    let from = 0;
    let quad = "";
    if (carry !== "") {
      from = Math.min(4 - carry.length, piece.length);
      carry += piece.toString("latin1", 0, from);
      if (carry.length < 4) continue;
      quad = carry;
      carry = "";
    }
    const whole = from + Math.floor((piece.length - from) / 4) * 4;
    const text = whole > from ? piece.toString("latin1", from, whole) : "";
    const next = whole < piece.length ? piece.toString("latin1", whole) : "";
    const target = piece.length >= MIN_IN_PLACE ? piece : Buffer.allocUnsafe(3 + (3 * text.length) / 4);
    let written = 0;
    if (quad !== "") written += target.write(quad, 0, "base64");
    if (text !== "") written += target.write(text, written, "base64");
    if (written > 0) out.push(target.subarray(0, written));
    carry = next;
  }
  // Text that is not a multiple of 4 long (not standard base64): decode what there is, as Buffer.from would.
  if (carry !== "") {
    const tail = Buffer.from(carry, "base64");
    if (tail.length > 0) out.push(tail);
  }
  return out;
}
