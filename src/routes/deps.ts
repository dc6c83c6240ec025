import type { BuildBackend, BuildReader } from "../builds/backend.js";
import type { BuildWatch } from "../builds/watch.js";
import type { StatusReport, StatusReporter } from "../gitea/client.js";
import type { Logger } from "../log.js";
import type { Metrics } from "../metrics.js";
import type { Registry } from "../registry/schema.js";

/** Everything the HTTP app needs, injected so tests wire fakes and main wires the real clients. */
export interface AppDeps {
  log: Logger;
  metrics: Metrics;
  registry: Registry;
  backend: BuildBackend;
  reader: BuildReader;
  /** Shares one log stream and one state watch per running build among its viewers; one is made when absent. */
  watch?: BuildWatch;
  adminToken?: string;
  /** Aborted when petrel stops: log streams end so the server can close. */
  shutdown?: AbortSignal;
  reporter: StatusReporter;
  publicUrl: string;
  defaultBuilder: string;
  /** Finished builds are archived: a petrel build neither the backend nor the archive knows was lost to GC. */
  archiveEnabled?: boolean;
  /** Checks for /health besides the registry and the backend, e.g. Consul's leader. */
  extraHealth?: Record<string, (signal: AbortSignal) => Promise<{ ok: boolean; error?: string }>>;
  /** Whether this replica leads (SPEC §10) and since when; /health shows it. Absent: the one process leads. */
  leadership?: { isLeader(): boolean; since(): Date | undefined; refused?(): string | undefined };
  /**
   * Posts a commit status only if it moves the commit's status for its context forward (a retried dispatch
   * that found its build posts `pending` this way, so a redelivery does not post it twice).
   */
  forwardStatus?: (report: StatusReport, build: string) => void;
}
