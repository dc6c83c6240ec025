import { describe, expect, it } from "vitest";
import { readNomadMeta, refsToFetch } from "../../src/executor/env.js";
import { ExecutorError } from "../../src/executor/errors.js";
import { validateBuildMeta, validateDispatchPayload } from "../../src/executor/meta.js";

describe("executor meta checks", () => {
  it("words failures naming the Nomad variable, and never repeats a payload's values", () => {
    expect(() => validateBuildMeta({ REPO_URL: "x", COMMIT: "xyz", BRANCH: "", FLAVOR: "default" })).toThrow(
      /^invalid dispatch meta: NOMAD_META_COMMIT: must be a hex commit id$/,
    );
    let err: unknown;
    try {
      validateDispatchPayload({ secrets: { A: 1 }, deploy_key: "SECRET-KEY" });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ExecutorError);
    expect((err as ExecutorError).exitCode).toBe(64);
    // The executor answers no HTTP request: its errors carry exit codes, never a status.
    expect(err).not.toHaveProperty("status");
    expect((err as Error).message).toBe("invalid dispatch payload: secrets.A: expected a string");
    expect(() => validateDispatchPayload("SECRET-KEY")).toThrow(/^invalid dispatch payload: \(root\): expected an object$/);
  });
});

describe("reading the Nomad task environment", () => {
  const base = {
    NOMAD_META_REPO_URL: "https://git.example.test/acme/w.git",
    NOMAD_META_COMMIT: "4c1d7e0",
    NOMAD_META_BRANCH: "main",
    NOMAD_META_FLAVOR: "default",
  };

  it("treats optional keys Nomad exported as empty strings as absent", () => {
    const raw = readNomadMeta({ ...base, NOMAD_META_EVENT: "", NOMAD_META_TRUSTED: "", NOMAD_META_PR: "", NOMAD_META_REPO: "acme/w" });
    expect(raw).toEqual({ REPO_URL: base.NOMAD_META_REPO_URL, COMMIT: "4c1d7e0", BRANCH: "main", FLAVOR: "default", REPO: "acme/w" });
    expect(validateBuildMeta(raw)).toEqual(raw);
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
