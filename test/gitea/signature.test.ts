import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { extractPayload, sign, type VerifyResult, verifyHook } from "../../src/gitea/signature.js";
import type { HookAuth } from "../../src/registry/schema.js";
import { fixtureBytes, headerReader } from "./fixtures.js";

const SECRET = "webhook-secret-5f2c";
const TOKEN = "shared-token-9d41";
const body = fixtureBytes("push.json");
const good = sign(SECRET, body);

function verify(
  headers: Record<string, string | undefined>,
  auth: HookAuth = { secret: SECRET },
  queryToken?: string,
  payload: Buffer = body,
): VerifyResult {
  return verifyHook({ body: payload, header: headerReader(headers), queryToken, auth });
}

function expectRefused(result: VerifyResult, reason: RegExp): void {
  expect(result.ok).toBe(false);
  if (result.ok) return;
  expect(result.reason).toMatch(reason);
  for (const secret of [SECRET, TOKEN, good]) expect(result.reason).not.toContain(secret);
}

describe("sign", () => {
  it("computes the RFC 4231-style HMAC-SHA256 known answer as lower-case hex", () => {
    expect(sign("key", "The quick brown fox jumps over the lazy dog")).toBe(
      "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8",
    );
  });

  it("signs strings and bytes alike", () => {
    expect(sign(SECRET, body.toString("utf8"))).toBe(sign(SECRET, new Uint8Array(body)));
  });
});

describe("verifyHook with a secret", () => {
  it("accepts the headers Gitea sends for the fixture file bytes", () => {
    expect(verify({ "X-Gitea-Signature": good, "X-Gogs-Signature": good, "X-Hub-Signature-256": `sha256=${good}` })).toEqual({
      ok: true,
    });
  });

  it("accepts X-Forgejo-Signature alone", () => {
    expect(verify({ "X-Forgejo-Signature": good })).toEqual({ ok: true });
  });

  it("accepts X-Hub-Signature-256 alone", () => {
    expect(verify({ "X-Hub-Signature-256": `sha256=${good}` })).toEqual({ ok: true });
  });

  it("accepts upper-case hex, since it decodes to the same digest", () => {
    expect(verify({ "X-Gitea-Signature": good.toUpperCase() })).toEqual({ ok: true });
  });

  it("refuses a delivery without any signature header", () => {
    expectRefused(verify({}), /missing/);
  });

  it("refuses the empty headers Gitea sends when its side has no secret", () => {
    expectRefused(verify({ "X-Gitea-Signature": "" }), /empty/);
    expectRefused(verify({ "X-Hub-Signature-256": "sha256=" }), /empty/);
  });

  it("refuses an empty header even when another header matches", () => {
    expectRefused(verify({ "X-Gitea-Signature": "", "X-Hub-Signature-256": `sha256=${good}` }), /empty/);
  });

  it("refuses signatures of the wrong length without throwing", () => {
    expectRefused(verify({ "X-Gitea-Signature": good.slice(0, 63) }), /64 hex/);
    expectRefused(verify({ "X-Gitea-Signature": `${good}00` }), /64 hex/);
    expectRefused(verify({ "X-Gitea-Signature": good.slice(0, 40) }), /64 hex/);
  });

  it("refuses non-hex signatures", () => {
    expectRefused(verify({ "X-Gitea-Signature": "g".repeat(64) }), /64 hex/);
    expectRefused(verify({ "X-Gitea-Signature": ` ${good.slice(1)}` }), /64 hex/);
  });

  it("refuses a sha256= prefix on X-Gitea-Signature", () => {
    expectRefused(verify({ "X-Gitea-Signature": `sha256=${good}` }), /X-Gitea-Signature/);
  });

  it("refuses X-Hub-Signature-256 without its sha256= prefix", () => {
    expectRefused(verify({ "X-Hub-Signature-256": good }), /prefix/);
  });

  it("refuses when one present header disagrees although another matches", () => {
    const other = sign("another-secret", body);
    expectRefused(verify({ "X-Gitea-Signature": good, "X-Hub-Signature-256": `sha256=${other}` }), /does not match/);
    expectRefused(verify({ "X-Gitea-Signature": other, "X-Forgejo-Signature": good }), /does not match/);
  });

  it("refuses a signature made with another secret", () => {
    expectRefused(verify({ "X-Gitea-Signature": sign("wrong", body) }), /does not match/);
  });

  it("refuses when the body differs by one byte, a trailing newline or re-serialised JSON", () => {
    const headers = { "X-Gitea-Signature": good };
    const flipped = Buffer.from(body);
    flipped[10] = (flipped[10] ?? 0) ^ 1;
    expectRefused(verify(headers, { secret: SECRET }, undefined, flipped), /does not match/);
    expectRefused(verify(headers, { secret: SECRET }, undefined, Buffer.concat([body, Buffer.from("\n")])), /does not match/);
    const reserialised = Buffer.from(JSON.stringify(JSON.parse(body.toString("utf8"))));
    expectRefused(verify(headers, { secret: SECRET }, undefined, reserialised), /does not match/);
  });

  it("never accepts a random signature (property)", () => {
    fc.assert(
      fc.property(fc.stringMatching(/^[0-9a-f]{64}$/), (hex) => {
        fc.pre(hex !== good);
        return !verify({ "X-Gitea-Signature": hex }).ok;
      }),
    );
  });
});

describe("verifyHook with a token", () => {
  const auth = { token: TOKEN };

  it("accepts the token in ?token=", () => {
    expect(verify({}, auth, TOKEN)).toEqual({ ok: true });
  });

  it("accepts the token as Authorization: Bearer, scheme in any case", () => {
    expect(verify({ Authorization: `Bearer ${TOKEN}` }, auth)).toEqual({ ok: true });
    expect(verify({ Authorization: `bearer ${TOKEN}` }, auth)).toEqual({ ok: true });
  });

  it("refuses a wrong token in either place", () => {
    expectRefused(verify({}, auth, `${TOKEN}x`), /does not match/);
    expectRefused(verify({ Authorization: `Bearer ${TOKEN.slice(1)}` }, auth), /does not match/);
    expectRefused(verify({}, auth, ""), /does not match/);
  });

  it("refuses a missing token, and schemes other than Bearer", () => {
    expectRefused(verify({}, auth), /missing/);
    expectRefused(verify({ Authorization: `token ${TOKEN}` }, auth), /missing/);
    expectRefused(verify({ Authorization: `Basic ${Buffer.from(`x:${TOKEN}`).toString("base64")}` }, auth), /missing/);
  });

  it("refuses when the query token matches but the Bearer token does not", () => {
    expectRefused(verify({ Authorization: "Bearer nope" }, auth, TOKEN), /does not match/);
  });
});

describe("verifyHook with both checks configured", () => {
  const auth = { secret: SECRET, token: TOKEN };
  const signed = { "X-Gitea-Signature": good };

  it("accepts when both pass", () => {
    expect(verify(signed, auth, TOKEN)).toEqual({ ok: true });
  });

  it("refuses when the signature passes and the token fails", () => {
    expectRefused(verify(signed, auth, "wrong"), /token/);
    expectRefused(verify(signed, auth), /token missing/);
  });

  it("refuses when the token passes and the signature fails", () => {
    expectRefused(verify({ "X-Gitea-Signature": sign("wrong", body) }, auth, TOKEN), /does not match/);
    expectRefused(verify({}, auth, TOKEN), /signature header missing/);
  });
});

describe("verifyHook with nothing configured", () => {
  it("refuses every delivery, signed or not", () => {
    expectRefused(verify(signedEverywhere(), {} as HookAuth, TOKEN), /no hook secret or token/);
  });

  it("never throws, whatever the headers, body and settings (property)", () => {
    const headerNames = fc.constantFrom(
      "X-Gitea-Signature",
      "X-Forgejo-Signature",
      "X-Gogs-Signature",
      "X-Hub-Signature-256",
      "Authorization",
      "Content-Type",
    );
    fc.assert(
      fc.property(
        fc.dictionary(headerNames, fc.oneof(fc.string(), fc.stringMatching(/^(sha256=)?[0-9a-fA-F]{60,68}$/))),
        fc.uint8Array({ maxLength: 256 }),
        fc.record({ secret: fc.option(fc.string(), { nil: undefined }), token: fc.option(fc.string(), { nil: undefined }) }),
        fc.option(fc.string(), { nil: undefined }),
        (headers, bytes, rawAuth, queryToken) => {
          const auth = Object.fromEntries(Object.entries(rawAuth).filter(([, v]) => v !== undefined)) as HookAuth;
          const result = verify(headers, auth, queryToken, Buffer.from(bytes));
          expect(typeof result.ok).toBe("boolean");
        },
      ),
    );
  });
});

function signedEverywhere(): Record<string, string> {
  return { "X-Gitea-Signature": good, "X-Hub-Signature-256": `sha256=${good}`, Authorization: `Bearer ${TOKEN}` };
}

describe("extractPayload", () => {
  it("passes a JSON body through as the signed bytes", () => {
    const result = extractPayload("application/json", body);
    expect(result).toEqual({ json: body.toString("utf8"), signed: body });
  });

  it("accepts parameters on the JSON media type", () => {
    expect("json" in extractPayload("Application/JSON; charset=utf-8", body)).toBe(true);
  });

  it("reads a form-typed body that is JSON itself (curl -d @payload.json) as JSON, signed as it arrived", () => {
    const result = extractPayload("application/x-www-form-urlencoded", body);
    expect(result).toEqual({ json: body.toString("utf8"), signed: body });
    // A real form body never starts with `{`; one that does not start so is still read as a form.
    expect(extractPayload("application/x-www-form-urlencoded", Buffer.from("x={}"))).toMatchObject({ error: "malformed_body" });
  });

  it("verifies a form-encoded delivery against the decoded payload field", () => {
    const json = body.toString("utf8");
    const wire = Buffer.from(new URLSearchParams({ payload: json }).toString());
    const result = extractPayload("application/x-www-form-urlencoded", wire);
    if (!("json" in result)) throw new Error(result.message);
    expect(result.json).toBe(json);
    expect(result.signed.equals(body)).toBe(true);
    const signature = sign(SECRET, json);
    expect(verify({ "X-Gitea-Signature": signature }, { secret: SECRET }, undefined, result.signed)).toEqual({ ok: true });
    // The wire body is not what Gitea signed.
    expect(verify({ "X-Gitea-Signature": signature }, { secret: SECRET }, undefined, wire).ok).toBe(false);
  });

  it("refuses a form body without exactly one payload field", () => {
    expect(extractPayload("application/x-www-form-urlencoded", Buffer.from("other=1"))).toMatchObject({
      error: "malformed_body",
    });
    expect(extractPayload("application/x-www-form-urlencoded", Buffer.from("payload=%7B%7D&payload=%7B%7D"))).toMatchObject({
      error: "malformed_body",
    });
  });

  it("refuses other and missing content types as unsupported", () => {
    expect(extractPayload("text/plain", body)).toMatchObject({ error: "unsupported_media_type" });
    expect(extractPayload(undefined, body)).toMatchObject({ error: "unsupported_media_type" });
  });
});
