import { randomBytes, randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { LogType } from "../../src/builds/backend.js";
import { AppError } from "../../src/errors.js";
import { createNomadBuildReader, type NomadBuildReader } from "../../src/nomad/builds.js";
import { createNomadClient, type NomadClient } from "../../src/nomad/client.js";
import { createFrameDecoder } from "../../src/nomad/frames.js";
import { captureLogs } from "../helpers/log-capture.js";
import { rejection } from "../helpers/rejection.js";
import { eventually } from "../helpers/wait.js";
import { createLifecycleDriver, type LifecycleDriver } from "./driver.js";
import { type NomadTarget, realNomad, startTarget } from "./target.js";

// Following build logs through src/nomad/logs.ts (via the build reader) against the fake, whose log files,
// rotation and connection cuts the tests drive; the first block also runs against a real Nomad.

const META = { REPO_URL: "https://git.example.test/acme/widgets", COMMIT: "4c1d7e0", BRANCH: "main", FLAVOR: "default" };

let t: NomadTarget;
let drive: LifecycleDriver;
let nomad: NomadClient;
let reader: NomadBuildReader;
let builder: string;

beforeAll(async () => {
  t = await startTarget({ logHeartbeatMs: 50, logBatchMs: 20, logFrameSize: 1000 });
  drive = createLifecycleDriver(t);
  builder = t.jobId("builder");
  await drive.registerBuilder(builder);
  nomad = createNomadClient({ addr: t.addr, dispatcher: t.dispatcher, ...(t.token ? { token: t.token } : {}) });
  reader = createNomadBuildReader({
    nomad,
    builders: () => new Set([builder]),
    log: captureLogs().log,
    logs: { retryMinMs: 10, retryMaxMs: 100, giveUpMs: 5000 },
  });
});
afterAll(() => t.close());

function dispatch(): Promise<string> {
  return drive.dispatch(builder, META);
}

/** Resolves once the fake has recorded a blocking query on `id`'s evaluations: the follower waits for placement. */
function waitingOnPlacement(id: string): Promise<void> {
  const fake = t.fake!;
  const path = `/v1/job/${encodeURIComponent(id)}/evaluations`;
  return eventually(() => fake.requests.some((r) => r.path === path && r.query.index !== undefined), 5000, `a watch of ${id}`);
}

/** Resolves once the fake has recorded a request about `name` after `from` requests (the follower is waiting). */
function asked(name: string, from: number, path = ""): Promise<void> {
  const fake = t.fake!;
  return eventually(
    () => fake.requests.slice(from).some((r) => r.path.startsWith(path) && decodeURIComponent(r.path).includes(name)),
    5000,
    `a request naming ${name}`,
  );
}

interface Follow {
  /** Everything received so far. */
  bytes(): Buffer;
  /** Resolves with all bytes when the follow ends; rejects with its error. */
  done: Promise<Buffer>;
  /** When the follow ended (performance.now()). */
  endedAt(): number | undefined;
  abort(): void;
  /** Resolves once the received bytes include `text`. */
  until(text: string, ms?: number): Promise<void>;
}

function follow(id: string, opts: { type?: LogType; follow?: boolean; offset?: number } = {}): Follow {
  const controller = new AbortController();
  const chunks: Buffer[] = [];
  let endedAt: number | undefined;
  const done = (async () => {
    try {
      for await (const chunk of reader.logs(id, {
        type: opts.type ?? "stdout",
        follow: opts.follow ?? true,
        offset: opts.offset ?? 0,
        signal: controller.signal,
      })) {
        chunks.push(Buffer.from(chunk));
      }
      return Buffer.concat(chunks);
    } finally {
      endedAt = performance.now();
    }
  })();
  done.catch(() => undefined);
  return {
    bytes: () => Buffer.concat(chunks),
    done,
    endedAt: () => endedAt,
    abort: () => controller.abort(),
    async until(text, ms = 5000) {
      const deadline = Date.now() + ms;
      while (!Buffer.concat(chunks).includes(text)) {
        if (endedAt !== undefined)
          throw new Error(`follow ended before "${text}"; got ${JSON.stringify(Buffer.concat(chunks).toString())}`);
        if (Date.now() > deadline) throw new Error(`no "${text}" within ${ms} ms; got ${JSON.stringify(Buffer.concat(chunks).toString())}`);
        await new Promise((r) => setTimeout(r, 5));
      }
    },
  };
}

describe("following a build's log (fake or real Nomad)", () => {
  it("streams a finished build's stdout and ends", async () => {
    const id = await dispatch();
    await drive.run(id, { stdout: "built\n", exitCode: 0 });
    const out = await follow(id).done;
    expect(out.toString()).toBe("built\n");
  });

  it("answers the log endpoint's pre-stream errors as plain text", async () => {
    const unknown = randomUUID();
    const res = await t.http("GET", `/v1/client/fs/logs/${unknown}?task=executor&type=stdout`);
    expect(res).toMatchObject({ status: 404, text: `Unknown allocation "${unknown}"` });
    expect(await t.http("GET", `/v1/client/fs/logs/${unknown}?type=stdout`)).toMatchObject({ status: 400, text: "must provide task name" });
    expect(await t.http("GET", `/v1/client/fs/logs/${unknown}?task=executor&type=both`)).toMatchObject({
      status: 400,
      text: "must provide log type (stdout/stderr)",
    });
    expect(await t.http("GET", `/v1/client/fs/logs/${unknown}?task=executor&type=stdout&origin=middle`)).toMatchObject({
      status: 400,
      text: "origin must be start or end",
    });
  });

  it("serves a finished allocation's log as concatenated frames with per-file offsets", async () => {
    const id = await dispatch();
    await drive.run(id, { stdout: "built\n", exitCode: 0 });
    await follow(id).done;
    const allocId = (await reader.getBuild(id))?.allocId ?? "";
    const res = await t.http("GET", `/v1/client/fs/logs/${allocId}?task=executor&type=stdout&follow=false`);
    expect(res.status).toBe(200);
    expect(res.headers["content-type"]).toBe("application/json");
    const decoder = createFrameDecoder();
    const frames = decoder.push(Buffer.from(res.text));
    decoder.end();
    const data = frames.filter((f) => f.data.length > 0);
    expect(Buffer.concat(data.flatMap((f) => f.data)).toString()).toBe("built\n");
    expect(data[0]?.file).toBe("alloc/logs/executor.stdout.0");
    expect(data.at(-1)?.offset).toBe(6);
  });
});

describe("following a build's log (driven lifecycles, fake or real Nomad)", () => {
  it("shows a running build's output live and ends within 2 s of the task's end, after its last bytes", async () => {
    const id = await dispatch();
    await drive.place(id);
    await drive.start(id);
    await drive.writeLog(id, "stderr", "==> checkout\n");
    const f = follow(id, { type: "stderr" });
    await f.until("==> checkout\n");
    await drive.writeLog(id, "stderr", "\u001b[31mred\u001b[0m\n");
    await f.until("red");
    // Against the fake, written inside the batch window right before the end: only a read to the end of the
    // file can see it.
    await drive.writeLog(id, "stderr", "last line\n");
    const finished = performance.now();
    await drive.finish(id, 0);
    const out = await f.done;
    expect(out.toString()).toBe("==> checkout\n\u001b[31mred\u001b[0m\nlast line\n");
    expect((f.endedAt() ?? Infinity) - finished).toBeLessThan(2000);
    // Nomad's follow never ends by itself; ours must have closed it.
    if (t.fake) await eventually(() => t.fake?.openLogStreams() === 0);
  });

  it("returns what exists and ends at once without follow, even while the build runs", async () => {
    const id = await dispatch();
    await drive.place(id);
    await drive.start(id);
    await drive.writeLog(id, "stdout", "so far\n");
    if (drive.real) await follow(id).until("so far\n", 30_000);
    expect((await follow(id, { follow: false }).done).toString()).toBe("so far\n");
    await drive.finish(id, 0);
  });

  it("keeps a shared watch for the followers that stay when one leaves", async () => {
    const id = await dispatch();
    await drive.place(id);
    await drive.start(id);
    await drive.writeLog(id, "stdout", "a\n");
    const leaving = follow(id);
    const staying = follow(id);
    await leaving.until("a\n");
    await staying.until("a\n");
    leaving.abort();
    await leaving.done.catch(() => undefined);
    await drive.writeLog(id, "stdout", "b\n");
    await staying.until("b\n");
    const finished = performance.now();
    await drive.finish(id, 0);
    expect((await staying.done).toString()).toBe("a\nb\n");
    expect((staying.endedAt() ?? Infinity) - finished).toBeLessThan(2000);
  });

  it("ends without output when the build is cancelled before it has written any", async () => {
    const id = await dispatch();
    const from = t.fake?.requests.length ?? 0;
    const f = follow(id);
    // The follower is waiting on the job (the fake shows it); a real agent just runs the silent task meanwhile.
    if (t.fake) await asked(id, from);
    await reader.cancel(id);
    expect((await f.done).length).toBe(0);
  });
});

// Steps a real agent cannot take on demand: answer 404s, rotate or truncate a log file, cut connections,
// garbage-collect or lose an allocation, fail a placement; or assertions on the requests the fake recorded.
describe.skipIf(realNomad)("following a build's log (fake-driven lifecycles)", () => {
  it("waits while queued and while Nomad answers 404 not started yet, then streams", async () => {
    const fake = t.fake!;
    const id = await dispatch();
    const f = follow(id);
    await waitingOnPlacement(id);
    expect(f.endedAt()).toBeUndefined();
    const from = fake.requests.length;
    const allocId = fake.placeAlloc(id);
    await asked(allocId, from);
    fake.failNext(2, 404, 'task "executor" not started yet. No logs available', { path: /\/v1\/client\/fs\/logs\// });
    fake.startTask(id);
    fake.writeLog(id, "stdout", "first\n");
    await f.until("first\n");
    fake.writeLog(id, "stdout", "second\n");
    fake.finishTask(id, 1);
    expect((await f.done).toString()).toBe("first\nsecond\n");
  });

  it("follows rotation from executor.stdout.0 to .1 and resumes across files after a cut", async () => {
    const fake = t.fake!;
    const id = await dispatch();
    fake.placeAlloc(id);
    fake.startTask(id);
    fake.writeLog(id, "stdout", "a".repeat(2500));
    const f = follow(id);
    await f.until("a".repeat(2500));
    fake.rotateLog(id, "stdout");
    fake.writeLog(id, "stdout", "b".repeat(1500));
    await f.until("b".repeat(1500));
    expect(fake.cutLogStreams()).toBeGreaterThan(0);
    fake.writeLog(id, "stdout", "c".repeat(700));
    fake.rotateLog(id, "stdout");
    fake.writeLog(id, "stdout", "d");
    fake.finishTask(id, 0);
    const out = (await f.done).toString();
    expect(out).toBe(`${"a".repeat(2500)}${"b".repeat(1500)}${"c".repeat(700)}d`);
    expect(fake.logFiles(id, "stdout").map((l) => l.name)).toEqual(["executor.stdout.0", "executor.stdout.1", "executor.stdout.2"]);
  });

  it("delivers every byte exactly once while upstream keeps being cut mid-stream", async () => {
    const fake = t.fake!;
    const id = await dispatch();
    fake.placeAlloc(id);
    fake.startTask(id);
    const f = follow(id);
    const written: Buffer[] = [];
    let atCut = 0;
    for (let i = 0; i < 60; i++) {
      const chunk = randomBytes(50 + ((i * 733) % 3000));
      written.push(chunk);
      fake.writeLog(id, "stdout", chunk);
      if (i % 15 === 7) fake.rotateLog(id, "stdout");
      if (i % 6 === 5) {
        // Cut a stream that has delivered something since the last cut, so each cut interrupts a live read.
        await eventually(() => f.bytes().length > atCut);
        atCut = f.bytes().length;
        fake.cutLogStreams();
      }
    }
    fake.finishTask(id, 0);
    const out = await f.done;
    expect(out.length).toBe(Buffer.concat(written).length);
    expect(out.equals(Buffer.concat(written))).toBe(true);
  });

  it("starts at the client's offset, counted across rotated files", async () => {
    const fake = t.fake!;
    const id = await dispatch();
    fake.placeAlloc(id);
    fake.startTask(id);
    fake.writeLog(id, "stdout", "0123456789");
    fake.rotateLog(id, "stdout");
    fake.writeLog(id, "stdout", "abcdefghij");
    fake.finishTask(id, 0);
    expect((await follow(id, { offset: 13 }).done).toString()).toBe("defghij");
    expect((await follow(id, { offset: 4 }).done).toString()).toBe("456789abcdefghij");
  });

  it("answers 410 gone for a build whose allocation was garbage-collected", async () => {
    const fake = t.fake!;
    const id = await dispatch();
    fake.placeAlloc(id);
    fake.startTask(id);
    fake.writeLog(id, "stdout", "old\n");
    fake.finishTask(id, 0);
    fake.gcAlloc(id);
    const err = await rejection(follow(id).done);
    expect(err).toBeInstanceOf(AppError);
    expect(err).toMatchObject({ code: "gone", status: 410 });
    expect((err as Error).message).toMatch(/garbage-collected/);
  });

  it("fails with 410 when the allocation is garbage-collected mid-follow, after the bytes it had", async () => {
    const fake = t.fake!;
    const id = await dispatch();
    fake.placeAlloc(id);
    fake.startTask(id);
    fake.writeLog(id, "stdout", "partial\n");
    const f = follow(id);
    await f.until("partial\n");
    fake.gcAlloc(id);
    const err = await rejection(f.done);
    expect(err).toMatchObject({ code: "gone", status: 410 });
    expect(f.bytes().toString()).toBe("partial\n");
  });

  it("cancels the upstream request when the client goes away", async () => {
    const fake = t.fake!;
    const id = await dispatch();
    fake.placeAlloc(id);
    fake.startTask(id);
    fake.writeLog(id, "stdout", "hi\n");
    const before = fake.openLogStreams();
    const f = follow(id);
    await f.until("hi\n");
    expect(fake.openLogStreams()).toBe(before + 1);
    f.abort();
    await f.done.catch(() => undefined);
    await eventually(() => fake.openLogStreams() === before);
    fake.finishTask(id, 0);
  });

  it("ends when Nomad gives up placing the build (a blocked evaluation keeps it waiting)", async () => {
    const fake = t.fake!;
    const id = await dispatch();
    const f = follow(id);
    await waitingOnPlacement(id);
    fake.failPlacement(id, { giveUp: true });
    expect((await f.done).length).toBe(0);
  });

  it("ends when the allocation is lost, with the bytes it had", async () => {
    const fake = t.fake!;
    const id = await dispatch();
    fake.placeAlloc(id);
    fake.startTask(id);
    fake.writeLog(id, "stdout", "before the node died\n");
    const f = follow(id);
    await f.until("node died");
    fake.loseAlloc(id);
    expect((await f.done).toString()).toBe("before the node died\n");
  });

  it("keeps going after a truncated or deleted file", async () => {
    const fake = t.fake!;
    const id = await dispatch();
    fake.placeAlloc(id);
    fake.startTask(id);
    fake.writeLog(id, "stdout", "one\n");
    const f = follow(id);
    await f.until("one\n");
    fake.rotateLog(id, "stdout", { maxFiles: 1 });
    fake.writeLog(id, "stdout", "two\n");
    await f.until("two\n");
    fake.truncateLog(id, "stdout");
    fake.writeLog(id, "stdout", "three\n");
    await f.until("three\n");
    fake.finishTask(id, 0);
    expect((await f.done).toString()).toBe("one\ntwo\nthree\n");
  });

  it("asks for the executor task's framed log from the start, never gzip", async () => {
    const fake = t.fake!;
    const id = await dispatch();
    const allocId = fake.placeAlloc(id);
    fake.startTask(id);
    fake.writeLog(id, "stderr", "x");
    fake.finishTask(id, 0);
    await follow(id, { type: "stderr", offset: 0 }).done;
    const calls = fake.requests.filter((r) => r.path === `/v1/client/fs/logs/${allocId}`);
    expect(calls.length).toBeGreaterThan(0);
    for (const call of calls) {
      expect(call.query).toMatchObject({ task: "executor", type: "stderr", origin: "start", offset: "0" });
      expect(call.query.plain).toBeUndefined();
      expect(String(call.headers["accept-encoding"] ?? "")).not.toMatch(/gzip/);
    }
  });

  it("lets concurrent followers of one build share their reads and one watch of its allocation", async () => {
    const fake = t.fake!;
    const id = await dispatch();
    const allocId = fake.placeAlloc(id);
    fake.startTask(id);
    fake.writeLog(id, "stdout", "shared\n");
    const before = fake.requests.length;
    const followers = Array.from({ length: 20 }, () => follow(id));
    for (const f of followers) await f.until("shared\n");
    fake.finishTask(id, 0);
    for (const f of followers) expect((await f.done).toString()).toBe("shared\n");
    const calls = fake.requests.slice(before);
    const watches = calls.filter((c) => c.path === `/v1/allocation/${allocId}` && c.query.index !== undefined);
    expect(watches.length).toBeLessThanOrEqual(2);
    expect(calls.filter((c) => c.path === `/v1/client/fs/logs/${allocId}`).length).toBeGreaterThanOrEqual(20);
  });

  it("refuses a job that is not a child of a configured builder before any Nomad call", async () => {
    const fake = t.fake!;
    const before = fake.requests.length;
    for (const id of ["other/dispatch-1700000000-1a2b3c4d", builder, `${builder}/periodic-1700000000`]) {
      const err = await rejection(follow(id).done);
      expect(err).toMatchObject({ code: "not_found", status: 404 });
    }
    expect(fake.requests.length).toBe(before);
  });
});

describe.skipIf(realNomad)("the merged log (type=all) through /v1/client/fs/stream", () => {
  const MERGED = "alloc/petrel/all.log";

  it("answers the fs stream endpoint's errors as Nomad does: plain text before any byte", async () => {
    const fake = t.fake!;
    const unknown = randomUUID();
    expect(await t.http("GET", `/v1/client/fs/stream/${unknown}?path=${MERGED}`)).toMatchObject({
      status: 404,
      text: `Unknown allocation "${unknown}"`,
    });
    const id = await dispatch();
    const allocId = fake.placeAlloc(id);
    expect(await t.http("GET", `/v1/client/fs/stream/${allocId}`)).toMatchObject({ status: 400, text: "must provide a file name" });
    expect(await t.http("GET", `/v1/client/fs/stream/${allocId}?path=${MERGED}&origin=middle`)).toMatchObject({
      status: 400,
      text: "origin must be start or end",
    });
    const missing = await t.http("GET", `/v1/client/fs/stream/${allocId}?path=${MERGED}`);
    expect(missing.status).toBe(400);
    expect(missing.text).toMatch(/^stat .*alloc\/petrel\/all\.log: no such file or directory$/);
    fake.writeAllocFile(id, MERGED, "x\n");
    expect(await t.http("GET", `/v1/client/fs/stream/${allocId}?path=alloc/petrel`)).toMatchObject({
      status: 400,
      text: 'file "alloc/petrel" is a directory',
    });
    expect(await t.http("GET", `/v1/client/fs/stream/${allocId}?path=../../etc/passwd`)).toMatchObject({
      status: 400,
      text: "Path escapes the alloc directory",
    });
  });

  it("frames the file like the logs, with File as the path asked for and the offset past the data", async () => {
    const fake = t.fake!;
    const id = await dispatch();
    const allocId = fake.placeAlloc(id);
    fake.writeAllocFile(id, MERGED, "out\nerr\n");
    const res = await t.http("GET", `/v1/client/fs/stream/${allocId}?path=${MERGED}&follow=false&origin=start&offset=4`);
    expect(res.status).toBe(200);
    expect(res.headers["content-type"]).toBe("application/json");
    const decoder = createFrameDecoder();
    const frames = decoder.push(Buffer.from(res.text)).filter((f) => f.data.length > 0);
    decoder.end();
    expect(Buffer.concat(frames.flatMap((f) => f.data)).toString()).toBe("err\n");
    expect(frames[0]?.file).toBe(MERGED);
    expect(frames.at(-1)?.offset).toBe(8);
  });

  it("follows the merged file live, waits for the executor to create it, and ends after the task's last bytes", async () => {
    const fake = t.fake!;
    const id = await dispatch();
    const f = follow(id, { type: "all" });
    await waitingOnPlacement(id);
    const allocId = fake.placeAlloc(id);
    fake.startTask(id);
    // The executor has not created the file yet: Nomad answers 400 "stat ...: no such file", a passing state;
    // a second ask shows the follower took the first answer for one.
    const stream = `/v1/client/fs/stream/${allocId}`;
    await eventually(() => fake.requests.filter((r) => r.path === stream).length >= 2);
    expect(f.endedAt()).toBeUndefined();
    fake.writeAllocFile(id, MERGED, "==> checkout acme/widgets@4c1d7e0\nout\n");
    await f.until("out\n");
    fake.writeAllocFile(id, MERGED, "err\nout2\n");
    fake.finishTask(id, 0);
    expect((await f.done).toString()).toBe("==> checkout acme/widgets@4c1d7e0\nout\nerr\nout2\n");
    const asked = t.fake!.requests.filter((r) => r.path === `/v1/client/fs/stream/${fake.allocations(id)[0]?.ID}`);
    expect(asked.length).toBeGreaterThan(0);
    expect(asked[0]?.query).toMatchObject({ path: MERGED, origin: "start", offset: "0" });
    await eventually(() => fake.openLogStreams() === 0);
  });

  it("resumes at the byte reached after a cut and starts at the client's offset", async () => {
    const fake = t.fake!;
    const id = await dispatch();
    fake.placeAlloc(id);
    fake.startTask(id);
    fake.writeAllocFile(id, MERGED, "0123456789");
    const f = follow(id, { type: "all", offset: 3 });
    await f.until("3456789");
    expect(fake.cutLogStreams()).toBeGreaterThan(0);
    fake.writeAllocFile(id, MERGED, "abc");
    fake.finishTask(id, 0);
    expect((await f.done).toString()).toBe("3456789abc");
  });

  it("answers 404 for a finished build whose builder wrote no merged log (an Albatros builder)", async () => {
    const fake = t.fake!;
    const id = await dispatch();
    fake.placeAlloc(id);
    fake.startTask(id);
    fake.writeLog(id, "stdout", "albatros\n");
    fake.finishTask(id, 0);
    const err = await rejection(follow(id, { type: "all" }).done);
    expect(err).toBeInstanceOf(AppError);
    expect(err).toMatchObject({ status: 404, code: "not_found" });
    expect((err as Error).message).toMatch(/no merged log.*type=stdout/);
  });

  it("answers 410 once the allocation was garbage-collected", async () => {
    const fake = t.fake!;
    const id = await dispatch();
    fake.placeAlloc(id);
    fake.startTask(id);
    fake.writeAllocFile(id, MERGED, "gone soon\n");
    fake.finishTask(id, 0);
    fake.gcAlloc(id);
    await expect(follow(id, { type: "all" }).done).rejects.toMatchObject({ status: 410, code: "gone" });
  });
});
