import { randomBytes } from "node:crypto";
import { ServerResponse } from "node:http";
import { Readable } from "node:stream";
import { RESPONSE_ALREADY_SENT } from "@hono/node-server/utils/response";
import type { Context } from "hono";
import { Hono } from "hono";
import { streamSSE } from "hono/streaming";
import { z } from "zod";
import type { Build, BuildCursor, BuildFilter, BuildState, LogType } from "../builds/backend.js";
import { BUILD_STATES, isTerminal } from "../builds/backend.js";
import { cloneUrlOf, isEntryCloneUrl, planManual } from "../builds/plan.js";
import { entryOfBuild } from "../builds/statuses.js";
import { createBuildWatch, FellBehindError } from "../builds/watch.js";
import { AppError, errorMessage } from "../errors.js";
import { isRefName } from "../gitea/binding.js";
import { resolveRefHead } from "../gitea/commit-check.js";
import { acceptsGzip, chunkedFrame, EMPTY, type Frame, nodeSink, type SseSink, sseFrame, wholeUtf8 } from "../http/response.js";
import { createSessions } from "../pages/session.js";
import type { RepoEntry } from "../registry/schema.js";
import { isRepoKey } from "../registry/schema.js";
import { type Access, createAccess } from "./access.js";
import { type BuildActions, createBuildActions } from "./actions.js";
import type { AppDeps } from "./deps.js";
import { buildLinks } from "./hook.js";

const DEFAULT_LIMIT = 50;
const MAX_LIMIT = 500;
/** How long a log request waits for its first bytes before it answers 200 and streams whatever comes. */
const FIRST_CHUNK_WAIT_MS = 1000;
const SSE_HEARTBEAT_MS = 15_000;
/** How long `POST /builds` without a commit may spend asking the forge for the ref's head. */
const RESOLVE_TIMEOUT_MS = 10_000;

// Strict: a misspelt or retired field (`repo_url`) is refused, not silently ignored.
const TriggerBody = z.strictObject({
  repo: z.string().min(1),
  ref: z.string().min(1),
  commit: z
    .string()
    .regex(/^[0-9a-fA-F]{7,64}$/)
    .optional(),
  flavor: z.string().min(1).optional(),
});

/** A listing cursor as it travels in `?cursor=`: opaque to callers, `<ms>.<id>` in base64url. */
export function formatCursor(cursor: BuildCursor): string {
  return Buffer.from(`${cursor.time}.${cursor.id}`).toString("base64url");
}

/** The cursor `formatCursor` gave out; anything else is a 400. */
export function parseCursor(raw: string): BuildCursor {
  const text = Buffer.from(raw, "base64url").toString();
  const dot = text.indexOf(".");
  const time = Number(text.slice(0, dot));
  const id = text.slice(dot + 1);
  if (dot < 1 || !Number.isSafeInteger(time) || id === "" || formatCursor({ time, id }) !== raw) {
    throw new AppError("bad_request", "cursor is not one this server gave out (send back the `cursor` of a listing)");
  }
  return { time, id };
}

/** The builds API: list, show, follow logs (text or SSE), cancel, trigger. Only petrel's own builds. */
export function createBuildsRoute(
  deps: AppDeps,
  access: Access = createAccess(deps, createSessions(deps.adminToken)),
  actions: BuildActions = createBuildActions(deps, access),
): Hono {
  const app = new Hono();
  const { reader } = deps;
  const watch = deps.watch ?? createBuildWatch({ reader, log: deps.log });

  const { requireAdmin, publicBuild, ourBuild } = access;
  // Reads take the page session cookie too; changes take only the bearer token (see createAccess).
  const admin = access.reader;

  app.get("/builds", async (c) => {
    const limitRaw = c.req.query("limit");
    const limit = limitRaw === undefined ? DEFAULT_LIMIT : Number(limitRaw);
    if (!Number.isInteger(limit) || limit < 1 || limit > MAX_LIMIT) {
      throw new AppError("bad_request", `limit must be a whole number from 1 to ${MAX_LIMIT}`);
    }
    const state = c.req.query("state");
    if (state !== undefined && !(BUILD_STATES as readonly string[]).includes(state)) {
      throw new AppError("bad_request", `state must be one of ${BUILD_STATES.join(", ")}`);
    }
    const filter: BuildFilter = { limit };
    const repo = c.req.query("repo");
    const ref = c.req.query("ref");
    const cursor = c.req.query("cursor");
    if (repo !== undefined) filter.repo = repo;
    if (ref !== undefined) filter.ref = ref;
    if (state !== undefined) filter.state = state as BuildState;
    if (cursor !== undefined) filter.after = parseCursor(cursor);
    if (!admin(c)) filter.visible = publicBuild;
    const page = await reader.listBuilds(filter, c.req.raw.signal);
    return c.json({
      builds: page.builds.map((b) => withLinks(deps.publicUrl, b)),
      // Builds left out for lack of the token, so a reader knows the listing is not the whole story. Not for
      // an anonymous listing filtered by repository or ref: the count would tell whether a private repository
      // has builds, or a guessed branch exists.
      ...(admin(c) || (repo === undefined && ref === undefined) ? { hidden: page.hidden } : {}),
      ...(page.next === undefined ? {} : { cursor: formatCursor(page.next) }),
    });
  });

  /** The clone URL of a manual build: the entry's `clone_url`, else the repository's latest build's, else its forge's. */
  const cloneUrlFor = async (entry: RepoEntry, signal: AbortSignal): Promise<string> => {
    if (entry.config.clone_url !== undefined) return entry.config.clone_url;
    const [, owner = "", name = ""] = entry.key.split("/");
    // Only a URL of the entry's own forge: build meta is whatever was dispatched, and this build gets the secrets.
    const page = await reader.listBuilds(
      {
        repo: `${owner}/${name}`,
        limit: 1,
        visible: async (b) => (await entryOfBuild(deps.registry, b))?.key === entry.key && isEntryCloneUrl(entry, b.repoUrl),
      },
      signal,
    );
    return page.builds[0]?.repoUrl ?? cloneUrlOf(entry);
  };

  const { dispatchPlan, commitCheck } = actions;

  app.post("/builds", async (c) => {
    requireAdmin(c);
    let body: z.infer<typeof TriggerBody>;
    try {
      body = TriggerBody.parse(await c.req.json());
    } catch (err) {
      // Neither bad JSON nor a bad field: reading the body failed, because the client hung up or timed out.
      if (!(err instanceof z.ZodError) && !(err instanceof SyntaxError))
        throw new AppError("aborted", "the client closed the connection before the whole body arrived", { cause: err });
      throw new AppError(
        "bad_request",
        `body must be {"repo", "ref", "commit"?, "flavor"?}: ${err instanceof z.ZodError ? err.issues.map((i) => (i.path.length ? `${i.path.join(".")}: ${i.message}` : i.message)).join("; ") : "not JSON"}`,
      );
    }
    const entry = await findEntry(deps.registry, body.repo);
    const fullRef = body.ref.startsWith("refs/") ? body.ref : `refs/heads/${body.ref}`;
    if (!isRefName(fullRef)) throw new AppError("bad_request", `ref ${JSON.stringify(body.ref.slice(0, 200))} is not a valid git ref name`);
    const cloneUrl = await cloneUrlFor(entry, c.req.raw.signal);
    let commit: string;
    if (body.commit === undefined) {
      const head = await resolveRefHead({
        url: cloneUrl,
        ref: fullRef,
        timeoutMs: RESOLVE_TIMEOUT_MS,
        signal: c.req.raw.signal,
        ...(entry.deployKey === undefined ? {} : { deployKey: entry.deployKey }),
      });
      if (head.kind === "missing") throw new AppError("bad_request", `${head.message}; give "commit"`);
      if (head.kind === "unreachable") throw new AppError("gitea_unavailable", `${head.message}; try again once it answers`);
      commit = head.commit;
    } else {
      // Trusted builds get the secrets: a commit only on a fork's pull request ref must not pass as `main`.
      const check = await commitCheck(c, entry, cloneUrl, fullRef, body.commit);
      if (check.kind === "not_on_ref") throw new AppError("commit_not_on_ref", check.message);
      if (check.kind === "unfetchable") throw new AppError("bad_request", `${check.message}; cannot check that the commit is on the ref`);
      if (check.kind === "unreachable") throw new AppError("gitea_unavailable", `${check.message}; try again once it answers`);
      commit = check.commit;
    }
    const plan = await dispatchPlan(
      c,
      planManual({
        entry,
        ref: body.ref,
        commit,
        flavor: body.flavor ?? "default",
        defaultBuilder: deps.defaultBuilder,
        nonce: randomBytes(8).toString("hex"),
        repoUrl: cloneUrl,
        ...(entry.config.private === undefined ? {} : { private: entry.config.private }),
      }),
    );
    deps.log.info({ build: plan.id, repo: entry.key, ref: plan.ref, commit: plan.commit }, "manual build dispatched");
    return c.json(buildLinks(deps.publicUrl, plan.id), 201);
  });

  /**
   * `POST /builds/<id>/rerun`: the same clone URL, commit, ref, flavor and event as build <id>, as a new build.
   * Trust is decided again and never grows: only a trusted original whose commit its ref still reaches (at a
   * clone URL of the entry's own forge) gives a trusted re-run; anything else runs without the secrets.
   */
  app.post("/builds/*", async (c) => {
    const rest = c.req.path.slice("/builds/".length);
    if (!rest.endsWith("/rerun")) throw new AppError("not_found", `no such endpoint: POST ${c.req.path}`);
    requireAdmin(c);
    const id = decodePath(rest.slice(0, -"/rerun".length));
    const { plan, untrusted } = await actions.rerun(c, id);
    return c.json(
      {
        ...buildLinks(deps.publicUrl, plan.id),
        rerun_of: id,
        trusted: plan.trusted,
        ...(untrusted === undefined ? {} : { untrusted_because: untrusted }),
      },
      201,
    );
  });

  // Albatros-compatible follow: plain text, ends when the build ends.
  app.get("/build", async (c) => {
    const id = c.req.query("job");
    if (!id) throw new AppError("bad_request", "job is required: /build?job=<build id>&log=stdout|stderr");
    const type = logType(c.req.query("log"), false);
    const build = await ourBuild(c, id);
    return streamText(c, build, type, true, 0);
  });

  app.on(["GET", "DELETE"], "/builds/*", async (c) => {
    const rest = c.req.path.slice("/builds/".length);
    const isLogs = rest.endsWith("/logs");
    const id = decodePath(isLogs ? rest.slice(0, -"/logs".length) : rest);
    if (c.req.method === "DELETE") {
      if (isLogs) throw new AppError("not_found", "logs cannot be deleted");
      requireAdmin(c);
      const after = await actions.cancel(c, id);
      return c.json(withLinks(deps.publicUrl, after), 202);
    }
    const build = await ourBuild(c, id);
    if (!isLogs) return c.json(withLinks(deps.publicUrl, build));
    const type = logType(c.req.query("type"), true);
    const follow = c.req.query("follow") !== "false" && c.req.query("follow") !== "0";
    if ((c.req.header("accept") ?? "").includes("text/event-stream")) {
      const lastId = Number(c.req.header("last-event-id") ?? c.req.query("offset") ?? 0);
      // Only a whole byte offset (the ids petrel sends): a first viewer's offset starts the build's shared
      // stream, and a fractional one would shift the bytes every other viewer of it gets.
      return streamSse(c, build, type, Number.isSafeInteger(lastId) && lastId > 0 ? lastId : 0);
    }
    const offset = Number(c.req.query("offset") ?? 0);
    if (!Number.isInteger(offset) || offset < 0) throw new AppError("bad_request", "offset must be a whole number of bytes");
    return streamText(c, build, type, follow, offset);
  });

  /**
   * Ends a log transfer cut short by shutdown (or by a viewer falling behind, `why`) as a broken one (no final chunk), so the client resumes with
   * ?offset= elsewhere. Closing the socket rather than erroring the stream keeps @hono/node-server from
   * printing the error's stack to stderr on every shutdown with a follower.
   */
  function breakOff(c: Context, controller: ReadableStreamDefaultController<Uint8Array>, id: string, why?: Error): void {
    if (why === undefined) deps.log.info({ build: id }, "log stream cut off: petrel is shutting down");
    else deps.log.info({ build: id, err: why.message }, "log stream cut off");
    const outgoing = (c.env as { outgoing?: { destroy(): void } } | undefined)?.outgoing;
    if (outgoing === undefined) {
      controller.error(why ?? new Error("petrel is shutting down"));
      return;
    }
    outgoing.destroy();
    controller.close();
  }

  /** Ties a stream's upstream work to the client's connection and to petrel's shutdown. */
  /** Ends `abort` when the client leaves or petrel shuts down; the returned function lets go of both signals. */
  function tieToClient(c: Context, abort: AbortController): () => void {
    const onAbort = () => abort.abort();
    c.req.raw.signal.addEventListener("abort", onAbort, { once: true });
    if (deps.shutdown?.aborted) abort.abort();
    // Removed when the stream ends: the shutdown signal lives as long as petrel, and every log request
    // would otherwise leave a listener on it.
    deps.shutdown?.addEventListener("abort", onAbort, { once: true });
    return () => {
      c.req.raw.signal.removeEventListener("abort", onAbort);
      deps.shutdown?.removeEventListener("abort", onAbort);
    };
  }

  /**
   * A running build's followers share one upstream stream (the watch); a finished build's log, or one read
   * without follow, is a plain read of its own.
   */
  const logsOf = (build: Build, type: LogType, follow: boolean, offset: number, signal: AbortSignal): AsyncIterable<Uint8Array> =>
    follow && !isTerminal(build.state)
      ? watch.follow(build.id, { type, offset, signal })
      : reader.logs(build.id, { type, follow, offset, signal });

  async function streamText(c: Context, build: Build, type: LogType, follow: boolean, offset: number): Promise<Response> {
    const { id } = build;
    // HEAD (answered by this GET route): the status and headers a GET gets, and nothing left open. Node drops
    // the body of a HEAD answer without cancelling it, so a body made here would hold its file or stream.
    const head = c.req.method === "HEAD";
    // A whole archived log to a client that takes gzip: the stored bytes as they are, no decompression here.
    if (offset === 0 && isTerminal(build.state) && reader.gzipLog !== undefined && acceptsGzip(c.req.header("accept-encoding"))) {
      const gz = await reader.gzipLog(id, type);
      if (gz !== undefined && head) {
        // Closed unread: an async iterator never started would not run its stream's clean-up.
        if (gz instanceof Readable) gz.destroy();
        return new Response(null, { status: 200, headers: GZIP_HEADERS });
      }
      if (gz !== undefined) return gzipResponse(gz, id);
    }
    const abort = new AbortController();
    const release = tieToClient(c, abort);
    const iterator = logsOf(build, type, follow, offset, abort.signal)[Symbol.asyncIterator]();
    // Errors known up front (logs gone, unknown allocation) get their status; a queued build answers at once.
    let pending: Promise<IteratorResult<Uint8Array>> | undefined = iterator.next();
    const early = await Promise.race([
      pending.then(
        () => undefined,
        (err: unknown) => ({ err }),
      ),
      new Promise<undefined>((r) => setTimeout(() => r(undefined), FIRST_CHUNK_WAIT_MS).unref()),
    ]);
    if (early !== undefined) {
      release();
      throw early.err;
    }
    if (head) {
      abort.abort();
      release();
      void pending.then(
        () => iterator.return?.(),
        () => undefined,
      );
      return new Response(null, { status: 200, headers: PLAIN_HEADERS });
    }
    deps.metrics.logFollowers.inc();
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      release();
      deps.metrics.logFollowers.dec();
    };
    const stream = new ReadableStream<Uint8Array>({
      async pull(controller) {
        try {
          const result = await (pending ?? iterator.next());
          pending = undefined;
          if (result.done) {
            finish();
            // Cut short by shutdown, not ended by the build: say so with a broken transfer.
            if (deps.shutdown?.aborted) breakOff(c, controller, id);
            else controller.close();
            return;
          }
          deps.metrics.logBytes.inc(result.value.byteLength);
          controller.enqueue(result.value);
        } catch (err) {
          finish();
          // A client that left needs nothing; one cut off by shutdown sees a broken transfer and resumes elsewhere.
          if (abort.signal.aborted) return deps.shutdown?.aborted ? breakOff(c, controller, id) : controller.close();
          // A follower too slow for the live log: a broken transfer, so it resumes with ?offset= at the bytes it has.
          if (err instanceof FellBehindError) return breakOff(c, controller, id, err);
          deps.log.warn({ build: id, err: (err as Error).message }, "log stream failed");
          // Ending with an error (not with text of our own) keeps the body the build's bytes only, so a client
          // sees a broken transfer and resumes with ?offset= at exactly the bytes it has.
          controller.error(err);
        }
      },
      async cancel() {
        finish();
        abort.abort();
        await iterator.return?.();
      },
    });
    return new Response(stream, { status: 200, headers: PLAIN_HEADERS });
  }

  /** An archived log's gzip bytes as the body, with `Content-Encoding: gzip`; counted like any other log read. */
  function gzipResponse(gz: AsyncIterable<Uint8Array>, id: string): Response {
    const iterator = gz[Symbol.asyncIterator]();
    deps.metrics.logFollowers.inc();
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      deps.metrics.logFollowers.dec();
    };
    const stream = new ReadableStream<Uint8Array>({
      async pull(controller) {
        try {
          const result = await iterator.next();
          if (result.done) {
            finish();
            controller.close();
            return;
          }
          deps.metrics.logBytes.inc(result.value.byteLength);
          controller.enqueue(result.value);
        } catch (err) {
          finish();
          deps.log.warn({ build: id, err: (err as Error).message }, "log stream failed");
          controller.error(err);
        }
      },
      async cancel() {
        finish();
        await iterator.return?.();
      },
    });
    return new Response(stream, {
      status: 200,
      headers: GZIP_HEADERS,
    });
  }

  /**
   * Server-Sent Events for browsers. Log text is framed as hono's `writeSSE` frames it (`sseFrame`): a `data:`
   * line ends at every `\r\n`, `\r` and `\n` (each of them ends an SSE line), so no byte a build prints can end
   * an event early or start a field of its own; a viewer gets the text back with `\n` where the build had any.
   * On Node's HTTP/1 server the frames go straight to the connection, already in their HTTP chunk: a viewer of a
   * running build then costs one socket write per frame and little else (web streams, and Node's own chunked
   * encoding per write, cost more than the write itself with 100 viewers of one build).
   */
  async function streamSse(c: Context, build: Build, type: LogType, offset: number): Promise<Response> {
    const abort = new AbortController();
    const release = tieToClient(c, abort);
    const outgoing = (c.env as { outgoing?: unknown } | undefined)?.outgoing;
    // HEAD (answered by this GET route) has no body: Node drops a body written through the response, not one
    // written to the socket.
    if (outgoing instanceof ServerResponse && c.req.method === "GET") {
      // The headers hono's streamSSE sends, in its order, but for `Connection`: Node's own says keep-alive, or
      // close when the client asked for it, and then closes; a `keep-alive` of ours would hold the connection
      // open after the response for the keep-alive timeout.
      outgoing.writeHead(200, {
        "x-accel-buffering": "no",
        "transfer-encoding": "chunked",
        "content-type": "text/event-stream",
        "cache-control": "no-cache",
      });
      outgoing.flushHeaders();
      outgoing.once("close", () => abort.abort());
      void followSse(nodeSink(outgoing, abort.signal), build, type, offset, abort, release).catch((err: unknown) => {
        deps.log.warn({ build: build.id, err: errorMessage(err) }, "SSE stream failed");
        outgoing.destroy();
      });
      return RESPONSE_ALREADY_SENT;
    }
    c.header("X-Accel-Buffering", "no");
    return streamSSE(c, async (stream) => {
      stream.onAbort(() => abort.abort());
      const sink: SseSink = {
        write: (frame) => stream.write(typeof frame === "string" ? frame : frame.raw).then(() => undefined),
        end: () => undefined,
      };
      await followSse(sink, build, type, offset, abort, release);
    });
  }

  /**
   * Frames of a running build's log shared by its viewers: a viewer at the live edge gets from the watch the
   * very chunk every other viewer there gets, so the frame is encoded once (keyed by that chunk) and the same
   * bytes are written to each. A viewer whose framing differs (a held-back `\r` or half a UTF-8 character, or
   * a batch of its own) encodes its own.
   */
  const sharedFrames = new WeakMap<
    Uint8Array,
    { log: string; position: number; frame: Frame | undefined; carry: Buffer; heldCr: boolean }
  >();

  async function followSse(
    sink: SseSink,
    build: Build,
    type: LogType,
    offset: number,
    abort: AbortController,
    release: () => void,
  ): Promise<void> {
    // A flag rather than `signal.aborted` on every frame: the getter costs a check per call.
    let gone = abort.signal.aborted;
    abort.signal.addEventListener("abort", () => (gone = true), { once: true });
    let position = offset;
    // Which log a shared frame belongs to: with its offset, it names the frame's bytes (a log only grows).
    const log = `${type}\0${build.id}`;
    // Bytes of a UTF-8 character the next chunk completes: ids count only bytes an event carried, so a
    // resume with Last-Event-ID never skips half a character.
    let carry: Buffer = EMPTY;
    let lastState = "";
    // A `\r` ending a chunk may be the first half of a `\r\n` split across chunks: held back, it is sent
    // with the next text, so the pair stays one line end.
    let heldCr = false;
    /** Undefined when the frame went out at once: the hot path awaits nothing. */
    const send = (frame: Frame | string): Promise<void> | undefined => (gone ? undefined : sink.write(frame));
    const sendState = async (b: Build) => {
      const json = JSON.stringify(withLinks(deps.publicUrl, b));
      if (json === lastState) return;
      lastState = json;
      await send(sseFrame("state", json));
    };
    /** The frame of `chunk` (ending at `position`), or undefined when it carries no whole character yet. */
    const encodeLog = (chunk: Uint8Array, final: boolean): Frame | undefined => {
      const bytes = carry.length === 0 ? Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength) : Buffer.concat([carry, chunk]);
      const whole = final ? bytes.length : wholeUtf8(bytes);
      // A copy: the chunk's memory is the reader's, and only its bytes up to now are ours to keep.
      carry = whole === bytes.length ? EMPTY : Buffer.from(bytes.subarray(whole));
      let body = (heldCr ? "\r" : "") + bytes.toString("utf8", 0, whole);
      heldCr = !final && body.endsWith("\r");
      if (heldCr) body = body.slice(0, -1);
      const id = position - carry.length - (heldCr ? 1 : 0);
      return body === "" ? undefined : chunkedFrame(sseFrame("log", body, String(id)));
    };
    const logFrame = (chunk: Uint8Array, final: boolean): Frame | undefined => {
      if (final || carry.length !== 0 || heldCr || chunk.byteLength === 0) return encodeLog(chunk, final);
      const before = position - chunk.byteLength;
      const shared = sharedFrames.get(chunk);
      if (shared !== undefined && shared.position === before && shared.log === log) {
        carry = shared.carry;
        heldCr = shared.heldCr;
        return shared.frame;
      }
      const frame = encodeLog(chunk, false);
      sharedFrames.set(chunk, { log, position: before, frame, carry, heldCr });
      return frame;
    };
    try {
      await sendState(build);
    } catch (err) {
      release();
      throw err;
    }
    deps.metrics.logFollowers.inc();
    const heartbeat = setInterval(() => {
      if (!gone) void Promise.resolve(sink.write(": heartbeat\n\n")).catch(() => undefined);
    }, SSE_HEARTBEAT_MS);
    // One shared read of the build per interval, and the transitions the backend reports, whatever the viewers.
    const unwatch = isTerminal(build.state)
      ? () => undefined
      : watch.states(build.id, (b) => void sendState(b).catch(() => undefined), abort.signal);
    try {
      for await (const chunk of logsOf(build, type, true, offset, abort.signal)) {
        position += chunk.byteLength;
        deps.metrics.logBytes.inc(chunk.byteLength);
        const frame = logFrame(chunk, false);
        const full = frame === undefined ? undefined : send(frame);
        if (full !== undefined) await full;
      }
      const last = logFrame(new Uint8Array(0), true);
      if (last !== undefined) await send(last);
      const final = await watch.current(build.id, abort.signal);
      if (final) await sendState(final);
      await send(sseFrame("end", "{}"));
    } catch (err) {
      if (!gone) await Promise.resolve(send(sseFrame("error", JSON.stringify({ message: (err as Error).message })))).catch(() => undefined);
    } finally {
      clearInterval(heartbeat);
      unwatch();
      release();
      deps.metrics.logFollowers.dec();
      sink.end();
    }
  }

  return app;
}

/** A build as the API shows it, with the links a client follows. */
export function withLinks(publicUrl: string, build: Build): Build & { links: { self: string; logs: string } } {
  const self = `${publicUrl}/builds/${encodeURIComponent(build.id)}`;
  return { ...build, links: { self, logs: `${self}/logs` } };
}

/**
 * Headers of every plain-text log answer. `Vary`: the same URL answers gzip to clients that take it once the
 * build is archived, identity bytes to the rest.
 */
const TEXT_HEADERS = {
  "Cache-Control": "no-cache",
  Vary: "Accept-Encoding",
  "X-Accel-Buffering": "no",
  "X-Content-Type-Options": "nosniff",
} as const;
const PLAIN_HEADERS = { "Content-Type": "text/plain; charset=utf-8", ...TEXT_HEADERS };
const GZIP_HEADERS = { ...PLAIN_HEADERS, "Content-Encoding": "gzip" };

/** `all` (stdout, stderr and step lines merged) only on `/builds/<id>/logs`; Albatros's `/build` knows two. */
function logType(raw: string | undefined, merged: boolean): LogType {
  if (raw === undefined || raw === "stdout") return "stdout";
  if (raw === "stderr") return "stderr";
  if (raw === "all" && merged) return "all";
  throw new AppError("bad_request", merged ? "log type must be all, stdout or stderr" : "log must be stdout or stderr");
}

function decodePath(raw: string): string {
  try {
    return decodeURIComponent(raw);
  } catch {
    throw new AppError("bad_request", "build id is not valid percent-encoding");
  }
}

async function findEntry(registry: AppDeps["registry"], repo: string): Promise<RepoEntry> {
  const wanted = repo
    .toLowerCase()
    .replace(/^https?:\/\//, "")
    .replace(/\.git$/, "");
  if (isRepoKey(wanted)) {
    const entry = await registry.get(wanted);
    if (entry !== undefined) return entry;
  }
  const matches = (await registry.list()).filter((e) => e.key === wanted || e.key.endsWith(`/${wanted}`));
  if (matches.length === 1 && matches[0] !== undefined) return matches[0];
  if (matches.length > 1) {
    throw new AppError(
      "bad_request",
      `${repo} matches ${matches.length} repositories (${matches
        .map((e) => e.key)
        .sort()
        .join(", ")}); give <host>/<owner>/<name>`,
    );
  }
  throw new AppError("not_registered", `repository ${repo} is not registered with petrel`);
}
