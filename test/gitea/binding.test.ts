import { describe, expect, it } from "vitest";
import { bindDelivery, isRefName } from "../../src/gitea/binding.js";
import { type Delivery, parseDelivery } from "../../src/gitea/events.js";
import { fixtureJson, headerReader } from "./fixtures.js";

const KEY = "git.example.test/acme/widgets";
const GITEA = { url: "http://127.0.0.1:3000", token: "t" };

function delivery(name: string, event: string, edit?: (json: Record<string, any>) => void): Delivery {
  const json = structuredClone(fixtureJson(name)) as Record<string, any>;
  edit?.(json);
  const parsed = parseDelivery(headerReader({ "X-Gitea-Event": event }), json);
  if (parsed.kind === "malformed") throw new Error(parsed.message);
  return parsed;
}
const push = (edit?: (repo: Record<string, any>, json: Record<string, any>) => void) =>
  delivery("push.json", "push", (j) => edit?.(j.repository, j));
const pr = (edit: (base: Record<string, any>) => void) =>
  delivery("pull_request.opened.fork.json", "pull_request", (j) => edit(j.pull_request.base.repo));

describe("bindDelivery: deliveries that name the entry's repository", () => {
  const cases: Array<{ name: string; key?: string; config?: Record<string, unknown>; delivery: Delivery; repoUrl: string }> = [
    { name: "the push fixture", delivery: push(), repoUrl: "https://git.example.test/acme/widgets.git" },
    {
      name: "a fork pull request (the head may be anywhere)",
      delivery: delivery("pull_request.opened.fork.json", "pull_request"),
      repoUrl: "https://git.example.test/acme/widgets.git",
    },
    {
      name: "names in another case, rebuilt on the entry's lower-case owner and name",
      delivery: push((r) => {
        r.full_name = "ACME/Widgets";
        r.clone_url = "https://GIT.example.test/ACME/Widgets.git";
        r.ssh_url = "git@Git.Example.Test:ACME/Widgets.git";
      }),
      repoUrl: "https://git.example.test/acme/widgets.git",
    },
    {
      name: "a clone URL on the gitea.url host keeps its scheme and port",
      config: { gitea: GITEA },
      delivery: push((r) => (r.clone_url = "http://127.0.0.1:3000/acme/widgets.git")),
      repoUrl: "http://127.0.0.1:3000/acme/widgets.git",
    },
    {
      name: "a clone URL without .git",
      delivery: push((r) => (r.clone_url = "https://git.example.test/acme/widgets")),
      repoUrl: "https://git.example.test/acme/widgets.git",
    },
    {
      name: "no ssh_url (SSH disabled on the forge)",
      delivery: push((r) => (r.ssh_url = "")),
      repoUrl: "https://git.example.test/acme/widgets.git",
    },
    {
      name: "a Gitea under a sub-path",
      key: "example.test/acme/widgets",
      delivery: push((r) => {
        r.html_url = "https://example.test/git/acme/widgets";
        r.clone_url = "https://example.test/git/acme/widgets.git";
        r.ssh_url = "git@example.test:acme/widgets.git";
      }),
      repoUrl: "https://example.test/git/acme/widgets.git",
    },
    {
      name: "the entry's clone_url wins",
      config: { clone_url: "file:///srv/git/widgets.git" },
      delivery: push(),
      repoUrl: "file:///srv/git/widgets.git",
    },
  ];
  it.each(cases)("binds $name", ({ key, config, delivery: d, repoUrl }) => {
    expect(bindDelivery(key ?? KEY, { config: config ?? {} }, d)).toEqual({ ok: true, repo: "acme/widgets", repoUrl });
  });
});

describe("bindDelivery: deliveries that name another repository or a local path", () => {
  const cases: Array<[string, Delivery, RegExp]> = [
    ["another full_name", push((r) => (r.full_name = "acme/secret-sauce")), /repository\.full_name/],
    [
      "another repository's clone_url",
      push((r) => (r.clone_url = "https://git.example.test/acme/secret-sauce.git")),
      /repository\.clone_url/,
    ],
    ["a clone_url on another host", push((r) => (r.clone_url = "https://evil.test/acme/widgets.git")), /clone_url/],
    ["a file:// clone_url", push((r) => (r.clone_url = "file:///srv/git/acme/widgets.git")), /clone_url/],
    ["a local path as clone_url", push((r) => (r.clone_url = "/srv/git/acme/widgets.git")), /clone_url/],
    ["an ssh clone_url", push((r) => (r.clone_url = "ssh://git@git.example.test/acme/widgets.git")), /clone_url/],
    ["credentials in the clone_url", push((r) => (r.clone_url = "https://u:p@git.example.test/acme/widgets.git")), /clone_url/],
    ["a host hidden behind userinfo", push((r) => (r.clone_url = "https://git.example.test@evil.test/acme/widgets.git")), /clone_url/],
    ["a query in the clone_url", push((r) => (r.clone_url = "https://git.example.test/acme/widgets.git?x=1")), /clone_url/],
    ["a path prefix the html_url lacks", push((r) => (r.clone_url = "https://git.example.test/mirror/acme/widgets.git")), /clone_url/],
    ["an option as clone_url", push((r) => (r.clone_url = "--upload-pack=touch /tmp/x")), /clone_url/],
    ["an ssh_url on another host", push((r) => (r.ssh_url = "ssh://git@evil.test:2222/acme/widgets.git")), /ssh_url/],
    ["an ssh_url of another repository", push((r) => (r.ssh_url = "git@git.example.test:acme/secret-sauce.git")), /ssh_url/],
    ["an html_url on another host", push((r) => (r.html_url = "https://evil.test/acme/widgets")), /html_url/],
    ["a pull request based on another repository", pr((b) => (b.full_name = "acme/secret-sauce")), /base\.repo\.full_name/],
    [
      "a pull request base cloned elsewhere",
      pr((b) => (b.clone_url = "https://git.example.test/acme/secret-sauce.git")),
      /base\.repo\.clone_url/,
    ],
    ["a pull request base cloned from a file", pr((b) => (b.clone_url = "file:///tmp/evil.git")), /base\.repo\.clone_url/],
    [
      "a pull request base with another html_url",
      pr((b) => (b.html_url = "https://git.example.test/acme/secret-sauce")),
      /base\.repo\.html_url/,
    ],
    [
      "a pull request base with another ssh_url",
      pr((b) => (b.ssh_url = "ssh://git@git.example.test:2222/acme/secret-sauce.git")),
      /base\.repo\.ssh_url/,
    ],
  ];
  it.each(cases)("refuses %s", (_name, d, field) => {
    const bound = bindDelivery(KEY, { config: { gitea: GITEA } }, d);
    expect(bound.ok).toBe(false);
    if (!bound.ok) {
      expect(bound.message).toMatch(field);
      expect(bound.message).toContain(KEY);
    }
  });

  it("refuses a file:// payload clone_url even when the entry's clone_url is set", () => {
    const d = push((r) => (r.clone_url = "file:///tmp/evil.git"));
    expect(bindDelivery(KEY, { config: { clone_url: "file:///srv/git/widgets.git" } }, d).ok).toBe(false);
  });

  it("refuses the key of another repository", () => {
    expect(bindDelivery("git.example.test/acme/secret-sauce", { config: {} }, push()).ok).toBe(false);
  });
});

describe("isRefName", () => {
  it.each(["refs/heads/main", "refs/heads/feature/x-1", "refs/tags/v1.2.0", "refs/pull/17/head", "refs/heads/ünïcode", "refs/heads/a.b"])(
    "accepts %s",
    (ref) => expect(isRefName(ref)).toBe(true),
  );
  it.each([
    "main",
    "refs/heads",
    "refs/heads/",
    "refs/heads//x",
    "refs/heads/a..b",
    "refs/heads/.hidden",
    "refs/heads/x.lock",
    "refs/heads/x.",
    "refs/heads/a b",
    "refs/heads/a~1",
    "refs/heads/a^",
    "refs/heads/a:b",
    "refs/heads/a?",
    "refs/heads/a*",
    "refs/heads/a[b",
    "refs/heads/a\\b",
    "refs/heads/a@{1}",
    "refs/heads/a\nb",
    "refs/heads/a\rb",
    "refs/heads/a\x7fb",
    "refs/heads/-oProxyCommand=x",
    `refs/heads/${"x".repeat(1100)}`,
  ])("refuses %j", (ref) => expect(isRefName(ref)).toBe(false));
});
