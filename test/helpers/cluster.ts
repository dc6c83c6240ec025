import type { Hono } from "hono";
import { Agent } from "undici";
import { createApp } from "../../src/app.js";
import type { BuildReader } from "../../src/builds/backend.js";
import { createForwardStatuses } from "../../src/builds/forward.js";
import { createConsulClient } from "../../src/consul/client.js";
import { createConsulRegistry } from "../../src/consul/registry.js";
import type { StatusReporter } from "../../src/gitea/client.js";
import { createGiteaClient, createStatusReporter } from "../../src/gitea/client.js";
import { sign } from "../../src/gitea/signature.js";
import type { Logger } from "../../src/log.js";
import type { Metrics } from "../../src/metrics.js";
import { createMetrics } from "../../src/metrics.js";
import { createNomadBackend } from "../../src/nomad/backend.js";
import { createNomadClient } from "../../src/nomad/client.js";
import type { Registry } from "../../src/registry/schema.js";
import type { ConsulFake } from "../fakes/consul.js";
import { startConsulFake } from "../fakes/consul.js";
import type { GiteaFake } from "../fakes/gitea.js";
import { startGiteaFake } from "../fakes/gitea.js";
import type { NomadFake, NomadFakeOptions } from "../fakes/nomad.js";
import { startNomadFake } from "../fakes/nomad.js";
import { builderJob } from "../nomad/target.js";
import { captureLogs } from "./log-capture.js";

export const HOOK_SECRET = "hook-secret-3f9a1c7e5b2d";
export const GITEA_TOKEN = "gitea-token-8c1e2a4b6d0f";
export const DEPLOY_TOKEN = "deploy-token-value-5e7a9c";
export const DEPLOY_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nkey-material-71b3d5f9\n-----END OPENSSH PRIVATE KEY-----\n";
export const REPO_KEY = "git.example.test/acme/widgets";
export const ADMIN_TOKEN = "admin-token-0123456789abcdef";

/** The environment of a cluster-mode petrel against the fakes (any free port, an admin token), with `extra` on top. */
export function clusterEnv(
  fakes: { consul: { url: string }; nomad: { url: string } },
  extra: Record<string, string> = {},
): Record<string, string> {
  return {
    NOMAD_ADDR: fakes.nomad.url,
    CONSUL_HTTP_ADDR: fakes.consul.url,
    PETREL_LISTEN: "127.0.0.1:0",
    PETREL_URL: "https://ci.example.test",
    PETREL_ADMIN_TOKEN: ADMIN_TOKEN,
    ...extra,
  };
}

/** Everything a webhook touches, for real: Consul, Nomad and Gitea fakes on loopback and petrel's app. */
export interface Cluster {
  app: Hono;
  consul: ConsulFake;
  nomad: NomadFake;
  gitea: GiteaFake;
  registry: Registry;
  reporter: StatusReporter;
  metrics: Metrics;
  logs: () => string;
  /** Waits for every status check and post in flight. */
  settle(): Promise<void>;
  /** POSTs a webhook body with Gitea's headers, signed with `secret` unless headers override it. */
  deliver(
    body: Buffer | string,
    event: string,
    options?: { headers?: Record<string, string | null>; query?: string; secret?: string },
  ): Promise<Response>;
  close(): Promise<void>;
}

/** A reader for tests of routes that never read builds back. */
const UNUSED_READER: BuildReader = {
  listBuilds: () => Promise.reject(new Error("this test reads no builds")),
  getBuild: () => Promise.reject(new Error("this test reads no builds")),
  logs: () => {
    throw new Error("this test reads no logs");
  },
  cancel: () => Promise.reject(new Error("this test cancels no builds")),
};

/** The test repository's entry, with `extra` fields (a policy, say) on top. */
export function testRepoEntry(giteaUrl: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    hook: { secret: HOOK_SECRET },
    gitea: { url: giteaUrl, token: GITEA_TOKEN },
    trusted: { senders: ["dana"] },
    caches: { npm: "~/.npm" },
    ...extra,
  };
}

/** Seeds the fakes with a builder job and the test repository's entry and secrets. */
export function seedFakes(consul: ConsulFake, nomad: NomadFake, giteaUrl: string, repo?: Record<string, unknown>): void {
  nomad.registerJob(builderJob("builder"));
  consul.set(`petrel/repos/${REPO_KEY}`, JSON.stringify(repo ?? testRepoEntry(giteaUrl)));
  consul.set(`petrel/secrets/${REPO_KEY}`, JSON.stringify({ DEPLOY_TOKEN, deploy_key: DEPLOY_KEY }));
}

/** petrel's app in cluster mode, wired to Consul and Nomad at the given addresses as main.ts wires it. */
export function createClusterApp(options: { consulUrl: string; nomadUrl: string; log: Logger; budgetMs?: number }): {
  app: Hono;
  registry: Registry;
  reporter: StatusReporter;
  metrics: Metrics;
  settle(): Promise<void>;
  close(): Promise<void>;
} {
  const { log } = options;
  const agent = new Agent();
  const consulClient = createConsulClient({ addr: options.consulUrl, dispatcher: agent, log, retry: { retries: 0 } });
  const registry = createConsulRegistry({
    consul: consulClient,
    defaultBuilder: "builder",
    log,
    firstLoadTimeoutMs: 1500,
    watch: { wait: "2s", minIntervalMs: 20, backoff: { minMs: 20, maxMs: 100 } },
  });
  const nomadClient = createNomadClient({ addr: options.nomadUrl, dispatcher: agent, log, retryBudgetMs: options.budgetMs ?? 1500 });
  const metrics = createMetrics({
    staleness: () => {
      const h = registry.health();
      return { seconds: h.stalenessSeconds, ok: h.ok };
    },
  });
  const reporter = createStatusReporter({
    client: createGiteaClient({ dispatcher: agent, log, retries: { retries: 2, minDelayMs: 10, maxDelayMs: 40 } }),
    log,
    onResult: (state, _ok, outcome) => metrics.statusesPosted.inc({ state, result: outcome }),
  });
  const forward = createForwardStatuses({
    client: createGiteaClient({ dispatcher: agent, log, retries: { retries: 2, minDelayMs: 10, maxDelayMs: 40 } }),
    reporter,
    log,
  });
  const app = createApp({
    forwardStatus: (report, build) => forward.report({ ...report, build }),
    log,
    metrics,
    registry,
    backend: createNomadBackend({ nomad: nomadClient }),
    reader: UNUSED_READER,
    reporter,
    publicUrl: "https://ci.example.test",
    defaultBuilder: "builder",
  });
  return {
    app,
    registry,
    reporter,
    metrics,
    async settle() {
      await forward.settled();
      await reporter.drain();
    },
    async close() {
      await forward.settled();
      await reporter.drain();
      await registry.close();
      await agent.close();
    },
  };
}

export async function startCluster(
  options: { nomad?: NomadFakeOptions; budgetMs?: number; repo?: Record<string, unknown> } = {},
): Promise<Cluster> {
  const consul = await startConsulFake();
  const nomad = await startNomadFake(options.nomad);
  const gitea = await startGiteaFake({ token: GITEA_TOKEN });
  seedFakes(consul, nomad, gitea.url, options.repo);
  const { log, text } = captureLogs();
  const petrel = createClusterApp({
    consulUrl: consul.url,
    nomadUrl: nomad.url,
    log,
    ...(options.budgetMs === undefined ? {} : { budgetMs: options.budgetMs }),
  });
  const { app, registry, reporter, metrics } = petrel;

  return {
    app,
    consul,
    nomad,
    gitea,
    registry,
    reporter,
    metrics,
    logs: text,
    settle: () => petrel.settle(),
    async deliver(body, event, opts = {}) {
      const bytes = typeof body === "string" ? Buffer.from(body) : body;
      const signature = sign(opts.secret ?? HOOK_SECRET, bytes);
      const headers: Record<string, string | null> = {
        "content-type": "application/json",
        "x-gitea-event": event,
        "x-gitea-event-type": event,
        "x-gitea-delivery": "3f0c9a52-8d3e-4b8e-9f55-2f7f1c7a6b10",
        "x-gitea-signature": signature,
        "x-hub-signature-256": `sha256=${signature}`,
        ...opts.headers,
      };
      // null removes a header; "" sends it empty, as Gitea does when no secret is set.
      const sent: Record<string, string> = {};
      for (const [k, v] of Object.entries(headers)) if (v !== null) sent[k] = v;
      return app.request(`/hook${opts.query ?? ""}`, { method: "POST", headers: sent, body: new Uint8Array(bytes) });
    },
    async close() {
      await petrel.close();
      await Promise.all([consul.close(), nomad.close(), gitea.close()]);
    },
  };
}
