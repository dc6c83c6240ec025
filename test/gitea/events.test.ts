import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { eventName, parseDelivery } from "../../src/gitea/events.js";
import { fixtureJson, headerReader } from "./fixtures.js";

const gitea = (event: string, delivery = "3f0c9a52-8d3e-4b8e-9f55-2f7f1c7a6b10") =>
  headerReader({ "X-Gitea-Event": event, "X-Gitea-Delivery": delivery, "X-GitHub-Event": event });

function clone<T>(value: T): T {
  return structuredClone(value);
}

describe("eventName", () => {
  it("prefers X-Gitea-Event, then X-Forgejo-Event, then X-GitHub-Event", () => {
    expect(eventName(headerReader({ "X-Gitea-Event": "push", "X-Forgejo-Event": "create", "X-GitHub-Event": "delete" }))).toBe("push");
    expect(eventName(headerReader({ "X-Forgejo-Event": "create", "X-GitHub-Event": "delete" }))).toBe("create");
    expect(eventName(headerReader({ "X-GitHub-Event": "Delete" }))).toBe("delete");
    expect(eventName(headerReader({}))).toBeUndefined();
  });
});

describe("parseDelivery", () => {
  it("parses the push fixture with its delivery id", () => {
    const parsed = parseDelivery(gitea("push"), fixtureJson("push.json"));
    expect(parsed).toMatchObject({
      kind: "push",
      event: "push",
      deliveryId: "3f0c9a52-8d3e-4b8e-9f55-2f7f1c7a6b10",
      payload: {
        ref: "refs/heads/main",
        after: "4c1d7e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d",
        repository: {
          full_name: "acme/widgets",
          private: true,
          clone_url: "https://git.example.test/acme/widgets.git",
          html_url: "https://git.example.test/acme/widgets",
        },
        sender: { login: "dana" },
      },
    });
  });

  it("drops keys it does not use", () => {
    const parsed = parseDelivery(gitea("push"), fixtureJson("push.json"));
    if (parsed.kind !== "push") throw new Error(parsed.kind);
    expect(parsed.payload).not.toHaveProperty("commits");
    expect(parsed.payload.repository).not.toHaveProperty("owner");
  });

  it("reads a Forgejo delivery by X-Forgejo-Event", () => {
    const parsed = parseDelivery(headerReader({ "X-Forgejo-Event": "push" }), fixtureJson("push.json"));
    expect(parsed.kind).toBe("push");
  });

  it("parses a fork pull request with head and base repositories", () => {
    const parsed = parseDelivery(gitea("pull_request"), fixtureJson("pull_request.opened.fork.json"));
    expect(parsed).toMatchObject({
      kind: "pull_request",
      payload: {
        action: "opened",
        number: 17,
        pull_request: {
          head: { ref: "fix/readme-typo", repo: { full_name: "contrib/widgets" } },
          base: { repo: { full_name: "acme/widgets" } },
        },
      },
    });
  });

  it("keeps a deleted head repository as null", () => {
    const parsed = parseDelivery(gitea("pull_request"), fixtureJson("pull_request.head-deleted.json"));
    if (parsed.kind !== "pull_request") throw new Error(parsed.kind);
    expect(parsed.payload.pull_request.head.repo).toBeNull();
    expect(parsed.payload.pull_request.head.ref).toBe("refs/pull/17/head");
  });

  it("treats a missing head repository like a deleted one", () => {
    const json = clone(fixtureJson("pull_request.head-deleted.json")) as { pull_request: { head: Record<string, unknown> } };
    delete json.pull_request.head.repo;
    const parsed = parseDelivery(gitea("pull_request"), json);
    if (parsed.kind !== "pull_request") throw new Error(parsed.kind);
    expect(parsed.payload.pull_request.head.repo).toBeNull();
  });

  it("reads a tag push's peeled commit and a deletion's null head_commit", () => {
    const tag = parseDelivery(gitea("push"), fixtureJson("push.tag.json"));
    if (tag.kind !== "push") throw new Error(tag.kind);
    expect(tag.payload.head_commit?.id).toBe("4c1d7e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d");
    const deleted = parseDelivery(gitea("push"), fixtureJson("push.tag-deleted.json"));
    if (deleted.kind !== "push") throw new Error(deleted.kind);
    expect(deleted.payload.head_commit).toBeNull();
    expect(deleted.payload.after).toBe("0".repeat(40));
  });

  it("accepts 64-character object ids of SHA-256 repositories", () => {
    const json = clone(fixtureJson("push.json")) as Record<string, unknown>;
    json.after = "ab".repeat(32);
    json.head_commit = null;
    expect(parseDelivery(gitea("push"), json)).toMatchObject({ kind: "push", payload: { after: "ab".repeat(32) } });
  });

  it("returns other events with their name and envelope", () => {
    expect(parseDelivery(gitea("delete"), fixtureJson("delete.branch.json"))).toMatchObject({
      kind: "other",
      event: "delete",
      payload: { repository: { full_name: "acme/widgets" }, sender: { login: "dana" } },
    });
    expect(parseDelivery(gitea("create"), fixtureJson("create.tag.json"))).toMatchObject({ kind: "other", event: "create" });
  });

  it("reports a missing event header as malformed", () => {
    expect(parseDelivery(headerReader({}), fixtureJson("push.json"))).toEqual({
      kind: "malformed",
      message: expect.stringMatching(/X-Gitea-Event/),
    });
  });

  it("reports an event header that is not an event name as malformed", () => {
    expect(parseDelivery(gitea("push; rm -rf /"), fixtureJson("push.json")).kind).toBe("malformed");
  });

  it("names the missing field in the message", () => {
    const json = clone(fixtureJson("push.json")) as { repository: Record<string, unknown> };
    delete json.repository.clone_url;
    expect(parseDelivery(gitea("push"), json)).toEqual({
      kind: "malformed",
      message: expect.stringMatching(/^push payload: repository\.clone_url: /),
    });
  });

  it("refuses a commit id that is not hex", () => {
    const json = clone(fixtureJson("push.json")) as Record<string, unknown>;
    json.after = "4c1d7e0f; touch /tmp/x";
    expect(parseDelivery(gitea("push"), json)).toMatchObject({ kind: "malformed", message: expect.stringMatching(/after/) });
  });

  it("refuses a pull request without its number", () => {
    const json = clone(fixtureJson("pull_request.opened.fork.json")) as Record<string, unknown>;
    delete json.number;
    expect(parseDelivery(gitea("pull_request"), json)).toMatchObject({ kind: "malformed", message: expect.stringMatching(/number/) });
  });

  it("refuses bodies that are not objects", () => {
    for (const body of [null, [], "push", 42]) {
      expect(parseDelivery(gitea("push"), body)).toMatchObject({ kind: "malformed", message: "body is not a JSON object" });
    }
  });

  it("refuses an envelope without a repository for other events", () => {
    expect(parseDelivery(gitea("issues"), { sender: { login: "dana" } })).toMatchObject({
      kind: "malformed",
      message: expect.stringMatching(/repository/),
    });
  });

  it("never throws, whatever the headers and body (property)", () => {
    const events = fc.oneof(fc.constantFrom("push", "pull_request", "create", "delete", "PUSH"), fc.string());
    fc.assert(
      fc.property(
        fc.option(events, { nil: undefined }),
        fc.option(events, { nil: undefined }),
        fc.oneof(fc.jsonValue(), fc.anything()),
        (giteaEvent, forgejoEvent, body) => {
          const parsed = parseDelivery(headerReader({ "X-Gitea-Event": giteaEvent, "X-Forgejo-Event": forgejoEvent }), body);
          expect(["push", "pull_request", "other", "malformed"]).toContain(parsed.kind);
        },
      ),
    );
  });

  it("never throws on fixtures with fields replaced by arbitrary values (property)", () => {
    const names = ["push.json", "pull_request.opened.fork.json", "pull_request.head-deleted.json", "push.tag.json"];
    fc.assert(
      fc.property(
        fc.constantFrom(...names),
        fc.constantFrom("ref", "after", "repository", "sender", "pull_request", "number", "action", "head_commit"),
        fc.anything(),
        (name, field, value) => {
          const json = clone(fixtureJson(name)) as Record<string, unknown>;
          json[field] = value;
          const event = name.startsWith("push") ? "push" : "pull_request";
          const parsed = parseDelivery(gitea(event), json);
          expect([event, "malformed"]).toContain(parsed.kind);
        },
      ),
    );
  });
});
