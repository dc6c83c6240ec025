import type { BuildBackend, DispatchResult } from "../builds/backend.js";
import { AppError, UpstreamError, errorMessage } from "../errors.js";
import { isPermanentDispatchError } from "./client.js";
import type { NomadClient } from "./client.js";

/** Nomad refuses dispatch payloads over 16 KiB (contracts/nomad.md §1.2). */
export const NOMAD_PAYLOAD_LIMIT = 16 * 1024;

/** Cluster mode: every build is a dispatched child of a parameterized Nomad batch job. */
export function createNomadBackend(options: { nomad: NomadClient }): BuildBackend {
  const { nomad } = options;
  // Concurrent identical deliveries share one dispatch; all but the first hear it as the duplicate it is.
  const inFlight = new Map<string, Promise<DispatchResult>>();

  async function send(
    builder: string,
    meta: Record<string, string>,
    idempotencyToken: string,
    payload: Buffer | undefined,
    signal: AbortSignal | undefined,
  ): Promise<DispatchResult> {
    try {
      const result = await nomad.dispatch(
        builder,
        { meta, idempotencyToken, ...(payload === undefined ? {} : { payload }) },
        signal === undefined ? {} : { signal },
      );
      return { id: result.id, duplicate: result.duplicate };
    } catch (err) {
      // Nomad answers 500 to requests it will never accept (contracts/nomad.md §1.6); a redelivery cannot
      // cure those, so they must not read as an outage.
      if (err instanceof UpstreamError && isPermanentDispatchError(err)) {
        throw new AppError("upstream_error", `Nomad refused to dispatch ${builder}: ${err.upstreamBody}`, { cause: err });
      }
      throw err;
    }
  }

  return {
    kind: "nomad",
    parameterized: (builder, signal) => nomad.parameterized(builder, signal === undefined ? {} : { signal }),
    async dispatch(request, signal) {
      let payload: Buffer | undefined;
      if (request.payload !== undefined) {
        payload = Buffer.from(JSON.stringify(request.payload));
        if (payload.length > NOMAD_PAYLOAD_LIMIT) {
          // Checked here so the operator reads which limit was hit instead of Nomad's bare size message.
          throw new AppError("config_invalid", `the repository's secrets and deploy key take ${payload.length} bytes; Nomad's dispatch payload limit is ${NOMAD_PAYLOAD_LIMIT}`,
          );
        }
      }
      const key = `${request.builder}\0${request.idempotencyToken}`;
      const shared = inFlight.get(key);
      if (shared !== undefined) return { id: (await shared).id, duplicate: true };
      const attempt = send(request.builder, request.meta, request.idempotencyToken, payload, signal);
      inFlight.set(key, attempt);
      try {
        return await attempt;
      } finally {
        inFlight.delete(key);
      }
    },
    async health(signal) {
      try {
        await nomad.leader(signal);
        return { ok: true };
      } catch (err) {
        return { ok: false, error: errorMessage(err) };
      }
    },
  };
}
