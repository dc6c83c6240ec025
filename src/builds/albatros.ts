import type { DispatchPayload } from "../contract/dispatch.js";
import { formatSecrets } from "../executor/secrets.js";
import type { BuilderParams } from "./backend.js";

/** True for a builder written for Albatros: it declares the four required meta keys and no optional one. */
export function isAlbatrosBuilder(params: Pick<BuilderParams, "metaOptional">): boolean {
  return params.metaOptional.length === 0;
}

/**
 * The payload one builder gets (SPEC §12): petrel's builders the JSON payload; an Albatros builder the shell
 * text Albatros sent, the entry's `inject` itself, after `export` lines for any secrets petrel keeps apart
 * (a migrated entry). The deploy key has no place in that text: an Albatros builder clones by itself.
 */
export function payloadForBuilder(
  payload: DispatchPayload | undefined,
  params: Pick<BuilderParams, "metaOptional">,
): DispatchPayload | string | undefined {
  if (payload === undefined || !isAlbatrosBuilder(params)) return payload;
  const exports = Object.keys(payload.secrets).length > 0 ? formatSecrets(payload.secrets).text : "";
  const text = `${exports}${payload.inject ?? ""}`;
  return text === "" ? undefined : text;
}
