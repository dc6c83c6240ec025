import type { Context } from "hono";
import { Hono } from "hono";
import { HTTPException } from "hono/http-exception";
import { AppError, UpstreamError } from "./errors.js";
import { createPagesRoute } from "./pages/routes.js";
import { createSessions } from "./pages/session.js";
import { createAccess } from "./routes/access.js";
import { createBuildActions } from "./routes/actions.js";
import { createBuildsRoute } from "./routes/builds.js";
import type { AppDeps } from "./routes/deps.js";
import { createHealthRoute } from "./routes/health.js";
import { createHookRoute } from "./routes/hook.js";

/** petrel's error body (README, "HTTP API"): `{"error": {"code", "message"}}`. */
export function errorBody(code: string, message: string): { error: { code: string; message: string } } {
  return { error: { code, message } };
}

/** Builds the Hono app: routes, and the one place errors become responses. */
export function createApp(deps: AppDeps): Hono {
  const app = new Hono();
  app.route("/", createHookRoute(deps));
  app.route("/", createHealthRoute(deps));
  const sessions = createSessions(deps.adminToken);
  const access = createAccess(deps, sessions);
  const actions = createBuildActions(deps, access);
  // Pages first: they answer requests that prefer HTML and hand the rest on to the API's routes.
  app.route("/", createPagesRoute(deps, access, actions, sessions));
  app.route("/", createBuildsRoute(deps, access, actions));

  app.notFound((c) => c.json(errorBody("not_found", `no route for ${c.req.method} ${c.req.path}`), 404));
  app.onError((err, c) => respondError(deps, c, err));
  return app;
}

function respondError(deps: AppDeps, c: Context, err: unknown): Response {
  if (err instanceof AppError) {
    const upstream = err instanceof UpstreamError ? { upstream: err.service, upstreamStatus: err.upstreamStatus } : undefined;
    if (upstream) deps.metrics.upstreamErrors.inc({ service: upstream.upstream, status: String(upstream.upstreamStatus) });
    // A client that hung up mid-request is routine on the internet, not petrel's problem.
    const level = err.code === "aborted" ? "debug" : err.status >= 500 ? "error" : "info";
    deps.log[level]({ code: err.code, status: err.status, path: c.req.path, ...upstream, err: err.message }, "request failed");
    const headers: Record<string, string> = err.status === 401 ? { "WWW-Authenticate": 'Bearer realm="petrel"' } : {};
    return c.json(errorBody(err.code, err.message), err.status as 400, headers);
  }
  if (err instanceof HTTPException) {
    return c.json(errorBody("bad_request", err.message || "bad request"), err.status);
  }
  deps.log.error({ err, path: c.req.path }, "unexpected error");
  return c.json(errorBody("internal", "internal error; see petrel's log"), 500);
}
