import { readdirSync, readFileSync } from "node:fs";
import { connect } from "node:net";
import { fileURLToPath } from "node:url";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { z } from "zod";
import * as schema from "../../src/nomad/schema.js";
import { type NomadFake, startNomadFake } from "./nomad.js";
import { shapeDiff } from "./shape.js";

// Replays the exchanges recorded from a real Nomad agent (test/fixtures/nomad, see its README) against the fake:
// the same status, the same content type, the same field names and JSON types at every level, the same framing.
// The recording wins where the two disagree.

const DIR = fileURLToPath(new URL("../fixtures/nomad/", import.meta.url));

interface Recorded {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
}

function recorded(name: string): Recorded {
  const head = readFileSync(`${DIR}${name}.headers`, "utf8").split(/\r?\n/).filter(Boolean);
  const status = Number(head[0]?.split(" ")[1]);
  const headers: Record<string, string> = {};
  for (const line of head.slice(1)) {
    const i = line.indexOf(":");
    headers[line.slice(0, i).toLowerCase()] = line.slice(i + 1).trim();
  }
  return { status, headers, body: readFileSync(`${DIR}${name}.body`) };
}

function recordedJson(name: string): unknown {
  return JSON.parse(readFileSync(`${DIR}${name}.body`, "utf8"));
}

/** Splits concatenated JSON objects (`{..}{..}`, Nomad's log frames) into their texts. */
function splitObjects(text: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let start = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (c === "\\") i++;
      else if (c === '"') inString = false;
    } else if (c === '"') inString = true;
    else if (c === "{") {
      if (depth === 0) start = i;
      depth++;
    } else if (c === "}") {
      depth--;
      if (depth === 0) out.push(text.slice(start, i + 1));
    }
  }
  return out;
}

const COMMIT = "4c1d7e0aa8b13b2b9c8f6a1e2d3c4b5a69788776";
const META = {
  REPO_URL: "https://git.example.test/acme/widgets.git",
  COMMIT,
  BRANCH: "main",
  FLAVOR: "default",
  EVENT: "push",
  TRUSTED: "true",
};
const STDOUT = `building ${COMMIT}\n\x1b[32mgreen\x1b[0m\n`;

let fake: NomadFake;
let ok: string;
let failed: string;
let stopped: string;
let okAlloc: string;
let stopResponse: { status: number; contentType: string; text: string };
const events: string[] = [];
let eventsAbort: AbortController;

async function http(method: string, path: string, body?: string) {
  const res = await request(`${fake.url}${path}`, { method: method as "GET", ...(body === undefined ? {} : { body }) });
  return { status: res.statusCode, contentType: String(res.headers["content-type"]), headers: res.headers, text: await res.body.text() };
}

async function dispatchOk(meta: Record<string, string>, token?: string) {
  const payload = token ? { Payload: Buffer.from("{}").toString("base64"), IdempotencyToken: token } : {};
  const res = await http("POST", "/v1/job/builder/dispatch", JSON.stringify({ Meta: meta, ...payload }));
  expect(res.status).toBe(200);
  return JSON.parse(res.text).DispatchedJobID as string;
}

beforeAll(async () => {
  fake = await startNomadFake({ eventHeartbeatMs: 100 });
  const parsed = await http(
    "POST",
    "/v1/jobs/parse",
    JSON.stringify({ JobHCL: readFileSync(`${DIR}capture-job.nomad.hcl`, "utf8"), Canonicalize: true }),
  );
  expect(parsed.status).toBe(200);
  expect((await http("POST", "/v1/jobs", JSON.stringify({ Job: JSON.parse(parsed.text) }))).status).toBe(200);

  eventsAbort = new AbortController();
  const stream = await request(`${fake.url}/v1/event/stream?topic=Job&topic=Allocation&topic=Evaluation&index=1`, {
    signal: eventsAbort.signal,
  });
  stream.body.setEncoding("utf8");
  stream.body.on("data", (chunk: string) => events.push(chunk));
  stream.body.on("error", () => {});

  ok = await dispatchOk(META, "token-1");
  fake.placeAlloc(ok);
  fake.startTask(ok);
  fake.writeLog(ok, "stdout", STDOUT);
  fake.writeLog(ok, "stderr", "to-stderr\n");
  fake.finishTask(ok, 0);
  okAlloc = fake.allocations(ok)[0]?.ID ?? "";

  failed = await dispatchOk({ ...META, BRANCH: "fail" });
  fake.placeAlloc(failed);
  fake.startTask(failed);
  fake.finishTask(failed, 3);

  stopped = await dispatchOk({ ...META, BRANCH: "slow" });
  fake.placeAlloc(stopped);
  fake.startTask(stopped);
  stopResponse = await http("DELETE", `/v1/job/${encodeURIComponent(stopped)}`);
});

afterAll(async () => {
  eventsAbort?.abort();
  await fake?.close();
});

function expectSameShape(name: string, text: string): void {
  expect(shapeDiff(recordedJson(name), JSON.parse(text))).toEqual([]);
}

describe("JSON answers have the recorded status, content type and shape", () => {
  const cases: [string, () => Promise<{ status: number; contentType: string; text: string }>][] = [
    ["dispatch.ok", async () => http("POST", "/v1/job/builder/dispatch", JSON.stringify({ Meta: META, IdempotencyToken: "token-2" }))],
    [
      "dispatch.repeat-token",
      async () => http("POST", "/v1/job/builder/dispatch", JSON.stringify({ Meta: META, IdempotencyToken: "token-1" })),
    ],
    ["jobs.list", async () => http("GET", "/v1/jobs?prefix=builder/dispatch-")],
    ["jobs.list.meta", async () => http("GET", "/v1/jobs?prefix=builder/dispatch-&meta=true")],
    ["job.parent", async () => http("GET", "/v1/job/builder")],
    ["job.dispatched", async () => http("GET", `/v1/job/${encodeURIComponent(ok)}`)],
    ["job.summary", async () => http("GET", `/v1/job/${encodeURIComponent(ok)}/summary`)],
    ["job.allocations", async () => http("GET", `/v1/job/${encodeURIComponent(ok)}/allocations`)],
    ["job.allocations.failed", async () => http("GET", `/v1/job/${encodeURIComponent(failed)}/allocations`)],
    ["job.stop", async () => stopResponse],
    ["job.stopped", async () => http("GET", `/v1/job/${encodeURIComponent(stopped)}`)],
    ["job.allocations.stopped", async () => http("GET", `/v1/job/${encodeURIComponent(stopped)}/allocations`)],
    ["allocation", async () => http("GET", `/v1/allocation/${okAlloc}`)],
  ];
  it.each(cases)("%s", async (name, send) => {
    const rec = recorded(name);
    const res = await send();
    expect(res.status).toBe(rec.status);
    expect(res.contentType).toBe(rec.headers["content-type"]);
    expectSameShape(name, res.text);
  });

  it("dispatch.fail: a dispatch answer has the recorded shape", async () => {
    const res = await http("POST", "/v1/job/builder/dispatch", JSON.stringify({ Meta: { ...META, BRANCH: "fail" } }));
    expectSameShape("dispatch.fail", res.text);
  });

  it("list stubs carry Meta only with meta=true, as recorded", async () => {
    const plain = JSON.parse((await http("GET", "/v1/jobs?prefix=builder/dispatch-")).text) as Record<string, unknown>[];
    const withMeta = JSON.parse((await http("GET", "/v1/jobs?prefix=builder/dispatch-&meta=true")).text) as Record<string, unknown>[];
    expect((recordedJson("jobs.list") as Record<string, unknown>[]).every((j) => !("Meta" in j))).toBe(true);
    expect(plain.every((j) => !("Meta" in j))).toBe(true);
    expect(withMeta.find((j) => j.ID === ok)?.Meta).toEqual(META);
  });

  it("task events run Received, Task Setup, Started, Terminated as recorded", async () => {
    const types = (_name: string, allocs: unknown) =>
      (allocs as { TaskStates: Record<string, { Events: { Type: string }[] }> }[])[0]?.TaskStates.executor?.Events.map((e) => e.Type);
    for (const [name, job] of [
      ["job.allocations", ok],
      ["job.allocations.failed", failed],
      ["job.allocations.stopped", stopped],
    ] as const) {
      const res = await http("GET", `/v1/job/${encodeURIComponent(job)}/allocations`);
      expect(types(name, JSON.parse(res.text))).toEqual(types(name, recordedJson(name)));
    }
  });
});

describe("error answers have the recorded status, content type and text", () => {
  const cases: [string, string, string, string?][] = [
    ["dispatch.unknown-meta", "POST", "/v1/job/builder/dispatch", JSON.stringify({ Meta: { ...META, NOPE: "1" } })],
    ["dispatch.missing-meta", "POST", "/v1/job/builder/dispatch", JSON.stringify({ Meta: { REPO_URL: META.REPO_URL } })],
    ["dispatch.no-such-job", "POST", "/v1/job/nosuch/dispatch", JSON.stringify({ Meta: META })],
    ["dispatch.bad-json", "POST", "/v1/job/builder/dispatch", "{nope"],
    ["job.not-found", "GET", "/v1/job/nosuch"],
    ["logs.bad-task", "GET", "/v1/client/fs/logs/ALLOC?task=nosuch&type=stdout"],
    ["logs.no-alloc", "GET", "/v1/client/fs/logs/00000000-0000-0000-0000-000000000000?task=executor&type=stdout"],
  ];
  it.each(cases)("%s", async (name, method, path, body) => {
    const rec = recorded(name);
    const res = await http(method, path.replace("ALLOC", okAlloc), body);
    expect(res.status).toBe(rec.status);
    expect(res.contentType).toBe(rec.headers["content-type"]);
    expect(res.text).toBe(rec.body.toString("utf8"));
  });
});

// Variable locks (https://developer.hashicorp.com/nomad/api-docs/variables/locks), recorded in this order on one
// path: acquire, acquire again while held, renew, renew with a foreign ID, release, acquire after the release,
// and an acquire whose TTL is under Nomad's 10 s minimum.
describe("variable locks answer as recorded", () => {
  const lockBody = (path: string, lock: Record<string, string>) => JSON.stringify({ Path: path, Lock: lock });
  const put = (path: string, op: string, lock: Record<string, string>) => http("PUT", `/v1/var/${path}?lock-${op}`, lockBody(path, lock));
  const same = (name: string, res: { status: number; contentType: string; text: string }) => {
    const rec = recorded(name);
    expect(res.status).toBe(rec.status);
    expect(res.contentType).toBe(rec.headers["content-type"]);
    // A conflict's body is JSON under a text/plain content type (var.lock-acquire.held).
    if (rec.body[0] === 0x7b) expectSameShape(name, res.text);
    else expect(res.text).toBe(rec.body.toString("utf8"));
  };

  it("acquire, held, renew, foreign renew, release, acquire again: statuses, content types, shapes and texts", async () => {
    const acquired = await put("petrel/leader", "acquire", { TTL: "15s", LockDelay: "15s" });
    same("var.lock-acquire", acquired);
    const id = (JSON.parse(acquired.text) as { Lock: { ID: string } }).Lock.ID;
    same("var.lock-acquire.held", await put("petrel/leader", "acquire", { TTL: "15s", LockDelay: "15s" }));
    same("var.lock-renew", await put("petrel/leader", "renew", { ID: id }));
    same("var.lock-renew.foreign", await put("petrel/leader", "renew", { ID: "00000000-0000-0000-0000-000000000000" }));
    same("var.lock-release", await put("petrel/leader", "release", { ID: id }));
    // A released lock is free at once: the lock-delay applies only to a lock that expired.
    const again = await put("petrel/leader", "acquire", { TTL: "15s", LockDelay: "15s" });
    same("var.lock-acquire.after-release", again);
    expect((JSON.parse(again.text) as { Lock: { ID: string } }).Lock.ID).not.toBe(id);
  });

  it("refuses a TTL under 10 s with the recorded 400", async () => {
    same("var.lock-acquire.short-ttl", await put("petrel/short", "acquire", { TTL: "1s", LockDelay: "1s" }));
  });
});

describe("log streams have the recorded framing", () => {
  it("logs.stdout.framed: JSON frames with base64 Data, byte for byte", async () => {
    const rec = recorded("logs.stdout.framed");
    const res = await http("GET", `/v1/client/fs/logs/${okAlloc}?task=executor&type=stdout&origin=start&offset=0`);
    expect(res.status).toBe(rec.status);
    expect(res.contentType).toBe(rec.headers["content-type"]);
    expect(res.headers["transfer-encoding"]).toBe(rec.headers["transfer-encoding"]);
    expect(res.text).toBe(rec.body.toString("utf8"));
  });

  it("logs.stderr.plain: the bare bytes as text/plain", async () => {
    const rec = recorded("logs.stderr.plain");
    const res = await http("GET", `/v1/client/fs/logs/${okAlloc}?task=executor&type=stderr&origin=start&offset=0&plain=true`);
    expect(res.status).toBe(rec.status);
    expect(res.contentType).toBe(rec.headers["content-type"]);
    expect(res.headers["transfer-encoding"]).toBe(rec.headers["transfer-encoding"]);
    expect(res.text).toBe(rec.body.toString("utf8"));
  });

  it("logs.follow: frames of the recorded shape, then {} heartbeats", async () => {
    const rec = recorded("logs.follow");
    const recFrames = splitObjects(rec.body.toString("utf8"));
    expect(recFrames.slice(1).every((f) => f === "{}")).toBe(true);
    const f = await startNomadFake({ logHeartbeatMs: 50, logBatchMs: 10 });
    try {
      const id = f.registerJob({
        ID: "builder",
        Type: "batch",
        TaskGroups: [{ Name: "runner", Tasks: [{ Name: "executor", Driver: "raw_exec" }] }],
      });
      f.placeAlloc(id);
      f.startTask(id);
      f.writeLog(id, "stdout", STDOUT);
      const alloc = f.allocations(id)[0]?.ID ?? "";
      const ac = new AbortController();
      const res = await request(`${f.url}/v1/client/fs/logs/${alloc}?task=executor&type=stdout&origin=start&offset=0&follow=true`, {
        signal: ac.signal,
      });
      expect(res.statusCode).toBe(rec.status);
      expect(res.headers["content-type"]).toBe(rec.headers["content-type"]);
      expect(res.headers["transfer-encoding"]).toBe(rec.headers["transfer-encoding"]);
      res.body.setEncoding("utf8");
      let text = "";
      for await (const chunk of res.body) {
        text += chunk as string;
        if (splitObjects(text).filter((o) => o === "{}").length >= 3) break;
      }
      ac.abort();
      const frames = splitObjects(text);
      expect(shapeDiff(JSON.parse(recFrames[0] ?? ""), JSON.parse(frames[0] ?? ""))).toEqual([]);
      expect(frames.slice(1).every((o) => o === "{}")).toBe(true);
    } finally {
      await f.close();
    }
  });

  it("heartbeats keep coming while data flows (Nomad's framer ticks its heartbeat regardless of data)", async () => {
    // hashicorp/nomad client/lib/streamframer/framer.go `run`: the heartbeat ticker sends a frame on every tick.
    const f = await startNomadFake({ logHeartbeatMs: 40, logBatchMs: 5 });
    try {
      const id = f.registerJob({
        ID: "builder",
        Type: "batch",
        TaskGroups: [{ Name: "runner", Tasks: [{ Name: "executor", Driver: "raw_exec" }] }],
      });
      f.placeAlloc(id);
      f.startTask(id);
      const alloc = f.allocations(id)[0]?.ID ?? "";
      const ac = new AbortController();
      const res = await request(`${f.url}/v1/client/fs/logs/${alloc}?task=executor&type=stdout&follow=true`, { signal: ac.signal });
      res.body.setEncoding("utf8");
      let text = "";
      let lines = 0;
      for await (const chunk of res.body) {
        text += chunk as string;
        const frames = splitObjects(text);
        // Every frame that arrives is answered with more data, so the stream never idles.
        if (frames.length > lines) {
          lines = frames.length;
          f.writeLog(id, "stdout", `line ${lines}\n`);
        }
        if (frames.filter((o) => o === "{}").length >= 3) break;
      }
      ac.abort();
      const frames = splitObjects(text);
      expect(frames.filter((o) => o !== "{}").length).toBeGreaterThan(3);
      expect(frames.filter((o) => o === "{}").length).toBeGreaterThanOrEqual(3);
    } finally {
      await f.close();
    }
  });
});

describe("the event stream has the recorded framing and event shapes", () => {
  it("event-stream: a close-delimited 200 with the recorded headers", async () => {
    const rec = recorded("event-stream");
    const raw = await new Promise<string>((resolve, reject) => {
      const { port } = new URL(fake.url);
      const socket = connect(Number(port), "127.0.0.1", () => {
        socket.write("GET /v1/event/stream?topic=Job&index=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
      });
      let text = "";
      socket.setEncoding("utf8");
      socket.on("data", (c: string) => {
        text += c;
        if (text.includes("\r\n\r\n{}\n")) {
          socket.destroy();
          resolve(text);
        }
      });
      socket.on("error", reject);
    });
    const [head = ""] = raw.split("\r\n\r\n");
    const lines = head.split("\r\n");
    expect(lines[0]).toBe(`HTTP/1.1 ${rec.status} OK`);
    const names = lines.slice(1).map((l) => l.slice(0, l.indexOf(":")).toLowerCase());
    expect(names).not.toContain("transfer-encoding");
    expect(names).not.toContain("content-length");
    for (const name of ["content-type", "cache-control", "connection"]) {
      const line = lines.find((l) => l.toLowerCase().startsWith(`${name}:`));
      expect(line?.slice(name.length + 1).trim()).toBe(rec.headers[name]);
    }
  });

  it("every recorded topic comes as newline-delimited batches of the recorded shape", () => {
    const recLines = recorded("event-stream").body.toString("utf8").split("\n").filter(Boolean);
    const ours = events.join("").split("\n").filter(Boolean);
    expect(recLines).toContain("{}");
    expect(ours).toContain("{}");
    type Batch = { Index?: number; Events?: { Topic: string; Type: string; Key: string; Payload: unknown }[] };
    const byTopic = (lines: string[]) => {
      const m = new Map<string, unknown>();
      // The recording holds events of dispatched builds only, not of the parent's registration.
      for (const l of lines)
        for (const e of (JSON.parse(l) as Batch).Events ?? []) if (!m.has(e.Topic) && e.Key !== "builder") m.set(e.Topic, e);
      return m;
    };
    const rec = byTopic(recLines);
    const got = byTopic(ours);
    expect([...got.keys()].sort()).toEqual([...rec.keys()].sort());
    for (const [topic, ev] of rec) expect(shapeDiff(ev, got.get(topic), topic)).toEqual([]);
    const batchShape = (l: string) => Object.keys(JSON.parse(l) as object).sort();
    expect(batchShape(ours.find((l) => l !== "{}") ?? "{}")).toEqual(batchShape(recLines.find((l) => l !== "{}") ?? "{}"));
  });

  it("the chunked (pre-1.11.2) event stream answers 403 to a bad token before any 200", async () => {
    const f = await startNomadFake({ aclToken: "secret", eventFraming: "chunked" });
    try {
      const res = await request(`${f.url}/v1/event/stream?topic=Job`, { headers: { "x-nomad-token": "wrong" } });
      expect(res.statusCode).toBe(403);
      expect(await res.body.text()).toBe("Permission denied");
    } finally {
      await f.close();
    }
  });
});

describe("the client schemas parse every recorded JSON body", () => {
  const schemas: Record<string, z.ZodType> = {
    "dispatch.ok": schema.DispatchResponse,
    "dispatch.repeat-token": schema.DispatchResponse,
    "dispatch.fail": schema.DispatchResponse,
    "jobs.list": schema.JobListStub.array(),
    "jobs.list.meta": schema.JobListStub.array(),
    "job.parent": schema.Job,
    "job.dispatched": schema.Job,
    "job.stopped": schema.Job,
    "job.summary": schema.JobSummary,
    "job.allocations": schema.AllocationStub.array(),
    "job.allocations.failed": schema.AllocationStub.array(),
    "job.allocations.stopped": schema.AllocationStub.array(),
    "job.stop": schema.DeregisterResponse,
    allocation: schema.Allocation,
    "var.lock-acquire": schema.VariableLockAnswer,
    "var.lock-acquire.held": schema.VariableLockAnswer,
    "var.lock-acquire.after-release": schema.VariableLockAnswer,
    "var.lock-renew": schema.VariableLockAnswer,
    "var.lock-release": schema.VariableLockAnswer,
  };

  it("names a schema for every recorded JSON body", () => {
    const json = readdirSync(DIR)
      .filter((f) => f.endsWith(".body"))
      .map((f) => f.slice(0, -".body".length))
      .filter((n) => !n.startsWith("logs.") && n !== "event-stream")
      .filter((n) => {
        try {
          JSON.parse(readFileSync(`${DIR}${n}.body`, "utf8"));
          return true;
        } catch {
          return false;
        }
      });
    expect(json.sort()).toEqual(Object.keys(schemas).sort());
  });

  it.each(Object.entries(schemas))("%s", (name, s) => {
    const parsed = s.safeParse(recordedJson(name));
    expect(parsed.error?.issues ?? []).toEqual([]);
  });

  it("event-stream: every batch parses as an EventBatch", () => {
    const lines = recorded("event-stream")
      .body.toString("utf8")
      .split("\n")
      .filter((l) => l !== "" && l !== "{}");
    expect(lines.length).toBeGreaterThan(0);
    for (const l of lines) expect(schema.EventBatch.safeParse(JSON.parse(l)).error?.issues ?? []).toEqual([]);
  });
});
