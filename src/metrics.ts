import { Counter, Gauge, Histogram, Registry } from "prom-client";

/** petrel's Prometheus metrics on a registry of their own (no global state). */
export interface Metrics {
  registry: Registry;
  deliveries: Counter<"outcome">;
  dispatchSeconds: Histogram<"result">;
  upstreamErrors: Counter<"service" | "status">;
  registryStaleness: Gauge;
  registryUp: Gauge;
  statusesPosted: Counter<"state" | "result">;
  logFollowers: Gauge;
  logBytes: Counter;
  eventReconnects: Counter;
  eventLagSeconds: Gauge;
  connectionsDropped: Counter;
  buildsSuperseded: Counter;
  buildsTimedOut: Counter;
  cronBuilds: Counter<"result">;
  leader: Gauge;
  leaderRenewFailures: Counter;
}

/** Creates the metrics; `staleness` is read at scrape time. */
export function createMetrics(options: { staleness: () => { seconds: number; ok: boolean } }): Metrics {
  const registry = new Registry();
  const deliveries = new Counter({
    name: "petrel_webhook_deliveries_total",
    help: "Webhook deliveries by outcome (dispatched, duplicate, skipped, or the error code).",
    labelNames: ["outcome"] as const,
    registers: [registry],
  });
  const dispatchSeconds = new Histogram({
    name: "petrel_dispatch_duration_seconds",
    help: "Time from a verified webhook to Nomad accepting the dispatch, retries included.",
    labelNames: ["result"] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [registry],
  });
  const upstreamErrors = new Counter({
    name: "petrel_upstream_errors_total",
    help: "Failed calls to Nomad, Consul and Gitea by service and HTTP status (0 = no answer).",
    labelNames: ["service", "status"] as const,
    registers: [registry],
  });
  const registryStaleness = new Gauge({
    name: "petrel_registry_staleness_seconds",
    help: "Seconds since the repository registry last confirmed its view with Consul or the config file.",
    registers: [registry],
    collect() {
      this.set(options.staleness().seconds);
    },
  });
  const registryUp = new Gauge({
    name: "petrel_registry_up",
    help: "1 when the registry's source answers, 0 while petrel serves its last known good entries.",
    registers: [registry],
    collect() {
      this.set(options.staleness().ok ? 1 : 0);
    },
  });
  const statusesPosted = new Counter({
    name: "petrel_commit_statuses_total",
    help: "Commit statuses for the forge by state and result (ok, failed, superseded by a newer one).",
    labelNames: ["state", "result"] as const,
    registers: [registry],
  });
  const logFollowers = new Gauge({
    name: "petrel_log_followers",
    help: "Log streams being served right now (plain text and SSE).",
    registers: [registry],
  });
  const logBytes = new Counter({
    name: "petrel_log_bytes_total",
    help: "Build log bytes sent to clients.",
    registers: [registry],
  });
  const eventReconnects = new Counter({
    name: "petrel_nomad_event_stream_reconnects_total",
    help: "Reconnects of the Nomad event stream that drives commit statuses.",
    registers: [registry],
  });
  const eventLagSeconds = new Gauge({
    name: "petrel_nomad_event_lag_seconds",
    help: "Seconds between an allocation change in Nomad and petrel seeing it.",
    registers: [registry],
  });
  const connectionsDropped = new Counter({
    name: "petrel_http_connections_dropped_total",
    help: "Connections closed at once because PETREL_MAX_CONNECTIONS were already open.",
    registers: [registry],
  });
  const buildsSuperseded = new Counter({
    name: "petrel_builds_superseded_total",
    help: "Builds stopped because a newer build of their branch or pull request started.",
    registers: [registry],
  });
  const buildsTimedOut = new Counter({
    name: "petrel_builds_timed_out_total",
    help: "Builds stopped because they ran longer than their timeout.",
    registers: [registry],
  });
  const cronBuilds = new Counter({
    name: "petrel_cron_builds_total",
    help: "Runs of cron schedules by result (dispatched, duplicate: another leader had dispatched it, failed).",
    labelNames: ["result"] as const,
    registers: [registry],
  });
  const leader = new Gauge({
    name: "petrel_leader",
    help: "1 while this replica leads (holds the Nomad lock and posts statuses, archives, runs policies), else 0.",
    registers: [registry],
  });
  const leaderRenewFailures = new Counter({
    name: "petrel_leader_lock_renewal_failures_total",
    help: "Renewals of the leader lock that failed (no answer, an error, or the lock was lost).",
    registers: [registry],
  });
  return {
    buildsSuperseded,
    buildsTimedOut,
    cronBuilds,
    leader,
    leaderRenewFailures,
    connectionsDropped,
    eventReconnects,
    eventLagSeconds,
    logFollowers,
    logBytes,
    registry,
    deliveries,
    dispatchSeconds,
    upstreamErrors,
    registryStaleness,
    registryUp,
    statusesPosted,
  };
}
