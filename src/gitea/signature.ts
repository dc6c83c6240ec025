import { createHash, createHmac, timingSafeEqual } from "node:crypto";
import { truncate } from "../errors.js";
import type { HookAuth } from "../registry/schema.js";

/** Lower-case hex HMAC-SHA256 of `body` with `secret`, the form of `X-Gitea-Signature`. */
export function sign(secret: string, body: Uint8Array | string): string {
  return createHmac("sha256", secret).update(body).digest("hex");
}

/** Reads one request header by name (case-insensitive); undefined when absent. */
export type HeaderReader = (name: string) => string | undefined;

export interface VerifyHookInput {
  /** The bytes the forge signed: the raw JSON body, or the decoded `payload` field of a form body. */
  body: Buffer;
  header: HeaderReader;
  /** The `?token=` query parameter, if the URL had one. */
  queryToken?: string | undefined;
  auth: HookAuth;
}

export type VerifyResult = { ok: true } | { ok: false; reason: string };

/**
 * The signature headers Gitea and Forgejo send, and how each carries the hex digest. Every one that is present
 * must match; a forged request cannot hide a bad signature behind a good header.
 */
const SIGNATURE_HEADERS = [
  { name: "X-Gitea-Signature", prefix: "" },
  { name: "X-Forgejo-Signature", prefix: "" },
  { name: "X-Gogs-Signature", prefix: "" },
  { name: "X-Hub-Signature-256", prefix: "sha256=" },
] as const;

const HEX_SHA256 = /^[0-9a-fA-F]{64}$/;

/**
 * Checks a delivery against the repository's hook settings: the HMAC signature when a secret is configured,
 * the shared token (`?token=` or `Authorization: Bearer`) when a token is configured; every configured check
 * must pass. Never throws; reasons never contain the secret, the token or the signature.
 */
export function verifyHook(input: VerifyHookInput): VerifyResult {
  try {
    return verify(input);
  } catch {
    return { ok: false, reason: "delivery could not be verified" };
  }
}

function verify({ body, header, queryToken, auth }: VerifyHookInput): VerifyResult {
  if (!auth.secret && !auth.token) return { ok: false, reason: "repository has no hook secret or token configured" };
  if (auth.secret) {
    const result = verifySignature(body, header, auth.secret);
    if (!result.ok) return result;
  }
  if (auth.token) {
    const result = verifyToken(header, queryToken, auth.token);
    if (!result.ok) return result;
  }
  return { ok: true };
}

function verifySignature(body: Buffer, header: HeaderReader, secret: string): VerifyResult {
  const expected = createHmac("sha256", secret).update(body).digest();
  let seen = 0;
  let mismatch: string | undefined;
  for (const { name, prefix } of SIGNATURE_HEADERS) {
    const value = header(name);
    if (value === undefined) continue;
    seen++;
    // Gitea sends the headers empty when its own side has no secret (services/webhook/deliver.go).
    if (value === "" || value === prefix) return { ok: false, reason: `${name} is empty` };
    if (prefix && !value.startsWith(prefix)) return { ok: false, reason: `${name} lacks the ${prefix} prefix` };
    const hex = value.slice(prefix.length);
    if (!HEX_SHA256.test(hex)) return { ok: false, reason: `${name} is not 64 hex characters` };
    const given = Buffer.from(hex, "hex");
    // Every header is compared, in constant time, so the time taken does not say which one differed.
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) mismatch ??= name;
  }
  if (seen === 0) return { ok: false, reason: "signature header missing" };
  if (mismatch) return { ok: false, reason: `${mismatch} does not match the body` };
  return { ok: true };
}

function verifyToken(header: HeaderReader, queryToken: string | undefined, expected: string): VerifyResult {
  const bearer = bearerToken(header("Authorization"));
  if (queryToken === undefined && bearer === undefined) return { ok: false, reason: "hook token missing" };
  for (const given of [queryToken, bearer]) {
    if (given !== undefined && !sameSecret(given, expected)) return { ok: false, reason: "hook token does not match" };
  }
  return { ok: true };
}

/** The credential of an `Authorization: Bearer <t>` header (scheme case-insensitive); undefined for other schemes. */
function bearerToken(header: string | undefined): string | undefined {
  if (header === undefined) return undefined;
  const match = /^bearer[ \t]+(.*)$/i.exec(header.trim());
  return match ? (match[1] ?? "").trim() : undefined;
}

/** Constant-time equality of two strings of any length: compares their SHA-256 digests. */
function sameSecret(a: string, b: string): boolean {
  const da = createHash("sha256").update(a, "utf8").digest();
  const db = createHash("sha256").update(b, "utf8").digest();
  return timingSafeEqual(da, db);
}

export type ExtractedPayload = { json: string; signed: Buffer } | { error: "unsupported_media_type" | "malformed_body"; message: string };

/**
 * The JSON text of a delivery and the bytes its signature covers. JSON bodies are signed as they arrived;
 * form-encoded bodies (`payload=<json>`) are signed over the decoded `payload` field (Gitea
 * services/webhook/deliver.go signs the payload string, not the wire body); a form-typed body that is JSON
 * itself (`curl -d @payload.json`) is read as JSON.
 */
export function extractPayload(contentType: string | undefined, body: Buffer): ExtractedPayload {
  const media = (contentType ?? "").split(";")[0]?.trim().toLowerCase() ?? "";
  if (media === "application/json") return { json: body.toString("utf8"), signed: body };
  if (media === "application/x-www-form-urlencoded") {
    // `curl -d @payload.json`, as Albatros users trigger builds, sends raw JSON under curl's default form type.
    // A form body starts with a field name, never with `{`, so the two cannot be confused.
    if (/^\s*\{/.test(body.toString("latin1", 0, Math.min(body.length, 64)))) return { json: body.toString("utf8"), signed: body };
    const values = new URLSearchParams(body.toString("utf8")).getAll("payload");
    if (values.length !== 1) {
      return {
        error: "malformed_body",
        message: values.length === 0 ? "form body has no payload field" : "form body has more than one payload field",
      };
    }
    const json = values[0] ?? "";
    return { json, signed: Buffer.from(json, "utf8") };
  }
  return {
    error: "unsupported_media_type",
    message: media
      ? `content type ${truncate(media, 100)} is not supported; configure the webhook to send application/json`
      : "content type missing; configure the webhook to send application/json",
  };
}
