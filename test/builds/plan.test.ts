import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { type BuildPlan, isEntryCloneUrl, metaForBuilder, type Plan, planBuild, planManual } from "../../src/builds/plan.js";
import { type BuildMeta, checkBuildMeta } from "../../src/contract/dispatch.js";
import { type Delivery, parseDelivery } from "../../src/gitea/events.js";
import { RepoConfig, type RepoEntry } from "../../src/registry/schema.js";
import { fixtureJson, headerReader } from "../gitea/fixtures.js";

const KEY = "git.example.test/acme/widgets";
const SECRETS = { DEPLOY_TOKEN: "s3cr3t-deploy-token" };
const DEPLOY_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n";

function entryWith(config: Record<string, unknown> = {}, extra: Partial<RepoEntry> = {}): RepoEntry {
  return {
    key: KEY,
    config: RepoConfig.parse({ hook: { secret: "x" }, trusted: { senders: ["dana"] }, caches: { npm: "~/.npm" }, ...config }),
    secrets: SECRETS,
    deployKey: DEPLOY_KEY,
    ...extra,
  };
}

function delivery(name: string, event: string, edit?: (json: Record<string, any>) => void): Delivery {
  const json = structuredClone(fixtureJson(name)) as Record<string, any>;
  edit?.(json);
  const parsed = parseDelivery(headerReader({ "X-Gitea-Event": event }), json);
  if (parsed.kind === "malformed") throw new Error(parsed.message);
  return parsed;
}

function plan(d: Delivery, entry: RepoEntry = entryWith(), flavor = "default"): Plan {
  return planBuild({ delivery: d, entry, flavor, defaultBuilder: "builder" });
}

function built(p: Plan): BuildPlan {
  if (p.kind !== "build") throw new Error(`expected a build, got ${JSON.stringify(p)}`);
  return p;
}

const TRUSTED_PAYLOAD = { secrets: SECRETS, deploy_key: DEPLOY_KEY };

describe("planBuild: what builds", () => {
  const cases: Array<{
    name: string;
    fixture: string;
    event: string;
    meta: Record<string, string | undefined>;
    trusted: boolean;
    ref: string;
  }> = [
    {
      name: "a push to a branch builds `after` on that branch, trusted for a listed sender",
      fixture: "push.json",
      event: "push",
      ref: "refs/heads/main",
      trusted: true,
      meta: {
        REPO_URL: "https://git.example.test/acme/widgets.git",
        COMMIT: "4c1d7e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d",
        BRANCH: "main",
        FLAVOR: "default",
        REPO: "acme/widgets",
        EVENT: "push",
        TRUSTED: "true",
        PRIVATE: "true",
        CACHES: "npm=~/.npm",
        TAG: undefined,
        PR: undefined,
      },
    },
    {
      name: "a tag push builds the tagged commit with TAG and BRANCH set to the tag",
      fixture: "push.tag.json",
      event: "push",
      ref: "refs/tags/v1.2.0",
      trusted: true,
      meta: {
        COMMIT: "4c1d7e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d",
        BRANCH: "v1.2.0",
        TAG: "v1.2.0",
        EVENT: "tag",
        PR: undefined,
      },
    },
    {
      name: "a same-repository pull request from a listed sender is trusted",
      fixture: "pull_request.opened.same-repo.json",
      event: "pull_request",
      ref: "refs/pull/19/head",
      trusted: true,
      meta: {
        REPO_URL: "https://git.example.test/acme/widgets.git",
        COMMIT: "c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2",
        BRANCH: "fix/flaky-test",
        PR: "19",
        EVENT: "pull_request",
        TRUSTED: "true",
        PRIVATE: "false",
      },
    },
    {
      name: "synchronized builds the new head commit",
      fixture: "pull_request.synchronized.json",
      event: "pull_request",
      ref: "refs/pull/18/head",
      trusted: true,
      meta: { COMMIT: "a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0", BRANCH: "feature/faster-build", PR: "18" },
    },
    {
      name: "reopened from a fork by an unlisted sender builds untrusted, cloning the base repository",
      fixture: "pull_request.reopened.json",
      event: "pull_request",
      ref: "refs/pull/17/head",
      trusted: false,
      meta: {
        REPO_URL: "https://git.example.test/acme/widgets.git",
        COMMIT: "b1a2c3d4e5f60718293a4b5c6d7e8f9012345678",
        BRANCH: "fix/readme-typo",
        PR: "17",
        TRUSTED: "false",
      },
    },
    {
      name: "a pull request whose head repository is gone builds refs/pull/<n>/head, untrusted even for a listed sender",
      fixture: "pull_request.head-deleted.json",
      event: "pull_request",
      ref: "refs/pull/17/head",
      trusted: false,
      meta: { BRANCH: "refs/pull/17/head", PR: "17", TRUSTED: "false", COMMIT: "b1a2c3d4e5f60718293a4b5c6d7e8f9012345678" },
    },
  ];

  for (const c of cases) {
    it(c.name, () => {
      const p = built(plan(delivery(c.fixture, c.event)));
      expect(p.builder).toBe("builder");
      expect(p.ref).toBe(c.ref);
      expect(p.trusted).toBe(c.trusted);
      for (const [key, value] of Object.entries(c.meta)) expect(p.meta[key as keyof BuildMeta], key).toBe(value);
      expect(p.commit).toBe(p.meta.COMMIT);
      if (c.trusted) expect(p.payload).toEqual(TRUSTED_PAYLOAD);
      else expect(p).not.toHaveProperty("payload");
      expect(checkBuildMeta({ ...p.meta })).toEqual({ ok: true, value: p.meta });
      expect(p.idempotencyToken).toMatch(/^[0-9a-f]{64}$/);
    });
  }

  it("a fork pull request never gets secrets, even when its sender is listed as trusted", () => {
    const entry = entryWith({ trusted: { senders: ["dana", "contrib"] } });
    const p = built(plan(delivery("pull_request.opened.fork.json", "pull_request"), entry));
    expect(p.trusted).toBe(false);
    expect(p.meta.TRUSTED).toBe("false");
    expect(p).not.toHaveProperty("payload");
  });

  it("a push by an unlisted sender builds without secrets", () => {
    const p = built(plan(delivery("push.json", "push", (j) => (j.sender.login = "mallory"))));
    expect(p.trusted).toBe(false);
    expect(p.meta.TRUSTED).toBe("false");
    expect(p).not.toHaveProperty("payload");
  });

  it("a same-repository pull request by an unlisted sender builds without secrets", () => {
    const d = delivery("pull_request.synchronized.json", "pull_request", (j) => (j.sender.login = "erin"));
    expect(built(plan(d))).not.toHaveProperty("payload");
  });

  it("matches senders case-insensitively, as Gitea user names are", () => {
    const entry = entryWith({ trusted: { senders: ["DANA"] } });
    expect(built(plan(delivery("push.json", "push"), entry)).trusted).toBe(true);
  });

  it("a trusted build without a deploy key carries only the secrets", () => {
    const entry: RepoEntry = { key: KEY, config: entryWith().config, secrets: SECRETS };
    expect(built(plan(delivery("push.json", "push"), entry)).payload).toEqual({ secrets: SECRETS });
  });

  it("omits CACHES when the repository has no caches", () => {
    const p = built(plan(delivery("push.json", "push"), entryWith({ caches: {} })));
    expect(p.meta).not.toHaveProperty("CACHES");
  });

  it("uses the flavor's builder", () => {
    const entry = entryWith({ flavors: { default: { builder: "builder" }, nix: { builder: "builder-nix" } } });
    const p = built(plan(delivery("push.json", "push"), entry, "nix"));
    expect(p.builder).toBe("builder-nix");
    expect(p.meta.FLAVOR).toBe("nix");
    expect(p.flavor).toBe("nix");
  });

  it("refuses secrets that exceed Nomad's dispatch payload limit", () => {
    const entry = entryWith({}, { secrets: { BIG: "x".repeat(17 * 1024) } });
    expect(plan(delivery("push.json", "push"), entry)).toMatchObject({ kind: "reject", code: "config_invalid" });
  });
});

describe("planBuild: what is skipped", () => {
  const skips: Array<[string, string, string, RegExp, ((j: Record<string, any>) => void)?]> = [
    ["a tag deletion (all-zero after)", "push.tag-deleted.json", "push", /deleted: refs\/tags\/v1\.1\.0/],
    ["a deletion in a SHA-256 repository (64 zeros)", "push.tag-deleted.json", "push", /deleted/, (j) => (j.after = "0".repeat(64))],
    ["a branch deletion (delete event)", "delete.branch.json", "delete", /event "delete"/],
    ["a create event", "create.tag.json", "create", /event "create"/],
    ["a merged pull request", "pull_request.closed.merged.json", "pull_request", /#18 closed \(merged\)/],
    [
      "a pull request closed without merge",
      "pull_request.closed.merged.json",
      "pull_request",
      /#18 "closed"/,
      (j) => (j.pull_request.merged = false),
    ],
    ["a label change", "pull_request.label_updated.json", "pull_request", /"label_updated"/],
    ["an edit", "pull_request.opened.same-repo.json", "pull_request", /"edited"/, (j) => (j.action = "edited")],
    ["a push to a ref that is neither branch nor tag", "push.json", "push", /refs\/notes\/commits/, (j) => (j.ref = "refs/notes/commits")],
  ];

  for (const [name, fixture, event, reason, edit] of skips) {
    it(`skips ${name}, naming why`, () => {
      const p = plan(delivery(fixture, event, edit));
      expect(p).toEqual({ kind: "skip", reason: expect.stringMatching(reason) });
    });
  }
});

describe("planBuild: bad flavors", () => {
  it("rejects an unknown flavor with 400, listing the known ones", () => {
    expect(plan(delivery("push.json", "push"), entryWith(), "gpu")).toEqual({
      kind: "reject",
      code: "bad_request",
      message: expect.stringMatching(/unknown flavor "gpu".*default/),
    });
  });

  it("rejects flavor names that are Object.prototype members", () => {
    for (const flavor of ["constructor", "toString", "__proto__", "hasOwnProperty"]) {
      expect(plan(delivery("push.json", "push"), entryWith(), flavor).kind).toBe("reject");
    }
  });

  it("rejects an unknown flavor even for a delivery that would be skipped", () => {
    expect(plan(delivery("delete.branch.json", "delete"), entryWith(), "gpu").kind).toBe("reject");
  });

  it("rejects malformed flavor names", () => {
    expect(plan(delivery("push.json", "push"), entryWith(), "a/b")).toMatchObject({ kind: "reject", code: "bad_request" });
    expect(plan(delivery("push.json", "push"), entryWith(), "")).toMatchObject({ kind: "reject", code: "bad_request" });
  });
});

describe("planBuild: idempotency token", () => {
  const token = (d: Delivery, entry = entryWith(), flavor = "default") => built(plan(d, entry, flavor)).idempotencyToken;
  const push = () => delivery("push.json", "push");

  it("is the same for a redelivery of the same event", () => {
    expect(token(push())).toBe(token(push()));
  });

  it("ignores who sent it and whether the build is trusted", () => {
    expect(token(delivery("push.json", "push", (j) => (j.sender.login = "mallory")))).toBe(token(push()));
  });

  it("changes with the commit, the ref, the flavor, the repository and the event", () => {
    const base = token(push());
    const others = [
      token(delivery("push.json", "push", (j) => (j.after = "e7a3b5c9d1f2a4b6c8d0e2f4a6b8c0d2e4f6a8b0"))),
      token(delivery("push.json", "push", (j) => (j.ref = "refs/heads/release"))),
      token(push(), entryWith({ flavors: { default: { builder: "b" }, nix: { builder: "n" } } }), "nix"),
      token(
        delivery("push.json", "push", (j) => {
          j.repository = JSON.parse(JSON.stringify(j.repository).replaceAll("acme/widgets", "acme/gadgets"));
        }),
        entryWith({}, { key: "git.example.test/acme/gadgets" }),
      ),
      token(delivery("push.json", "push", (j) => (j.ref = "refs/tags/main"))),
    ];
    expect(new Set([base, ...others]).size).toBe(others.length + 1);
  });

  it("is shared by opened and reopened at the same head commit, so they dispatch once", () => {
    expect(token(delivery("pull_request.opened.fork.json", "pull_request"))).toBe(
      token(delivery("pull_request.reopened.json", "pull_request")),
    );
  });

  it("differs for a pull request and a push of the same commit", () => {
    const pr = token(delivery("pull_request.synchronized.json", "pull_request"));
    const pushed = token(
      delivery("push.json", "push", (j) => {
        j.after = "a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0";
        j.ref = "refs/heads/feature/faster-build";
      }),
    );
    expect(pr).not.toBe(pushed);
  });
});

describe("planBuild properties", () => {
  it("payload is present exactly when the build is trusted, and forks are never trusted", () => {
    const logins = fc.constantFrom("dana", "contrib", "Dana", "mallory", "bob");
    fc.assert(
      fc.property(
        fc.constantFrom(
          "push.json",
          "push.tag.json",
          "pull_request.opened.fork.json",
          "pull_request.reopened.json",
          "pull_request.synchronized.json",
          "pull_request.head-deleted.json",
        ),
        logins,
        fc.array(logins, { maxLength: 4 }),
        (fixture, sender, senders) => {
          const event = fixture.startsWith("push") ? "push" : "pull_request";
          const d = delivery(fixture, event, (j) => (j.sender.login = sender));
          const p = built(plan(d, entryWith({ trusted: { senders } })));
          expect(p.payload !== undefined).toBe(p.trusted);
          expect(p.meta.TRUSTED).toBe(String(p.trusted));
          const fork =
            d.kind === "pull_request" && d.payload.pull_request.head.repo?.full_name !== d.payload.pull_request.base.repo.full_name;
          if (fork) expect(p.trusted).toBe(false);
          if (p.trusted) expect(senders.map((s) => s.toLowerCase())).toContain(sender.toLowerCase());
        },
      ),
    );
  });
});

describe("metaForBuilder", () => {
  const meta = built(plan(delivery("pull_request.synchronized.json", "pull_request"))).meta;

  it("sends an Albatros builder only the four required keys", () => {
    const out = metaForBuilder(meta, { metaRequired: ["REPO_URL", "COMMIT", "BRANCH", "FLAVOR"], metaOptional: [] });
    expect(Object.keys(out).sort()).toEqual(["BRANCH", "COMMIT", "FLAVOR", "REPO_URL"]);
    expect(out.COMMIT).toBe(meta.COMMIT);
  });

  it("adds the optional keys a builder declares, and only those", () => {
    const out = metaForBuilder(meta, {
      metaRequired: ["REPO_URL", "COMMIT", "BRANCH", "FLAVOR"],
      metaOptional: ["PR", "TRUSTED", "TAG", "SOMETHING_ELSE"],
    });
    expect(out).toEqual({
      REPO_URL: meta.REPO_URL,
      COMMIT: meta.COMMIT,
      BRANCH: meta.BRANCH,
      FLAVOR: meta.FLAVOR,
      PR: "18",
      TRUSTED: "true",
    });
  });

  it("keeps optional keys a builder lists as required", () => {
    const out = metaForBuilder(meta, { metaRequired: ["REPO_URL", "COMMIT", "BRANCH", "FLAVOR", "REPO"], metaOptional: [] });
    expect(out.REPO).toBe("acme/widgets");
  });
});

describe("planManual", () => {
  const base = {
    entry: entryWith({ gitea: { url: "https://git.example.test/", token: "t" } }),
    ref: "refs/heads/main",
    commit: "4C1D7E0F9A8B7C6D5E4F3A2B1C0D9E8F7A6B5C4D",
    flavor: "default",
    defaultBuilder: "builder",
    nonce: "n1",
  };

  it("builds a branch as a trusted manual build, deriving the clone URL", () => {
    const p = built(planManual(base));
    expect(p.event).toBe("manual");
    expect(p.meta).toMatchObject({
      EVENT: "manual",
      BRANCH: "main",
      COMMIT: "4c1d7e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d",
      REPO: "acme/widgets",
      REPO_URL: "https://git.example.test/acme/widgets.git",
      TRUSTED: "true",
    });
    expect(p.payload).toEqual(TRUSTED_PAYLOAD);
    expect(checkBuildMeta({ ...p.meta })).toEqual({ ok: true, value: p.meta });
  });

  it("is a fresh build for every nonce, and the same one for a repeated nonce", () => {
    const a = built(planManual(base)).idempotencyToken;
    expect(built(planManual({ ...base, nonce: "n2" })).idempotencyToken).not.toBe(a);
    expect(built(planManual(base)).idempotencyToken).toBe(a);
  });

  it("never trusts refs/pull, which may hold fork code", () => {
    const p = built(planManual({ ...base, ref: "refs/pull/17/head" }));
    expect(p.trusted).toBe(false);
    expect(p).not.toHaveProperty("payload");
    expect(p.meta.PR).toBe("17");
  });

  it("reads a bare name as a branch and sets TAG for tags", () => {
    expect(built(planManual({ ...base, ref: "develop" })).ref).toBe("refs/heads/develop");
    expect(built(planManual({ ...base, ref: "refs/tags/v2" })).meta).toMatchObject({ TAG: "v2", BRANCH: "v2" });
  });

  it("uses a given clone URL and privacy", () => {
    const p = built(planManual({ ...base, repoUrl: "ssh://git@git.example.test:2222/acme/widgets.git", private: true }));
    expect(p.meta.REPO_URL).toBe("ssh://git@git.example.test:2222/acme/widgets.git");
    expect(p.meta.PRIVATE).toBe("true");
  });

  it("derives https://<host>[:port] from the key without a gitea URL", () => {
    const entry = entryWith({}, { key: "git.example.test_3000/acme/widgets" });
    expect(built(planManual({ ...base, entry })).meta.REPO_URL).toBe("https://git.example.test:3000/acme/widgets.git");
  });

  it("re-runs keep the original's event and head branch, and are trusted only when the caller says so", () => {
    const pr = built(
      planManual({ ...base, ref: "refs/pull/17/head", rerun: { event: "pull_request", branch: "fix/readme", trusted: false } }),
    );
    expect(pr.meta).toMatchObject({ EVENT: "pull_request", BRANCH: "fix/readme", PR: "17", TRUSTED: "false" });
    expect(pr).not.toHaveProperty("payload");
    const push = built(planManual({ ...base, rerun: { event: "push", branch: "main", trusted: false } }));
    expect(push.trusted).toBe(false);
    expect(push).not.toHaveProperty("payload");
    expect(push.meta.EVENT).toBe("push");
    expect(built(planManual({ ...base, rerun: { event: "push", branch: "main", trusted: true } })).payload).toEqual(TRUSTED_PAYLOAD);
  });

  it("tells clone URLs of the entry's own repository from others, on its forge or not", () => {
    const entry = entryWith({ gitea: { url: "https://forge.example.test/", token: "t" } });
    expect(isEntryCloneUrl(entry, "https://git.example.test/acme/widgets.git")).toBe(true);
    expect(isEntryCloneUrl(entry, "ssh://git@forge.example.test:2222/acme/widgets.git")).toBe(true);
    expect(isEntryCloneUrl(entry, "git@forge.example.test:acme/widgets.git")).toBe(true);
    for (const url of [
      "https://evil.example.test/acme/widgets.git",
      // The entry's forge, another repository: a build record naming it must not get acme/widgets' secrets.
      "https://git.example.test/mallory/evil.git",
      "https://git.example.test/mallory/widgets.git",
      "git@forge.example.test:mallory/evil.git",
      "ssh://git@forge.example.test/acme/widgets-fork.git",
      "https://user:pw@git.example.test/acme/widgets.git",
      "file:///srv/git/widgets.git",
      "/srv/git/widgets.git",
      "ext::sh -c x",
    ]) {
      expect(isEntryCloneUrl(entry, url)).toBe(false);
    }
    expect(isEntryCloneUrl(entryWith({ clone_url: "file:///srv/git/widgets.git" }), "file:///srv/git/widgets.git")).toBe(true);
  });

  it("rejects a commit that is not hex and a ref it cannot build", () => {
    expect(planManual({ ...base, commit: "HEAD~1" })).toMatchObject({ kind: "reject", code: "bad_request" });
    expect(planManual({ ...base, ref: "refs/notes/x" })).toMatchObject({ kind: "reject", code: "bad_request" });
    expect(planManual({ ...base, flavor: "gpu" })).toMatchObject({ kind: "reject", code: "bad_request" });
  });
});
