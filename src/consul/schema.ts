import { z } from "zod";

const Uint64 = z
  .union([z.string().regex(/^\d+$/, "must be an unsigned integer"), z.number().int().nonnegative()])
  .transform((v) => BigInt(v));

/** One element of a KV read (`GET /v1/kv/:key`), with the base64 value decoded and the indexes as BigInt. */
export const KvEntry = z
  .object({
    Key: z.string(),
    Value: z.string().nullable().optional(),
    Flags: Uint64.default(0n),
    CreateIndex: Uint64,
    ModifyIndex: Uint64,
    LockIndex: Uint64.default(0n),
    Session: z.string().optional(),
  })
  .transform((e) => {
    const entry: {
      key: string;
      value: Buffer | null;
      flags: bigint;
      createIndex: bigint;
      modifyIndex: bigint;
      lockIndex: bigint;
      session?: string;
    } = {
      key: e.Key,
      value: e.Value == null ? null : Buffer.from(e.Value, "base64"),
      flags: e.Flags,
      createIndex: e.CreateIndex,
      modifyIndex: e.ModifyIndex,
      lockIndex: e.LockIndex,
    };
    if (e.Session !== undefined && e.Session !== "") entry.session = e.Session;
    return entry;
  });
export type KvEntry = z.output<typeof KvEntry>;

export const KvEntries = z.array(KvEntry);
export type KvEntries = z.output<typeof KvEntries>;

/** `GET /v1/status/leader`: the leader's `host:port`, or `""` while the cluster has none. */
export const ConsulLeader = z.string();
export type ConsulLeader = z.infer<typeof ConsulLeader>;

/** The JSON literal `true`/`false` that PUT and DELETE answer with. */
export const WriteResult = z.boolean();
export type WriteResult = z.infer<typeof WriteResult>;

const UINT64_FIELDS = /"(CreateIndex|ModifyIndex|LockIndex|Flags)"(\s*:\s*)(\d+)/g;

/**
 * Parses a KV read body without losing precision: indexes and flags are uint64, which `JSON.parse` would round
 * above 2^53 (https://developer.hashicorp.com/consul/api-docs/kv: `Flags` is a uint64), so the digits are quoted before parsing. A key containing
 * the same text cannot match: inside a JSON string its quotes are escaped.
 */
export function parseKvBody(text: string): KvEntries {
  return KvEntries.parse(JSON.parse(text.replace(UINT64_FIELDS, '"$1"$2"$3"')));
}
