import { serve } from "@hono/node-server";
import type { ServerType } from "@hono/node-server";
import { Agent } from "undici";
import { createApp } from "./app.js";
import type { BuildBackend } from "./builds/backend.js";
import { readConfig, ConfigError } from "./config.js";
import type { Config } from "./config.js";
import { consulAgentOptions, createConsulClient } from "./consul/client.js";
import { createConsulRegistry } from "./consul/registry.js";
import { createGiteaClient, createStatusReporter } from "./gitea/client.js";
import { createLogger } from "./log.js";
import type { Logger } from "./log.js";
import { createMetrics } from "./metrics.js";
import { createNomadBackend } from "./nomad/backend.js";
import { createNomadClient, nomadAgentOptions } from "./nomad/client.js";
import { createFileRegistry } from "./registry/file.js";
import type { Registry } from "./registry/schema.js";

/** How long SIGTERM waits for in-flight deliveries and status reports before exiting anyway. */
const DRAIN_MS = 10_000;

/** `petrel serve`: the composition root, the only place that reads process.env and listens. */
export async function serveCommand(env: NodeJS.ProcessEnv = process.env): Promise<number> {
  let config: Config;
  try {
    config = readConfig(env);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`petrel: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
  const log = createLogger({ level: config.logLevel });
  const closers: Array<() => Promise<unknown>> = [];
  let registry: Registry;
  let backend: BuildBackend;
  const extraHealth: Record<string, (s: AbortSignal) => Promise<{ ok: boolean; error?: string }>> = {};

  const forgeAgent = new Agent({ connections: 16 });
  closers.push(() => forgeAgent.close());

  if (config.mode === "cluster" && config.nomad !== undefined) {
    const consulAgent = new Agent(consulAgentOptions(config.consul.tls));
    const nomadAgent = new Agent(nomadAgentOptions(config.nomad.tls));
    closers.push(() => consulAgent.close(), () => nomadAgent.close());
    const consul = createConsulClient({
      addr: config.consul.addr,
      dispatcher: consulAgent,
      log,
      ...(config.consul.token === undefined ? {} : { token: config.consul.token }),
    });
    registry = createConsulRegistry({ consul, prefix: config.consulPrefix, defaultBuilder: config.builderJob, log });
    const nomad = createNomadClient({
      addr: config.nomad.addr,
      dispatcher: nomadAgent,
      log,
      ...(config.nomad.token === undefined ? {} : { token: config.nomad.token }),
      ...(config.nomad.namespace === undefined ? {} : { namespace: config.nomad.namespace }),
      ...(config.nomad.region === undefined ? {} : { region: config.nomad.region }),
    });
    backend = createNomadBackend({ nomad });
    extraHealth.consul = async (signal) => {
      await consul.leader(signal);
      return { ok: true };
    };
  } else {
    registry = await createFileRegistry({ path: config.configPath, defaultBuilder: config.builderJob, log });
    const { createLocalBackend } = await import("./local/backend.js");
    backend = createLocalBackend({ config, log });
  }
  closers.push(() => registry.close());

  const metrics = createMetrics({
    staleness: () => {
      const h = registry.health();
      return { seconds: h.stalenessSeconds, ok: h.ok };
    },
  });
  const gitea = createGiteaClient({ dispatcher: forgeAgent, log });
  const reporter = createStatusReporter({
    client: gitea,
    log,
    onResult: (state, ok) => metrics.statusesPosted.inc({ state, result: ok ? "ok" : "failed" }),
  });

  const app = createApp({
    log,
    metrics,
    registry,
    backend,
    reporter,
    publicUrl: config.publicUrl,
    defaultBuilder: config.builderJob,
    extraHealth,
  });

  const server = await listen(app.fetch, config, log);
  log.info({ mode: config.mode, listen: `${config.listen.host}:${config.listen.port}`, url: config.publicUrl }, "petrel listening");

  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = async (signal: string) => {
      if (stopping) return;
      stopping = true;
      log.info({ signal }, "stopping: no new connections, finishing in-flight deliveries");
      const deadline = setTimeout(() => {
        log.warn("drain took too long; exiting with work in flight");
        resolve(1);
      }, DRAIN_MS);
      deadline.unref();
      await new Promise<void>((done) => server.close(() => done()));
      await reporter.drain();
      await Promise.allSettled(closers.map((close) => close()));
      clearTimeout(deadline);
      log.info("stopped");
      log.flush();
      resolve(0);
    };
    process.once("SIGTERM", () => void stop("SIGTERM"));
    process.once("SIGINT", () => void stop("SIGINT"));
  });
}

function listen(fetch: Parameters<typeof serve>[0]["fetch"], config: Config, log: Logger): Promise<ServerType> {
  return new Promise((resolve, reject) => {
    const server = serve({ fetch, hostname: config.listen.host, port: config.listen.port }, () => resolve(server));
    server.once("error", (err: NodeJS.ErrnoException) => {
      log.fatal({ code: err.code }, `cannot listen on ${config.listen.host}:${config.listen.port}`);
      reject(new ConfigError("PETREL_LISTEN", `cannot listen on ${config.listen.host}:${config.listen.port} (${err.code ?? err.message})`));
    });
  });
}
