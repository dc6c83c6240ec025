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

/** Incremental decoder of concatenated JSON frames; chunks may split a frame anywhere. */
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
  let parts: Uint8Array[] = [];
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
            out.push(parseFrame(take(chunk.subarray(start, i + 1))));
            start = -1;
          }
        }
        i++;
      }
      if (depth > 0) {
        const rest = chunk.subarray(start);
        partsLength += rest.length;
        if (partsLength > maxFrameBytes) fail(`log frame larger than ${maxFrameBytes} bytes`);
        // Copied: the caller may reuse its chunk buffers.
        parts.push(Buffer.from(rest));
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
    const whole = Buffer.concat([...parts, last], partsLength + last.length);
    parts = [];
    partsLength = 0;
    return whole;
  }
}

/** Decodes one complete frame object. */
function parseFrame(bytes: Buffer, fast = true): LogFrame {
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
    data = Buffer.from(bytes.toString("latin1", from, to), "base64");
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
  if (data !== undefined && frame.Data !== "") return parseFrame(bytes, false);
  if (data === undefined) data = typeof frame.Data === "string" ? Buffer.from(frame.Data, "base64") : EMPTY;
  return {
    offset: typeof frame.Offset === "number" ? frame.Offset : 0,
    data,
    file: typeof frame.File === "string" ? frame.File : "",
    fileEvent: typeof frame.FileEvent === "string" ? frame.FileEvent : "",
  };
}
