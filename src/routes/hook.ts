import type { IncomingMessage } from "node:http";
import type { Context } from "hono";
import { Hono } from "hono";
import { payloadForBuilder } from "../builds/albatros.js";
import { metaForBuilder, planBuild } from "../builds/plan.js";
import { AppError } from "../errors.js";
import { parseDelivery } from "../gitea/events.js";
import { extractPayload, verifyHook } from "../gitea/signature.js";
import { repoKeyFromUrl } from "../registry/schema.js";
import type { AppDeps } from "./deps.js";

/** Gitea's largest default payload is far below this; anything bigger is not a webhook. */
export const MAX_HOOK_BODY = 1024 * 1024;

/** Links a client follows for one build. */
export function buildLinks(publicUrl: string, id: string): { build: string; status: string; logs: string } {
  const path = `${publicUrl}/builds/${encodeURIComponent(id)}`;
  return { build: id, status: path, logs: `${path}/logs` };
}

/**
 * `POST /hook`: authenticate the delivery against the entry of the repository it names, decide the build,
 * and answer only once Nomad has accepted the dispatch, so a failed delivery can simply be redelivered.
 */
export function createHookRoute(deps: AppDeps): Hono {
  const app = new Hono();
  app.post("/hook", async (c) => {
    const delivery = c.req.header("x-gitea-delivery") ?? c.req.header("x-forgejo-delivery") ?? c.req.header("x-github-delivery");
    let log = deps.log.child(delivery === undefined ? {} : { delivery });
    const outcome = (label: string) => deps.metrics.deliveries.inc({ outcome: label });
    try {
      const body = await readBody(c, MAX_HOOK_BODY);
      const extracted = extractPayload(c.req.header("content-type"), body);
      if ("error" in extracted) {
        throw new AppError(extracted.error, extracted.message);
      }
      let json: unknown;
      try {
        json = JSON.parse(extracted.json);
      } catch (err) {
        throw new AppError("malformed_body", `webhook body is not valid JSON: ${(err as Error).message}`);
      }
      const htmlUrl = repositoryUrl(json);
      if (htmlUrl === undefined) {
        throw new AppError("malformed_body", "webhook body names no repository (repository.html_url is missing)");
      }
      const key = repoKeyFromUrl(htmlUrl);
      if (key === undefined) {
        throw new AppError("malformed_body", `repository.html_url ${JSON.stringify(htmlUrl.slice(0, 200))} is not a repository URL`);
      }
      log = log.child({ repo: key });

      const entry = await deps.registry.get(key);
      if (entry === undefined) {
        throw new AppError("not_registered", `repository ${key} is not registered with petrel`);
      }

      const verdict = verifyHook({
        body: extracted.signed,
        header: (name) => c.req.header(name),
        queryToken: c.req.query("token"),
        auth: entry.config.hook,
      });
      if (!verdict.ok) throw new AppError("unauthorized", `webhook authentication failed: ${verdict.reason}`);

      const parsed = parseDelivery((name) => c.req.header(name), json);
      if (parsed.kind === "malformed") throw new AppError("malformed_body", parsed.message);

      const plan = planBuild({
        delivery: parsed,
        entry,
        flavor: c.req.query("flavor") ?? "default",
        defaultBuilder: deps.defaultBuilder,
      });
      if (plan.kind === "skip") {
        log.info({ reason: plan.reason }, "delivery skipped");
        outcome("skipped");
        return c.json({ status: "skipped", reason: plan.reason }, 200);
      }
      if (plan.kind === "reject") throw new AppError(plan.code, plan.message);

      const started = performance.now();
      let result: Awaited<ReturnType<typeof deps.backend.dispatch>>;
      try {
        // No abort on client disconnect: once authenticated, a dispatch runs to its end (or its retry
        // budget), so a delivery Gitea gave up on is still either dispatched or not, never half-done.
        const params = await deps.backend.parameterized(plan.builder);
        const payload = payloadForBuilder(plan.payload, params);
        result = await deps.backend.dispatch({
          builder: plan.builder,
          meta: metaForBuilder(plan.meta, params),
          ...(payload === undefined ? {} : { payload }),
          idempotencyToken: plan.idempotencyToken,
        });
        deps.metrics.dispatchSeconds.observe({ result: "ok" }, (performance.now() - started) / 1000);
      } catch (err) {
        deps.metrics.dispatchSeconds.observe({ result: "error" }, (performance.now() - started) / 1000);
        throw err;
      }
      log = log.child({ build: result.id });
      const links = buildLinks(deps.publicUrl, result.id);
      const gitea = entry.config.gitea;
      const pending =
        gitea === undefined
          ? undefined
          : {
              baseUrl: gitea.url,
              token: gitea.token,
              fullName: plan.repo,
              sha: plan.commit,
              state: "pending" as const,
              context: `petrel/${plan.flavor}`,
              description: "build dispatched",
              targetUrl: links.status,
            };
      if (result.duplicate) {
        log.info({ commit: plan.commit, ref: plan.ref }, "duplicate delivery; build already dispatched");
        outcome("duplicate");
        // The first attempt may have dispatched and then failed before its status (a lost answer, a crash):
        // post it now unless the forge already shows this build, so a redelivery never posts it twice.
        if (pending !== undefined) deps.forwardStatus?.(pending, result.id);
        return c.json(links, 200);
      }
      log.info({ commit: plan.commit, ref: plan.ref, event: plan.event, trusted: plan.trusted }, "build dispatched");
      outcome("dispatched");
      if (pending !== undefined) deps.reporter.report(pending);
      return c.json(links, 201);
    } catch (err) {
      outcome(err instanceof AppError ? err.code : "internal");
      // Logged once, where it becomes the response (createApp's error handler).
      throw err;
    }
  });
  return app;
}

const tooLarge = () => new AppError("payload_too_large", `webhook body is larger than ${MAX_HOOK_BODY} bytes`);

/**
 * The raw body, at most `max` bytes. Under @hono/node-server it is read straight from Node's request: going
 * through the web `Request` object costs more CPU than everything else a webhook needs.
 */
async function readBody(c: Context, max: number): Promise<Buffer> {
  const declared = Number(c.req.header("content-length") ?? Number.NaN);
  if (declared > max) throw tooLarge();
  const incoming = (c.env as { incoming?: IncomingMessage } | undefined)?.incoming;
  if (incoming === undefined || typeof incoming.on !== "function") {
    const body = Buffer.from(await c.req.arrayBuffer());
    if (body.length > max) throw tooLarge();
    return body;
  }
  const parts: Buffer[] = [];
  let size = 0;
  try {
    for await (const chunk of incoming as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > max) {
        incoming.resume();
        throw tooLarge();
      }
      parts.push(chunk);
    }
  } catch (err) {
    if (err instanceof AppError) throw err;
    // Node ends the body with "aborted" (ECONNRESET) when the client hangs up or the request timeout cuts it off.
    throw new AppError("aborted", `the client closed the connection after ${size} bytes of the body`, { cause: err });
  }
  return Buffer.concat(parts, size);
}

function repositoryUrl(json: unknown): string | undefined {
  if (typeof json !== "object" || json === null) return undefined;
  const repo = (json as { repository?: unknown }).repository;
  if (typeof repo !== "object" || repo === null) return undefined;
  const url = (repo as { html_url?: unknown }).html_url;
  return typeof url === "string" ? url : undefined;
}
