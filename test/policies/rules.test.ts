import { describe, expect, it } from "vitest";
import type { Build } from "../../src/builds/backend.js";
import { planCron } from "../../src/builds/plan.js";
import { commitStatusOf } from "../../src/builds/statuses.js";
import { buildsTable } from "../../src/cli/builds.js";
import { supersededIn, supersedeGroup } from "../../src/policies/policies.js";
import { parseRegistryFile } from "../../src/registry/file.js";
import { describeIssues, RepoConfig, type RepoEntry, timeoutOf } from "../../src/registry/schema.js";
import { parseGoDuration } from "../../src/util/go-duration.js";

const HOOK = { hook: { secret: "s" } };

function problems(config: Record<string, unknown>): string {
  const checked = RepoConfig.safeParse({ ...HOOK, ...config });
  return checked.success ? "" : describeIssues(checked.error);
}

function build(id: string, createdAt: string, extra: Partial<Build> = {}): Build {
  return {
    id,
    builder: "builder",
    repo: "acme/widgets",
    repoUrl: "https://git.example.test/acme/widgets.git",
    commit: id.slice(-1).repeat(40),
    ref: "main",
    flavor: "default",
    event: "push",
    trusted: true,
    state: "running",
    createdAt,
    ...extra,
  };
}

describe("Go durations", () => {
  it.each([
    ["2h", 7_200_000],
    ["1h30m", 5_400_000],
    ["1.5h", 5_400_000],
    ["90s", 90_000],
    ["300ms", 300],
    ["0", 0],
  ])("reads %s", (text, ms) => expect(parseGoDuration(text)).toBe(ms));

  it.each(["", "2", "1d", "h", "1h 30m", "1hh"])("refuses %j", (text) => expect(parseGoDuration(text)).toBeUndefined());
});

describe("the policy fields of a registry entry", () => {
  it("defaults to supersede on, a 2h timeout and no schedules", () => {
    expect(RepoConfig.parse(HOOK)).toMatchObject({ supersede: true, timeout: "2h", cron: [] });
  });

  it("takes a flavor's own timeout over the entry's", () => {
    const config = RepoConfig.parse({
      ...HOOK,
      timeout: "1h",
      flavors: { default: { builder: "b" }, e2e: { builder: "b", timeout: "10m" } },
    });
    expect(timeoutOf(config, "e2e")).toEqual({ text: "10m", ms: 600_000 });
    expect(timeoutOf(config, "default")).toEqual({ text: "1h", ms: 3_600_000 });
  });

  it("names the field and the problem of every bad value", () => {
    expect(problems({ timeout: "2 hours" })).toMatch(/^timeout: must be a Go duration/);
    expect(problems({ timeout: "0s" })).toMatch(/^timeout: must be a Go duration above zero/);
    expect(problems({ flavors: { default: { builder: "b", timeout: "soon" } } })).toMatch(
      /^flavors\.default\.timeout: must be a Go duration/,
    );
    expect(problems({ supersede: "yes" })).toMatch(/^supersede: /);
    expect(problems({ tz: "Mars/Olympus" })).toBe("tz: must be an IANA time zone such as UTC or Europe/Berlin");
    expect(problems({ cron: [{ name: "n", schedule: "61 * * * *", ref: "main" }] })).toMatch(
      /^cron\.0\.schedule: not a cron schedule: .*minute.*61/,
    );
    expect(problems({ cron: [{ name: "n", schedule: "* * * * * * *", ref: "main" }] })).toBe(
      "cron.0.schedule: not a cron schedule: has 7 fields; expected 5 (minute hour day month weekday) or 6 (seconds first)",
    );
    expect(problems({ cron: [{ name: "n", schedule: "@daily", ref: "main" }] })).toMatch(
      /^cron\.0\.schedule: not a cron schedule: has 1 fields/,
    );
    expect(problems({ cron: [{ name: "n", schedule: "0 3 * * *", ref: "refs/pull/1/head" }] })).toMatch(/^cron\.0\.ref: must be a branch/);
    expect(problems({ cron: [{ name: "n", schedule: "0 3 * * *", ref: "main", flavor: "nix" }] })).toBe(
      'cron.0.flavor: unknown flavor "nix"; known: default',
    );
    expect(
      problems({
        cron: [
          { name: "n", schedule: "0 3 * * *", ref: "main" },
          { name: "n", schedule: "0 4 * * *", ref: "main" },
        ],
      }),
    ).toBe('cron.1.name: duplicate schedule name "n"');
    expect(problems({ cron: [{ name: "n", schedule: "0 3 * * *", ref: "main", branch: "x" }] })).toMatch(/^cron\.0: Unrecognized key/);
  });

  it("reads a schedule as written: 5 fields or seconds first, a bare branch as refs/heads/", () => {
    const config = RepoConfig.parse({
      ...HOOK,
      tz: "Europe/Berlin",
      cron: [
        { name: "nightly", schedule: "0 3 * * *", ref: "main" },
        { name: "often", schedule: "*/2 * * * * *", ref: "refs/tags/v1", flavor: "default" },
      ],
    });
    expect(config.cron).toEqual([
      { name: "nightly", schedule: "0 3 * * *", ref: "refs/heads/main", flavor: "default" },
      { name: "often", schedule: "*/2 * * * * *", ref: "refs/tags/v1", flavor: "default" },
    ]);
  });

  it("points at the repository and field in petrel.yaml", () => {
    const text =
      'repos:\n  git.example.test/acme/widgets:\n    hook: { secret: s }\n    cron: [{ name: n, schedule: "0 25 * * *", ref: main }]\n';
    expect(() => parseRegistryFile("petrel.yaml", text, "builder")).toThrow(
      /petrel\.yaml: repos\."git\.example\.test\/acme\/widgets" \(line 2\): cron\.0\.schedule: not a cron schedule/,
    );
  });
});

describe("supersede", () => {
  it("groups branch and pull request builds by repository, ref or number, and flavor; never tags, manual or cron", () => {
    const a = build("b/dispatch-1-aaaaaaa1", "2026-01-01T00:00:00.000Z");
    expect(supersedeGroup(a)).toBe(supersedeGroup({ ...a, repo: "ACME/widgets" }));
    expect(supersedeGroup(a)).not.toBe(supersedeGroup({ ...a, flavor: "nix" }));
    expect(supersedeGroup(a)).not.toBe(supersedeGroup({ ...a, ref: "dev" }));
    expect(supersedeGroup({ ...a, event: "pull_request", pr: "4" })).not.toBe(supersedeGroup({ ...a, event: "pull_request", pr: "5" }));
    for (const event of ["tag", "manual", "cron"]) expect(supersedeGroup({ ...a, event })).toBeUndefined();
  });

  it("stops every unfinished build that has a newer build of another commit, each superseded by the next newer one", () => {
    const a = build("b/dispatch-1-aaaaaaa1", "2026-01-01T00:00:01.000Z");
    const b = build("b/dispatch-2-aaaaaaa2", "2026-01-01T00:00:02.000Z", { state: "queued" });
    const c = build("b/dispatch-3-aaaaaaa3", "2026-01-01T00:00:03.000Z", { state: "queued" });
    const done = build("b/dispatch-0-aaaaaaa0", "2026-01-01T00:00:00.000Z", { state: "success" });
    // The input order (which replica listed what first) does not matter.
    const decided = supersededIn([c, done, a, b]).map(({ build: old, by }) => [old.id, by.id]);
    expect(decided).toEqual([
      [a.id, b.id],
      [b.id, c.id],
    ]);
    expect(supersededIn([c, b, a]).map((d) => d.build.id)).toEqual([a.id, b.id]);
  });

  it("breaks a tie of creation times by ID, the same on every replica, and leaves a second build of the same commit", () => {
    const x = build("b/dispatch-5-0000000a", "2026-01-01T00:00:05.000Z");
    const y = build("b/dispatch-5-0000000b", "2026-01-01T00:00:05.000Z");
    expect(supersededIn([y, x]).map((d) => [d.build.id, d.by.id])).toEqual([[x.id, y.id]]);
    expect(supersededIn([x, { ...y, commit: x.commit }])).toEqual([]);
  });

  it("posts the reason as the commit status of a superseded build", () => {
    const old = build("b/dispatch-1-aaaaaaa1", "2026-01-01T00:00:00.000Z", { state: "cancelled", reason: "superseded by b/dispatch-2-x" });
    expect(commitStatusOf(old)).toEqual({ state: "error", description: "superseded by b/dispatch-2-x" });
    expect(commitStatusOf({ ...old, reason: "cancelled" })).toEqual({ state: "error", description: "build cancelled" });
    expect(commitStatusOf({ ...old, state: "error", reason: "timed out after 2h" })).toEqual({
      state: "error",
      description: "timed out after 2h",
    });
  });
});

describe("cron runs", () => {
  const entry: RepoEntry = {
    key: "git.example.test/acme/widgets",
    config: RepoConfig.parse({ ...HOOK, cron: [{ name: "nightly", schedule: "0 3 * * *", ref: "main" }] }),
    secrets: { TOKEN: "t" },
  };
  const plan = (instant: string, commit: string, name = "nightly") =>
    planCron({
      entry,
      schedule: { name, ref: "refs/heads/main", flavor: "default" },
      instant: new Date(instant),
      commit,
      cloneUrl: "https://git.example.test/acme/widgets.git",
      defaultBuilder: "builder",
    });

  it("is a trusted EVENT=cron build of the ref, with the secrets", () => {
    const p = plan("2026-01-01T03:00:00Z", "a".repeat(40));
    expect(p).toMatchObject({
      kind: "build",
      event: "cron",
      trusted: true,
      meta: { EVENT: "cron", TRUSTED: "true", BRANCH: "main", COMMIT: "a".repeat(40), REPO: "acme/widgets" },
      payload: { secrets: { TOKEN: "t" } },
    });
  });

  it("has one token per schedule and instant, whatever commit the ref showed each leader", () => {
    const token = (p: ReturnType<typeof plan>) => (p.kind === "build" ? p.idempotencyToken : p.kind);
    expect(token(plan("2026-01-01T03:00:00Z", "a".repeat(40)))).toBe(token(plan("2026-01-01T03:00:00Z", "b".repeat(40))));
    expect(token(plan("2026-01-01T03:00:00Z", "a".repeat(40)))).not.toBe(token(plan("2026-01-02T03:00:00Z", "a".repeat(40))));
    expect(token(plan("2026-01-01T03:00:00Z", "a".repeat(40)))).not.toBe(token(plan("2026-01-01T03:00:00Z", "a".repeat(40), "other")));
  });
});

describe("petrel builds", () => {
  it("says why a build was cancelled or errored in the WHY column", () => {
    const now = Date.parse("2026-01-01T00:01:00Z");
    const table = buildsTable(
      [
        build("b/dispatch-2-aaaaaaa2", "2026-01-01T00:00:30.000Z", { state: "cancelled", reason: "superseded by b/dispatch-3-aaaaaaa3" }),
        build("b/dispatch-1-aaaaaaa1", "2026-01-01T00:00:00.000Z", { state: "failure", exitCode: 2, reason: "exit code 2" }),
      ],
      now,
    );
    const lines = table.trimEnd().split("\n");
    expect(lines[0]).toMatch(/TOOK\s+WHY$/);
    expect(lines[1]).toMatch(/cancelled .* superseded by b\/dispatch-3-aaaaaaa3$/);
    expect(lines[2]).toMatch(/failure\(2\)/);
    expect(lines[2]).not.toContain("exit code 2");
  });
});
