import { describe, expect, it } from "vitest";
import {
  checkBuildMeta,
  checkDispatchPayload,
  DISPATCH_PAYLOAD_LIMIT,
  dispatchId,
  formatCaches,
  isBuildOf,
  parentOfBuildId,
  parseCaches,
  payloadBytes,
} from "../../src/contract/dispatch.js";

const META = { REPO_URL: "https://git.example.test/acme/w.git", COMMIT: "4c1d7e0", BRANCH: "main", FLAVOR: "default" };

describe("dispatch meta", () => {
  it("accepts the required keys and every optional key, dropping keys it does not know", () => {
    const full = {
      ...META,
      REPO: "acme/w",
      EVENT: "pull_request",
      PR: "12",
      TAG: "",
      TRUSTED: "true",
      PRIVATE: "false",
      CACHES: "npm=~/.npm",
    };
    expect(checkBuildMeta({ ...full, EXTRA: "x" })).toEqual({ ok: true, value: full });
    expect(checkBuildMeta({ ...META, BRANCH: "" })).toEqual({ ok: true, value: { ...META, BRANCH: "" } });
  });

  it("names every field it refuses, without repeating values", () => {
    const got = checkBuildMeta({ REPO_URL: "", COMMIT: "ABCDEF0", FLAVOR: "default", EVENT: "merge", TRUSTED: "yes", PR: 12 });
    expect(got).toEqual({
      ok: false,
      problems: [
        { path: "REPO_URL", message: "must not be empty" },
        { path: "COMMIT", message: "must be a hex commit id" },
        { path: "BRANCH", message: "required" },
        { path: "PR", message: "expected a string" },
        { path: "EVENT", message: "expected one of push, tag, pull_request, manual, cron" },
        { path: "TRUSTED", message: "expected one of true, false" },
      ],
    });
    expect(JSON.stringify(got)).not.toContain("merge");
  });

  it("takes commit ids of 7 to 64 lower-case hex digits only", () => {
    for (const commit of ["abcdef0", "a".repeat(64)]) expect(checkBuildMeta({ ...META, COMMIT: commit }).ok).toBe(true);
    for (const commit of ["abcdef", "a".repeat(65), "abcdefg", "ABCDEF0", ""])
      expect(checkBuildMeta({ ...META, COMMIT: commit }).ok).toBe(false);
  });
});

describe("dispatch payload", () => {
  it("defaults to no secrets and keeps the deploy key", () => {
    expect(checkDispatchPayload({})).toEqual({ ok: true, value: { secrets: {} } });
    expect(checkDispatchPayload({ secrets: { A: "b" }, deploy_key: "K" })).toEqual({
      ok: true,
      value: { secrets: { A: "b" }, deploy_key: "K" },
    });
  });

  it("refuses what is not an object of strings, naming the field", () => {
    expect(checkDispatchPayload([])).toEqual({ ok: false, problems: [{ path: "", message: "expected an object" }] });
    expect(checkDispatchPayload(null).ok).toBe(false);
    expect(checkDispatchPayload({ secrets: [] })).toEqual({ ok: false, problems: [{ path: "secrets", message: "expected an object" }] });
    expect(checkDispatchPayload({ secrets: { A: 1, B: "ok" }, deploy_key: 5 })).toEqual({
      ok: false,
      problems: [
        { path: "secrets.A", message: "expected a string" },
        { path: "deploy_key", message: "expected a string" },
      ],
    });
  });

  it("never lets a `__proto__` secret set the prototype of the result", () => {
    const got = checkDispatchPayload(JSON.parse('{"secrets":{"__proto__":{"polluted":"yes"},"A":"b"}}') as unknown);
    expect(got).toEqual({ ok: true, value: { secrets: { A: "b" } } });
    if (got.ok) expect(Object.getPrototypeOf(got.value.secrets)).toBe(Object.prototype);
  });

  it("measures the payload as it is sent, in UTF-8 bytes, against Nomad's 16 KiB", () => {
    expect(DISPATCH_PAYLOAD_LIMIT).toBe(16384);
    expect(payloadBytes({ secrets: { A: "é" } })).toBe(JSON.stringify({ secrets: { A: "é" } }).length + 1);
  });
});

describe("the CACHES meta key", () => {
  it("round-trips a repository's caches", () => {
    const caches = { npm: "~/.npm", cargo: "~/.cargo/registry" };
    expect(formatCaches(caches)).toBe("npm=~/.npm,cargo=~/.cargo/registry");
    expect(parseCaches(formatCaches(caches))).toEqual(caches);
    expect(formatCaches({})).toBe("");
  });

  it("trims entries and ignores those without a name", () => {
    expect(parseCaches("npm=~/.npm, cargo = ~/.cargo ,=x,plain,")).toEqual({ npm: "~/.npm", cargo: "~/.cargo" });
    expect(parseCaches(undefined)).toEqual({});
  });
});

describe("dispatch IDs", () => {
  it("forms IDs in Nomad's shape and reads the parent back", () => {
    const id = dispatchId("builder", "1a2b3c4d", 1_700_000_000_999);
    expect(id).toBe("builder/dispatch-1700000000-1a2b3c4d");
    expect(parentOfBuildId(id)).toBe("builder");
    expect(() => dispatchId("builder", "xyz")).toThrow(/8 hex digits/);
  });

  it("reads IDs with an id_prefix_template part and refuses other jobs", () => {
    expect(parentOfBuildId("ns/builder/dispatch-pr12-1700000000-1a2b3c4d")).toBe("ns/builder");
    for (const id of ["builder", "builder/periodic-1700000000", "builder/dispatch-1700000000-1A2B3C4D", "builder/dispatch-x-1a2b3c4d"]) {
      expect(parentOfBuildId(id), id).toBeUndefined();
    }
    const builders = new Set(["builder"]);
    expect(isBuildOf("builder/dispatch-1700000000-1a2b3c4d", builders)).toBe(true);
    expect(isBuildOf("builder-x/dispatch-1700000000-1a2b3c4d", builders)).toBe(false);
  });
});
