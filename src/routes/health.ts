import { Hono } from "hono";
import type { AppDeps } from "./deps.js";

const CHECK_TIMEOUT_MS = 2000;

/** `GET /health` (liveness plus reachability) and `GET /metrics` (Prometheus text). */
export function createHealthRoute(deps: AppDeps): Hono {
  const app = new Hono();
  const startedAt = new Date();

  app.get("/health", async (c) => {
    const signal = AbortSignal.timeout(CHECK_TIMEOUT_MS);
    const checks: Record<string, { ok: boolean; error?: string; [k: string]: unknown }> = {};
    const run = async (name: string, check: (s: AbortSignal) => Promise<{ ok: boolean; error?: string }>) => {
      try {
        checks[name] = await check(signal);
      } catch (err) {
        checks[name] = { ok: false, error: err instanceof Error ? err.message : String(err) };
      }
    };
    await Promise.all([
      run(deps.backend.kind, (s) => deps.backend.health(s)),
      ...Object.entries(deps.extraHealth ?? {}).map(([name, check]) => run(name, check)),
    ]);
    checks.registry = { ...deps.registry.health() };
    const ok = Object.values(checks).every((v) => v.ok);
    // Liveness stays 200 while an upstream is down: restarting petrel would not bring Consul back, and the
    // registry keeps serving. `?ready` turns "degraded" into 503 for load balancers and readiness checks.
    const status = ok || c.req.query("ready") === undefined ? 200 : 503;
    const leading = deps.leadership?.isLeader() ?? true;
    const since = deps.leadership ? deps.leadership.since() : startedAt;
    return c.json(
      {
        status: ok ? "ok" : "degraded",
        mode: deps.backend.kind === "nomad" ? "cluster" : "local",
        leader: leading,
        ...(leading && since !== undefined ? { leaderSince: since.toISOString() } : {}),
        ...(deps.leadership?.refused?.() === undefined ? {} : { leaderError: deps.leadership.refused?.() }),
        checks,
      },
      status,
    );
  });

  app.get("/metrics", async (c) => {
    const text = await deps.metrics.registry.metrics();
    return c.text(text, 200, { "Content-Type": deps.metrics.registry.contentType });
  });
  return app;
}
