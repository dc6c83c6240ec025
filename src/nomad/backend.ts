import type { BuildBackend, BuilderParams, DispatchedBuild } from "../builds/backend.js";
import { DISPATCH_PAYLOAD_LIMIT as NOMAD_PAYLOAD_LIMIT } from "../contract/dispatch.js";
import { AppError, errorMessage, UpstreamError } from "../errors.js";
import { createSharedCalls } from "../util/abort.js";
import type { NomadClient } from "./client.js";
import { isPermanentDispatchError } from "./client.js";

/**
 * Why Nomad would refuse a dispatch with these meta keys and this payload under the builder's `parameterized`
 * block, in the order Nomad checks (payload, unpermitted keys, missing keys:
 * https://github.com/hashicorp/nomad/blob/main/nomad/job_endpoint.go `validateDispatchRequest`); or
 * undefined when it would accept them.
 */
export function dispatchRefusal(params: BuilderParams, meta: Record<string, string>, payloadBytes: number | undefined): string | undefined {
  if (params.payload === "required" && payloadBytes === undefined) return "it requires a payload and none is sent";
  if (params.payload === "forbidden" && payloadBytes !== undefined) return "it forbids a payload and one is sent";
  const allowed = new Set([...params.metaRequired, ...params.metaOptional]);
  const unpermitted = Object.keys(meta).filter((k) => !allowed.has(k));
  if (unpermitted.length > 0) return `it does not declare the meta keys ${unpermitted.join(", ")}`;
  const missing = params.metaRequired.filter((k) => !(k in meta));
  if (missing.length > 0) return `it requires the meta keys ${missing.join(", ")}, which are not sent`;
  return undefined;
}

/** Cluster mode: every build is a dispatched child of a parameterized Nomad batch job. */
export function createNomadBackend(options: { nomad: NomadClient }): BuildBackend {
  const { nomad } = options;
  // Nomad before 1.11.2 could create two children for concurrent identical dispatches (hashicorp/nomad#26690),
  // so concurrent identical dispatches share one request; all but the first hear it as the duplicate it is.
  const flights = createSharedCalls<DispatchedBuild>();

  async function send(
    builder: string,
    meta: Record<string, string>,
    idempotencyToken: string,
    payload: Buffer | undefined,
    signal: AbortSignal,
  ): Promise<DispatchedBuild> {
    const params = await nomad.parameterized(builder, { signal });
    const refusal = dispatchRefusal(params, meta, payload?.length);
    if (refusal !== undefined) {
      throw new AppError("upstream_error", `Nomad would refuse to dispatch ${builder}: ${refusal}`);
    }
    try {
      const result = await nomad.dispatch(builder, { meta, idempotencyToken, ...(payload === undefined ? {} : { payload }) }, { signal });
      return { id: result.id, duplicate: result.duplicate };
    } catch (err) {
      // What could not be checked up front (a builder stopped or re-registered since it was read, a priority):
      // Nomad answers 500 to requests it will never accept (https://github.com/hashicorp/nomad/blob/main/command/agent/http.go `wrap`), and a redelivery cannot
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
        payload = Buffer.from(typeof request.payload === "string" ? request.payload : JSON.stringify(request.payload));
        if (payload.length > NOMAD_PAYLOAD_LIMIT) {
          // Checked here so the operator reads which limit was hit instead of Nomad's bare size message.
          throw new AppError(
            "config_invalid",
            `the repository's secrets and deploy key take ${payload.length} bytes; Nomad's dispatch payload limit is ${NOMAD_PAYLOAD_LIMIT}`,
          );
        }
      }
      const key = JSON.stringify([request.builder, request.idempotencyToken]);
      const joined = flights.has(key);
      const result = await flights.join(key, signal, (s) => send(request.builder, request.meta, request.idempotencyToken, payload, s));
      return joined ? { id: result.id, duplicate: true } : result;
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
