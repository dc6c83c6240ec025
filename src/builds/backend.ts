import type { DispatchPayload } from "./dispatch.js";

/** What a builder declares in its `parameterized` block. */
export interface BuilderParams {
  payload: "optional" | "required" | "forbidden";
  metaRequired: string[];
  metaOptional: string[];
}

export interface DispatchRequest {
  builder: string;
  meta: Record<string, string>;
  /** Only for trusted builds. */
  payload?: DispatchPayload;
  idempotencyToken: string;
}

export interface DispatchResult {
  /** The build ID, `<builder>/dispatch-<unix seconds>-<8 hex>`. */
  id: string;
  /** True when the idempotency token named a build that already existed. */
  duplicate: boolean;
}

/** Where builds run: dispatched Nomad jobs (cluster mode) or local child processes (single-machine mode). */
export interface BuildBackend {
  readonly kind: "nomad" | "local";
  parameterized(builder: string, signal?: AbortSignal): Promise<BuilderParams>;
  dispatch(request: DispatchRequest, signal?: AbortSignal): Promise<DispatchResult>;
  /** Reachability for /health; never throws. */
  health(signal?: AbortSignal): Promise<{ ok: boolean; error?: string }>;
}
