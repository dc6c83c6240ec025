import { setMaxListeners } from "node:events";
import type { Server } from "node:http";
import { serve } from "@hono/node-server";
import { Agent } from "undici";
import { createApp } from "./app.js";
import type { FinishedBuilds } from "./archive/sweep.js";
import type { Build, BuildBackend, BuildReader } from "./builds/backend.js";
import { createForwardStatuses } from "./builds/forward.js";
import { createStatusNotifier } from "./builds/statuses.js";
import { createBuildWatch } from "./builds/watch.js";
import { createNomadLeadership, type NomadLeadership, whileLeading } from "./cluster/election.js";
import { createSoleLeadership, type Leadership } from "./cluster/leadership.js";
import type { Config } from "./config.js";
import { ConfigError, readConfig } from "./config.js";
import { consulAgentOptions, createConsulClient } from "./consul/client.js";
import { createConsulRegistry } from "./consul/registry.js";
import { AppError, errorMessage } from "./errors.js";
import { createGiteaClient, createStatusReporter } from "./gitea/client.js";
import { tlsAgentOptions } from "./http/tls.js";
import type { Logger } from "./log.js";
import { createLogger } from "./log.js";
import { createMetrics } from "./metrics.js";
import { createPolicies } from "./policies/policies.js";
import type { Registry } from "./registry/schema.js";
import { untilAborted } from "./util/abort.js";

/** How long SIGTERM waits for in-flight deliveries, log streams and status reports before exiting anyway. */
const DRAIN_MS = 10_000;

type HealthCheck = (signal: AbortSignal) => Promise<{ ok: boolean; error?: string }>;

/** A running petrel: its address and a way to stop it as SIGTERM does. */
export interface RunningPetrel {
  url: string;
  stop(): Promise<void>;
}

/** `petrel serve`: reads the environment, listens, and stops cleanly on SIGTERM/SIGINT. */
export async function serveCommand(env: NodeJS.ProcessEnv = process.env, cwd: string = process.cwd()): Promise<number> {
  let config: Config;
  try {
    config = readConfig(env, cwd);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`petrel: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
  const log = createLogger({ level: config.logLevel, pretty: process.stdout.isTTY === true });
  let petrel: RunningPetrel;
  try {
    petrel = await startPetrel(config, log, env);
  } catch (err) {
    // Once, in plain words, on stderr: a supervisor shows it and restarts on the exit code.
    log.flush();
    process.stderr.write(`petrel: ${startFailure(err)}\n`);
    return 2;
  }
  return new Promise<number>((resolve) => {
    const stop = (signal: string) => {
      log.info({ signal }, "stopping: no new connections, finishing in-flight work");
      const deadline = setTimeout(() => {
        log.warn("drain took too long; exiting with work in flight");
        log.flush();
        resolve(1);
      }, DRAIN_MS);
      deadline.unref();
      void petrel.stop().then(() => {
        clearTimeout(deadline);
        log.info("stopped");
        log.flush();
        resolve(0);
      });
    };
    process.once("SIGTERM", () => stop("SIGTERM"));
    process.once("SIGINT", () => stop("SIGINT"));
  });
}

/** Why petrel could not start, as one line: the setting or file and what was wrong with it. */
function startFailure(err: unknown): string {
  if (err instanceof AppError) return err.message.replace(/\s*\n\s*/g, " ");
  const e = err as NodeJS.ErrnoException;
  const message = e instanceof Error ? e.message : String(err);
  return `could not start: ${message.replace(/\s*\n\s*/g, " ")}`;
}

/** What tests change of a start: the clock (reconcile window, archive settle), who leads, the settle itself. */
export interface StartOptions {
  now?: () => number;
  leadership?: Leadership;
  /** The archiver's wait for a final build's last log bytes (1 s by default). */
  archiveSettleMs?: number;
  /** How often the leader deletes the stop reasons of builds Nomad forgot (hourly, the first a minute in). */
  stopMarksPruneMs?: number;
}

const STOP_MARKS_FIRST_PRUNE_MS = 60_000;
const STOP_MARKS_PRUNE_MS = 3_600_000;

/** The composition root: builds every collaborator from the config, listens, and returns how to stop. */
export async function startPetrel(config: Config, log: Logger, env: NodeJS.ProcessEnv, options: StartOptions = {}): Promise<RunningPetrel> {
  const closers: Array<() => Promise<unknown>> = [];
  try {
    return await compose(config, log, env, closers, options);
  } catch (err) {
    // A start that failed must not leave the registry watch or the event stream retrying in the background.
    await Promise.allSettled(closers.reverse().map((close) => close()));
    throw err;
  }
}

async function compose(
  config: Config,
  log: Logger,
  env: NodeJS.ProcessEnv,
  closers: Array<() => Promise<unknown>>,
  options: StartOptions,
): Promise<RunningPetrel> {
  const now = options.now ?? Date.now;
  if (config.deprecated.length > 0) {
    log.warn({ deprecated: config.deprecated }, `deprecated settings still honoured, rename them: ${config.deprecated.join(", ")}`);
  }
  const extraHealth: Record<string, HealthCheck> = {};

  const forgeAgent = new Agent({ connections: 16 });
  closers.push(() => forgeAgent.close());
  let registry: Registry | undefined;
  const metrics = createMetrics({
    staleness: () => {
      const h = registry?.health();
      return { seconds: h?.stalenessSeconds ?? 0, ok: h?.ok ?? false };
    },
  });
  const gitea = createGiteaClient({ dispatcher: forgeAgent, log });
  const reporter = createStatusReporter({
    client: gitea,
    log,
    onResult: (state, _ok, outcome) => metrics.statusesPosted.inc({ state, result: outcome }),
  });
  // Only statuses that move a commit forward, whichever replica posts (SPEC §10).
  const forward = createForwardStatuses({ client: gitea, reporter, log });
  // Single-machine mode is one process; cluster mode replaces this with the Nomad lock below (tests may pass their own).
  let leadership: Leadership = options.leadership ?? createSoleLeadership();
  let nomadLeadership: NomadLeadership | undefined;

  let backend: BuildBackend;
  let reader: BuildReader;
  // Builds report transitions through this; it is bound once the registry exists.
  let notify: (build: Build) => void = () => undefined;
  // Bound once the live reader exists; archives each build that reached a final state.
  let archive: (build: Build) => void = () => undefined;
  // Bound once the watch exists; a running build's viewers hear its transitions at once.
  let watched: (build: Build) => void = () => undefined;
  // Build policies (SPEC §11): bound once the reader exists; a stop reason is put on the build before anyone sees it.
  let observe: (build: Build) => void = () => undefined;
  let withReason: (build: Build) => Promise<Build> = (build) => Promise.resolve(build);
  // Viewers on any replica hear a transition; statuses, archiving and policies happen once, on the leader.
  // The backend's builds that may be final, for the archive's start-up pass.
  let finished: FinishedBuilds;
  const onBuild = (build: Build) => {
    void withReason(build).then((b) => {
      watched(b);
      if (!leadership.isLeader()) return;
      notify(b);
      archive(b);
      observe(b);
    });
  };

  if (config.mode === "cluster" && config.nomad !== undefined) {
    const { createNomadClient } = await import("./nomad/client.js");
    const { createNomadBackend } = await import("./nomad/backend.js");
    const { createNomadBuildReader } = await import("./nomad/builds.js");
    const { createNomadTracker } = await import("./nomad/tracker.js");
    const { nomadFinishedBuilds } = await import("./nomad/finished.js");
    const consulAgent = new Agent(consulAgentOptions(config.consul.tls));
    const nomadAgent = new Agent(tlsAgentOptions("Nomad", config.nomad.tls));
    closers.push(
      () => consulAgent.close(),
      () => nomadAgent.close(),
    );
    const consul = createConsulClient({
      addr: config.consul.addr,
      dispatcher: consulAgent,
      log,
      ...(config.consul.token === undefined ? {} : { token: config.consul.token }),
    });
    registry = createConsulRegistry({
      consul,
      prefix: config.consulPrefix,
      ...(config.albatrosPrefix === undefined ? {} : { albatrosPrefix: config.albatrosPrefix }),
      defaultBuilder: config.builderJob,
      log,
      // A webhook that arrives while Consul has never answered must fail inside Gitea's 5 s delivery timeout.
      firstLoadTimeoutMs: 3000,
      onStale: (h) =>
        log.warn({ staleness: h.stalenessSeconds, err: h.lastError }, h.ok ? "registry current again" : "registry serving a stale view"),
    });
    const nomad = createNomadClient({
      addr: config.nomad.addr,
      dispatcher: nomadAgent,
      log,
      ...(config.nomad.token === undefined ? {} : { token: config.nomad.token }),
      ...(config.nomad.namespace === undefined ? {} : { namespace: config.nomad.namespace }),
      ...(config.nomad.region === undefined ? {} : { region: config.nomad.region }),
    });
    backend = createNomadBackend({ nomad });
    const consulRegistry = registry;
    const builders = () => consulRegistry.builders();
    const { createConsulStopMarks, createMarkedReader, withStopReason } = await import("./policies/marks.js");
    const marks = createConsulStopMarks({ consul, prefix: config.consulPrefix });
    reader = createMarkedReader(createNomadBuildReader({ nomad, builders, log }), marks);
    withReason = (build) => withStopReason(build, marks).catch(() => build);
    const nomadFinished = nomadFinishedBuilds({ nomad, builders });
    finished = async function* (signal) {
      // The builders come from the registry: wait for its first load (or its failure) before listing.
      await untilAborted(
        consulRegistry.list().catch(() => undefined),
        signal,
      );
      yield* nomadFinished(signal);
    };
    extraHealth.consul = async (signal) => {
      await consul.leader(signal);
      return { ok: true };
    };
    notify = createStatusNotifier({
      registry,
      reporter,
      publicUrl: config.publicUrl,
      log,
      post: (report, build) => forward.report({ ...report, build: build.id }, leadership.term()),
    });
    if (options.leadership === undefined) {
      nomadLeadership = createNomadLeadership({
        nomad,
        ...config.leader,
        log,
        metrics: { leader: metrics.leader, renewFailures: metrics.leaderRenewFailures },
      });
      leadership = nomadLeadership;
    }
    // Each term follows Nomad afresh: its first reconciliation posts what the last leader left undone.
    closers.push(
      whileLeading(leadership, () => {
        forward.reset();
        const tracker = createNomadTracker({
          nomad,
          builders,
          log,
          onBuild,
          now,
          metrics: { reconnects: metrics.eventReconnects, lagSeconds: metrics.eventLagSeconds },
        });
        void tracker
          .start()
          .catch((err: unknown) =>
            log.error({ err: (err as Error).message }, "first reconciliation of build statuses failed; the event stream goes on"),
          );
        return () => tracker.stop();
      }),
    );
    // Stop reasons of builds Nomad has forgotten: the leader deletes them, so the keys do not pile up forever.
    closers.push(
      whileLeading(leadership, (term) => {
        const exists = async (id: string, signal?: AbortSignal) =>
          (await nomad.readJob(id, signal === undefined ? {} : { signal })) !== undefined;
        const pass = () =>
          void marks
            .prune(exists, term)
            .then((deleted) => {
              if (deleted > 0) log.info({ deleted }, "deleted the stop reasons of builds Nomad has forgotten");
            })
            .catch((err: unknown) => {
              if (!term.aborted) log.warn({ err: (err as Error).message }, "pruning stop reasons failed; the next pass tries again");
            });
        const first = setTimeout(pass, options.stopMarksPruneMs ?? STOP_MARKS_FIRST_PRUNE_MS);
        const every = setInterval(pass, options.stopMarksPruneMs ?? STOP_MARKS_PRUNE_MS);
        first.unref();
        every.unref();
        return async () => {
          clearTimeout(first);
          clearInterval(every);
        };
      }),
    );
  } else {
    const { createFileRegistry } = await import("./registry/file.js");
    const { createLocalBackend } = await import("./local/backend.js");
    const fileRegistry = await createFileRegistry({ path: config.configPath, defaultBuilder: config.builderJob, log });
    registry = fileRegistry;
    notify = createStatusNotifier({ registry: fileRegistry, reporter, publicUrl: config.publicUrl, log });
    const local = await createLocalBackend({
      dataDir: config.dataDir,
      concurrency: config.localConcurrency,
      keep: config.archiveKeep,
      maxAgeMs: config.archiveMaxAgeDays * 24 * 3600 * 1000,
      log,
      env,
      configPath: config.configPath,
      onTransition: onBuild,
    });
    backend = local;
    reader = local;
    const { finishedOfReader } = await import("./archive/sweep.js");
    finished = finishedOfReader(local);
    closers.push(() => local.close());
  }
  const activeRegistry = registry;
  closers.push(() => activeRegistry.close());
  const policies = createPolicies({
    leadership,
    registry: activeRegistry,
    backend,
    reader,
    log,
    defaultBuilder: config.builderJob,
    metrics: { superseded: metrics.buildsSuperseded, timedOut: metrics.buildsTimedOut, cron: metrics.cronBuilds },
  });
  observe = (build) => policies.observe(build);
  closers.push(() => policies.close());

  let archiveEnabled = false;
  if (config.archiveDir === undefined) {
    log.warn(
      "PETREL_ARCHIVE_DIR is unset: finished builds are not archived, so their pages and logs (and commit-status links) are gone once Nomad garbage-collects them",
    );
  } else {
    const { createArchiveStore } = await import("./archive/store.js");
    const { createArchiver } = await import("./archive/archiver.js");
    const { createArchivedReader } = await import("./archive/reader.js");
    const { createArchiveSweep } = await import("./archive/sweep.js");
    const store = createArchiveStore({ dir: config.archiveDir });
    // Listings read the index from memory: loaded once now, in the background (the first listing waits for it).
    store
      .ready()
      .catch((err: unknown) => log.error({ dir: config.archiveDir, err: errorMessage(err) }, "could not read the archive's index"));
    const archiver = createArchiver({
      store,
      reader,
      log,
      metrics: metrics.registry,
      now,
      ...(options.archiveSettleMs === undefined ? {} : { settleMs: options.archiveSettleMs }),
    });
    closers.push(() => archiver.stop());
    // Builds that ended while petrel was down, or were still queued when it stopped, as long as the backend has them.
    const sweep = createArchiveSweep({ store, archiver, finished, leadership, log });
    closers.push(() => sweep.stop());
    const { createArchiveRetention } = await import("./archive/retention.js");
    // Pruning is work that must happen once: replicas sharing one archive would otherwise race on its files.
    closers.push(
      whileLeading(leadership, () => {
        const retention = createArchiveRetention({
          store,
          keep: config.archiveKeep,
          maxAgeMs: config.archiveMaxAgeDays * 24 * 3600 * 1000,
          log,
          now,
        });
        return async () => retention.stop();
      }),
    );
    archive = (build) => archiver.onBuild(build);
    reader = createArchivedReader(reader, store, log);
    archiveEnabled = true;
  }

  const watch = createBuildWatch({ reader, log });
  watched = (build) => watch.onBuild(build);
  // Pushed last, so closed first: its streams read from the backend closed before it.
  closers.push(() => watch.close());

  const shutdown = new AbortController();
  // Every open log stream listens for the shutdown (and lets go when it ends): a hundred viewers are no leak.
  setMaxListeners(0, shutdown.signal);
  const app = createApp({
    watch,
    shutdown: shutdown.signal,
    log,
    metrics,
    registry: activeRegistry,
    backend,
    reader,
    reporter,
    publicUrl: config.publicUrl,
    defaultBuilder: config.builderJob,
    extraHealth,
    archiveEnabled,
    forwardStatus: (report, build) => forward.report({ ...report, build }),
    ...(nomadLeadership === undefined ? {} : { leadership: nomadLeadership }),
    ...(config.adminToken === undefined ? {} : { adminToken: config.adminToken }),
  });

  const server = await listen(app.fetch, config);
  nomadLeadership?.start();
  server.on("drop", () => metrics.connectionsDropped.inc());
  const address = server.address();
  const port = typeof address === "object" && address !== null ? address.port : config.listen.port;
  const host = config.listen.host.includes(":") ? `[${config.listen.host}]` : config.listen.host;
  log.info(
    {
      mode: config.mode,
      listen: `${host}:${port}`,
      url: config.publicUrl,
      ...(config.mode === "local" ? { config: config.configPath, data: config.dataDir } : {}),
      ...(config.archiveDir === undefined ? {} : { archive: config.archiveDir }),
    },
    "petrel listening",
  );

  let stopped: Promise<void> | undefined;
  return {
    url: `http://${host}:${port}`,
    stop() {
      stopped ??= (async () => {
        // Stop accepting first; in-flight requests finish. A keep-alive socket turns idle only after its last
        // response, and would otherwise hold close() until the keep-alive timeout: sweep until all are gone.
        const closed = new Promise<void>((done) => server.close(() => done()));
        shutdown.abort();
        server.closeIdleConnections();
        const sweep = setInterval(() => server.closeIdleConnections(), 50);
        await closed;
        clearInterval(sweep);
        // Released while Nomad's connection is still open, so another replica takes over at once.
        await nomadLeadership?.stop();
        await reporter.drain();
        await Promise.allSettled(closers.reverse().map((close) => close()));
      })();
      return stopped;
    },
  };
}

function listen(fetch: Parameters<typeof serve>[0]["fetch"], config: Config): Promise<Server> {
  const timeoutMs = config.requestTimeoutSeconds * 1000;
  return new Promise((resolve, reject) => {
    const server = serve(
      {
        fetch,
        hostname: config.listen.host,
        port: config.listen.port,
        serverOptions: {
          // A slow or stalled client may not hold a connection: headers and body must arrive within the timeout.
          headersTimeout: timeoutMs,
          requestTimeout: timeoutMs,
          // Node checks those timeouts on this interval (30 s by default), which would stretch a short timeout.
          connectionsCheckingInterval: Math.min(1000, Math.max(100, timeoutMs / 4)),
        },
      },
      () => resolve(server as Server),
    ) as Server;
    // Beyond the cap Node closes new sockets at once and emits "drop".
    server.maxConnections = config.maxConnections;
    server.once("error", (err: NodeJS.ErrnoException) => {
      reject(new ConfigError("PETREL_LISTEN", `cannot listen on ${config.listen.host}:${config.listen.port} (${err.code ?? err.message})`));
    });
  });
}
