import { UpstreamError } from "../errors.js";

/**
 * One frame of Nomad's framed log stream (contracts/nomad.md §3.4). Every key is omitempty upstream, so an
 * absent key reads as its zero value; a heartbeat (`{}`) has them all zero.
 */
export interface LogFrame {
  /** Byte position inside `file` (a rotated file such as `alloc/logs/executor.stdout.1`), not across files. */
  offset: number;
  /** The decoded log bytes. */
  data: Buffer;
  file: string;
  /** `file deleted`, `file truncated`, or empty. */
  fileEvent: string;
}

/**
 * Incremental decoder of concatenated JSON frames; chunks may split a frame anywhere. Like any stream consumer
 * it keeps references to the chunks it was given until their frames complete: do not reuse them.
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
const EMPTY = Buffer.alloc(0);
const HEARTBEAT: LogFrame = Object.freeze({ offset: 0, data: EMPTY, file: "", fileEvent: "" }) as LogFrame;
const DATA_KEY = Buffer.from('"Data":"');
/** A frame carries at most 64 KiB of data (≈ 88 KiB as base64); anything far larger is not a Nomad frame. */
const DEFAULT_MAX_FRAME_BYTES = 4 * 1024 * 1024;
/** How much of a non-JSON tail (the agent's error text, §3.6) is kept for the error message. */
const MAX_TAIL = 512;
const SLAB_BYTES = 512 * 1024;

/**
 * Creates a decoder for `/v1/client/fs/logs` bodies. It scans every byte once: string contents are skipped
 * with `indexOf` (memchr), braces are counted only outside strings, and a frame split across chunks is
 * joined once when it completes.
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
  // Where frames split across chunks are put together: reused, and dropped while no frame is split, so an
  // idle stream holds no more than its pending bytes.
  let scratch: Buffer | undefined;
  // Decoded data is cut from a larger buffer: one allocation for many frames while data flows. Dropped by a
  // push without frames, so a quiet stream keeps none.
  let slab: Buffer | undefined;
  let slabUsed = 0;
  const allocate = (size: number): Buffer => {
    if (size > SLAB_BYTES / 4) return Buffer.allocUnsafeSlow(size);
    if (slab === undefined || slab.length - slabUsed < size) {
      slab = Buffer.allocUnsafeSlow(SLAB_BYTES);
      slabUsed = 0;
    }
    const out = slab.subarray(slabUsed, slabUsed + size);
    // Keep each piece 8-byte aligned, as Node's own pool does.
    slabUsed += (size + 7) & ~7;
    return out;
  };
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
            out.push(parseFrame(take(chunk.subarray(start, i + 1)), true, allocate));
            start = -1;
          }
        }
        i++;
      }
      if (depth === 0) scratch = undefined;
      if (out.length === 0) slab = undefined;
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

  /** The whole frame: `last` alone, or joined with the parts held back from earlier chunks. */
  function take(last: Buffer): Buffer {
    if (parts.length === 0) return last;
    const size = partsLength + last.length;
    if (scratch === undefined || scratch.length < size) scratch = Buffer.allocUnsafeSlow(Math.max(size, 128 * 1024));
    let at = 0;
    for (const part of parts) at += part.copy(scratch, at);
    last.copy(scratch, at);
    parts = [];
    partsLength = 0;
    return scratch.subarray(0, size);
  }
}

/** Decodes one complete frame object; the result shares no memory with `bytes`. */
function parseFrame(bytes: Buffer, fast: boolean, allocate: (size: number) => Buffer): LogFrame {
  if (bytes.length === 2) return HEARTBEAT;
  let data: Buffer | undefined;
  let text: string;
  // Fast path: Go writes []byte as bare base64 (no escapes), so the Data value is cut out of the bytes and
  // decoded directly instead of travelling through a JS string twice.
  const at = fast ? bytes.indexOf(DATA_KEY) : -1;
  const from = at + DATA_KEY.length;
  const to = at === -1 ? -1 : bytes.indexOf(QUOTE, from);
  const escaped = to !== -1 && bytes.subarray(from, to).includes(BACKSLASH);
  if (to !== -1 && !escaped) {
    data = fromBase64(bytes.toString("latin1", from, to), allocate);
    text = bytes.toString("utf8", 0, from) + bytes.toString("utf8", to);
  } else {
    text = bytes.toString("utf8");
  }
  let obj: unknown;
  try {
    obj = JSON.parse(text);
  } catch {
    throw new UpstreamError("nomad", 200, `log frame is not JSON: ${text.slice(0, 200)}`, { action: "log stream" });
  }
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) {
    throw new UpstreamError("nomad", 200, `log frame is not an object: ${text.slice(0, 200)}`, { action: "log stream" });
  }
  const frame = obj as Record<string, unknown>;
  // The cut-out key was nested (not a top-level Data): read the object the slow way.
  if (data !== undefined && frame.Data !== "") return parseFrame(bytes, false, allocate);
  if (data === undefined) data = typeof frame.Data === "string" ? fromBase64(frame.Data, allocate) : EMPTY;
  return {
    offset: typeof frame.Offset === "number" ? frame.Offset : 0,
    data,
    file: typeof frame.File === "string" ? frame.File : "",
    fileEvent: typeof frame.FileEvent === "string" ? frame.FileEvent : "",
  };
}

/** Standard base64 to bytes, written into a buffer of the exact size (cheaper than `Buffer.from`). */
function fromBase64(text: string, allocate: (size: number) => Buffer): Buffer {
  if (text.length === 0) return EMPTY;
  const padding = text.endsWith("==") ? 2 : text.endsWith("=") ? 1 : 0;
  const out = allocate(Math.max(0, Math.floor((text.length * 3) / 4) - padding));
  const written = out.write(text, "base64");
  return written === out.length ? out : out.subarray(0, written);
}
