import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { BuildMeta, DispatchPayload, OPTIONAL_META, parseCaches, REQUIRED_META } from "../../src/builds/dispatch.js";
import { ExecutorError } from "../../src/executor/errors.js";
import { parseCachesMeta, readNomadMeta, refsToFetch } from "../../src/executor/env.js";
import {
  checkBuildMeta,
  checkDispatchPayload,
  META_OPTIONAL,
  META_REQUIRED,
  validateBuildMeta,
  validateDispatchPayload,
} from "../../src/executor/meta.js";

const keys = [...REQUIRED_META, ...OPTIONAL_META, "EXTRA"];
const interesting = fc.oneof(
  fc.string(),
  fc.constantFrom("", "push", "tag", "pull_request", "manual", "true", "false", "TRUE", "0123abc", "abcdef0123456789abcdef0123456789abcdef01", "ABCDEF0", "main"),
  fc.stringMatching(/^[0-9a-f]{5,70}$/),
);
const metaRecord = fc.dictionary(fc.constantFrom(...keys), fc.oneof(interesting, fc.integer(), fc.constant(undefined)), { maxKeys: 12 });

describe("executor meta checks", () => {
  it("lists the same meta keys as the dispatcher", () => {
    expect([...META_REQUIRED]).toEqual([...REQUIRED_META]);
    expect([...META_OPTIONAL]).toEqual([...OPTIONAL_META]);
  });

  it("accepts exactly the meta BuildMeta accepts, with the same result", () => {
    fc.assert(
      fc.property(metaRecord, (raw) => {
        const zod = BuildMeta.safeParse(raw);
        const fast = checkBuildMeta(raw);
        expect(fast !== undefined).toBe(zod.success);
        if (zod.success) expect(fast).toEqual(zod.data);
      }),
      { numRuns: 2000 },
    );
  });

  it("accepts exactly the payloads DispatchPayload accepts, with the same result", () => {
    const value = fc.oneof(fc.string(), fc.integer(), fc.constant(null), fc.boolean(), fc.array(fc.string(), { maxLength: 2 }));
    const payload = fc.oneof(
      fc.record({ secrets: fc.option(fc.dictionary(fc.string(), value), { nil: undefined }), deploy_key: fc.option(value, { nil: undefined }) }, { requiredKeys: [] }),
      fc.record({ secrets: fc.dictionary(fc.string(), fc.string()) }),
      value,
      fc.jsonValue(),
      fc.constantFrom('{"secrets":{"__proto__":1}}', '{"secrets":{"__proto__":"x","A":"b"}}', '{"__proto__":{"secrets":1}}').map((t) => JSON.parse(t) as unknown),
    );
    fc.assert(
      fc.property(payload, (raw) => {
        const zod = DispatchPayload.safeParse(raw);
        const fast = checkDispatchPayload(raw);
        expect(fast !== undefined).toBe(zod.success);
        if (zod.success) expect(fast).toEqual(zod.data);
      }),
      { numRuns: 2000 },
    );
  });

  it("words failures with zod's messages, naming the Nomad variable", async () => {
    await expect(validateBuildMeta({ REPO_URL: "x", COMMIT: "xyz", BRANCH: "", FLAVOR: "default" })).rejects.toThrow(
      /^invalid dispatch meta: NOMAD_META_COMMIT: /,
    );
    const err = await validateDispatchPayload({ secrets: { A: 1 }, deploy_key: "SECRET-KEY" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ExecutorError);
    expect((err as ExecutorError).exitCode).toBe(64);
    expect((err as Error).message).toMatch(/^invalid dispatch payload: secrets\.A: /);
    expect((err as Error).message).not.toContain("SECRET-KEY");
  });

  it("parses CACHES like the dispatcher does", () => {
    fc.assert(
      fc.property(fc.string(), (s) => {
        expect(parseCachesMeta(s)).toEqual(parseCaches(s));
      }),
    );
    expect(parseCachesMeta("npm=~/.npm, cargo=~/.cargo/registry")).toEqual({ npm: "~/.npm", cargo: "~/.cargo/registry" });
  });
});

describe("reading the Nomad task environment", () => {
  const base = { NOMAD_META_REPO_URL: "https://git.example.test/acme/w.git", NOMAD_META_COMMIT: "4c1d7e0", NOMAD_META_BRANCH: "main", NOMAD_META_FLAVOR: "default" };

  it("treats optional keys Nomad exported as empty strings as absent", () => {
    const raw = readNomadMeta({ ...base, NOMAD_META_EVENT: "", NOMAD_META_TRUSTED: "", NOMAD_META_PR: "", NOMAD_META_REPO: "acme/w" });
    expect(raw).toEqual({ REPO_URL: base.NOMAD_META_REPO_URL, COMMIT: "4c1d7e0", BRANCH: "main", FLAVOR: "default", REPO: "acme/w" });
    expect(checkBuildMeta(raw)).toBeDefined();
  });

  it("keeps an empty BRANCH (required, may be empty) and refuses a missing required key", () => {
    expect(readNomadMeta({ ...base, NOMAD_META_BRANCH: "" }).BRANCH).toBe("");
    const { NOMAD_META_COMMIT: _, ...noCommit } = base;
    expect(() => readNomadMeta(noCommit)).toThrow(/^NOMAD_META_COMMIT is not set/);
  });

  it("fetches the PR ref for pull requests, the tag for tags and the branch for pushes", () => {
    const meta = { REPO_URL: "u", COMMIT: "4c1d7e0", FLAVOR: "d" };
    expect(refsToFetch({ ...meta, BRANCH: "feature", EVENT: "pull_request", PR: "12" })).toEqual(["refs/pull/12/head"]);
    expect(refsToFetch({ ...meta, BRANCH: "", EVENT: "tag", TAG: "v1.0" })).toEqual(["refs/tags/v1.0"]);
    expect(refsToFetch({ ...meta, BRANCH: "main", EVENT: "push" })).toEqual(["refs/heads/main"]);
    expect(refsToFetch({ ...meta, BRANCH: "refs/heads/x" })).toEqual(["refs/heads/x"]);
  });
});
