import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { UpstreamError } from "../../src/errors.js";
import { createFrameDecoder, isHeartbeat, type LogFrame } from "../../src/nomad/frames.js";

// Nomad writes frames as Go's encoding/json does: keys in struct order, omitempty, []byte as base64, no
// separator between objects (https://github.com/hashicorp/nomad/blob/main/client/lib/streamframer/framer.go).

interface Spec {
  offset?: number;
  data?: Uint8Array;
  file?: string;
  fileEvent?: string;
}

function encode(spec: Spec): string {
  const obj: Record<string, unknown> = {};
  if (spec.offset) obj.Offset = spec.offset;
  if (spec.data && spec.data.length > 0) obj.Data = Buffer.from(spec.data).toString("base64");
  if (spec.file) obj.File = spec.file;
  if (spec.fileEvent) obj.FileEvent = spec.fileEvent;
  return JSON.stringify(obj);
}

function plain(frames: LogFrame[]) {
  return frames.map((f) => ({ offset: f.offset, data: Buffer.concat(f.data).toString("hex"), file: f.file, fileEvent: f.fileEvent }));
}

function expected(specs: Spec[]) {
  return specs.map((s) => ({
    offset: s.offset ?? 0,
    data: Buffer.from(s.data ?? []).toString("hex"),
    file: s.file ?? "",
    fileEvent: s.fileEvent ?? "",
  }));
}

function decodeChunks(chunks: Uint8Array[]): LogFrame[] {
  const decoder = createFrameDecoder();
  const out: LogFrame[] = [];
  for (const chunk of chunks) out.push(...decoder.push(chunk));
  decoder.end();
  return out;
}

function splitAt(bytes: Buffer, cuts: number[]): Buffer[] {
  const sorted = [...new Set(cuts)].filter((c) => c > 0 && c < bytes.length).sort((a, b) => a - b);
  const chunks: Buffer[] = [];
  let from = 0;
  for (const cut of sorted) {
    chunks.push(bytes.subarray(from, cut));
    from = cut;
  }
  chunks.push(bytes.subarray(from));
  return chunks;
}

function failure(fn: () => void): UpstreamError {
  try {
    fn();
  } catch (err) {
    if (err instanceof UpstreamError) return err;
    throw err;
  }
  throw new Error("expected an UpstreamError");
}

// Braces, quotes and backslash runs inside strings are what a naive brace counter gets wrong.
const TRICKY: Spec[] = [
  {},
  { offset: 11, data: Buffer.from("hello {world}\n"), file: "alloc/logs/executor.stdout.0" },
  { file: 'alloc/logs/we"ird}{name\\', fileEvent: "file truncated" },
  { offset: 3, data: Buffer.from([0x1b, 0x5b, 0x33, 0x31, 0x6d, 0x00, 0xff, 0x7d, 0x7b]), file: 'a\\\\"}{\\' },
  {},
  { file: "alloc/logs/executor.stdout.0", fileEvent: "file deleted" },
  { offset: 2, data: Buffer.from("é✓"), file: "ünïcødé ✓ \u2028 <&>" },
];

describe("frame decoder", () => {
  it("decodes heartbeats, data frames and file events", () => {
    const frames = decodeChunks([Buffer.from(TRICKY.map(encode).join(""))]);
    expect(plain(frames)).toEqual(expected(TRICKY));
    expect(frames.map(isHeartbeat)).toEqual([true, false, false, false, true, false, false]);
  });

  it("gives the same frames whichever byte the stream is split at", () => {
    const bytes = Buffer.from(TRICKY.map(encode).join(""));
    const want = expected(TRICKY);
    for (let cut = 1; cut < bytes.length; cut++) {
      // A fresh copy each time: the decoder decodes in place.
      expect(plain(decodeChunks(splitAt(Buffer.from(bytes), [cut]))), `split at ${cut}`).toEqual(want);
    }
  });

  it("decodes a stream fed one byte at a time", () => {
    const bytes = Buffer.from(TRICKY.map(encode).join(""));
    const chunks = [...bytes].map((b) => Buffer.from([b]));
    expect(plain(decodeChunks(chunks))).toEqual(expected(TRICKY));
  });

  it("decodes any frames under any chunking (property)", () => {
    const text = fc.string({ unit: "binary", maxLength: 12 });
    const spec = fc.record(
      {
        offset: fc.integer({ min: 0, max: 2 ** 40 }),
        data: fc.uint8Array({ maxLength: 40 }),
        file: fc.oneof(text, fc.constantFrom('\\"', "\\", "}{", '"}', "\\\\\\")),
        fileEvent: fc.constantFrom("", "file deleted", "file truncated"),
      },
      { requiredKeys: [] },
    );
    fc.assert(
      fc.property(fc.array(spec, { maxLength: 8 }), fc.array(fc.nat(), { maxLength: 12 }), (specs, cuts) => {
        const bytes = Buffer.from(specs.map(encode).join(""));
        const chunks = splitAt(
          bytes,
          cuts.map((c) => c % (bytes.length + 1)),
        );
        expect(plain(decodeChunks(chunks))).toEqual(expected(specs));
      }),
      { numRuns: 500 },
    );
  });

  it("decodes 64 KiB frames split at chunk sizes that do not line up", () => {
    const data = Buffer.alloc(64 * 1024);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7919) & 0xff;
    const specs = [
      { offset: 65536, data, file: "alloc/logs/executor.stderr.0" },
      {},
      { offset: 131072, data, file: "alloc/logs/executor.stderr.0" },
    ];
    const bytes = Buffer.from(specs.map(encode).join(""));
    const chunks: Buffer[] = [];
    for (let at = 0; at < bytes.length; at += 16_383) chunks.push(bytes.subarray(at, at + 16_383));
    expect(plain(decodeChunks(chunks))).toEqual(expected(specs));
  });

  it("reads frames with whitespace or an unusual key layout the slow way", () => {
    const pretty = '{\n  "Offset": 5,\n  "Data": "aGk=",\n  "File": "f"\n}  {  }';
    expect(plain(decodeChunks([Buffer.from(pretty)]))).toEqual(expected([{ offset: 5, data: Buffer.from("hi"), file: "f" }, {}]));
    const nested = '{"Extra":{"Data":"eHg="},"Data":"aGk=","Offset":1}';
    expect(plain(decodeChunks([Buffer.from(nested)]))).toEqual(expected([{ offset: 1, data: Buffer.from("hi") }]));
  });

  it("keeps the frames before a non-JSON tail and fails with the tail's text", () => {
    const decoder = createFrameDecoder();
    const ok = encode({ offset: 2, data: Buffer.from("ok"), file: "f" });
    const frames = decoder.push(Buffer.from(`${ok}rpc error: Unknown allocation "0b1c"`));
    expect(plain(frames)).toEqual(expected([{ offset: 2, data: Buffer.from("ok"), file: "f" }]));
    const err = failure(() => decoder.end());
    expect(err.message).toContain('rpc error: Unknown allocation "0b1c"');
    expect(err.service).toBe("nomad");
  });

  it("fails on a non-JSON tail that keeps coming without waiting for the end", () => {
    const decoder = createFrameDecoder();
    decoder.push(Buffer.from("{}"));
    expect(failure(() => decoder.push(Buffer.from(`error: ${"x".repeat(600)}`))).message).toContain("error: xxx");
  });

  it("fails when the stream ends inside a frame", () => {
    const decoder = createFrameDecoder();
    expect(decoder.push(Buffer.from('{}{"Offset":3,"Data":"aGk'))).toHaveLength(1);
    expect(decoder.pending).toBeGreaterThan(0);
    expect(failure(() => decoder.end()).message).toMatch(/ended inside a frame/);
  });

  it("fails on a frame that is braces but not JSON", () => {
    const decoder = createFrameDecoder();
    expect(failure(() => decoder.push(Buffer.from('{"Offset":1,}'))).message).toMatch(/not JSON/);
  });

  it("refuses a frame larger than its limit instead of buffering without end", () => {
    const decoder = createFrameDecoder({ maxFrameBytes: 1000 });
    decoder.push(Buffer.from(`{"Data":"${"A".repeat(600)}`));
    expect(failure(() => decoder.push(Buffer.from("A".repeat(600)))).message).toMatch(/larger than 1000/);
  });

  it("decodes into the chunks' own memory instead of allocating per frame", () => {
    const data = Buffer.alloc(3000, 0x78);
    const chunk = Buffer.from(encode({ offset: 3000, data, file: "f" }));
    const [frame] = createFrameDecoder().push(chunk);
    expect(frame?.data).toHaveLength(1);
    expect(frame?.data[0]?.buffer).toBe(chunk.buffer);
    expect(frame?.data[0]?.equals(data)).toBe(true);
  });

  it("hands out data that later split frames do not overwrite", () => {
    const decoder = createFrameDecoder();
    const first = encode({ data: Buffer.from("first frame's bytes") });
    const second = encode({ data: Buffer.from("SECOND FRAME, LONGER ONE") });
    const got = [
      ...decoder.push(Buffer.from(first.slice(0, 10))),
      ...decoder.push(Buffer.from(first.slice(10) + second.slice(0, 7))),
      ...decoder.push(Buffer.from(second.slice(7))),
    ];
    expect(got.map((f) => Buffer.concat(f.data).toString())).toEqual(["first frame's bytes", "SECOND FRAME, LONGER ONE"]);
  });
});
