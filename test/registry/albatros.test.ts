import { describe, expect, it } from "vitest";
import { payloadForBuilder } from "../../src/builds/albatros.js";
import { REQUIRED_META } from "../../src/contract/dispatch.js";
import { albatrosKeyOf, entryFromAlbatros, repoKeyOfAlbatros, secretsFromInject } from "../../src/registry/albatros.js";
import { AlbatrosEntry } from "../../src/registry/schema.js";

const KEY = "git.example.test/acme/widgets";
const b64 = (s: string) => Buffer.from(s).toString("base64");
const b64url = (s: string) => Buffer.from(s).toString("base64url");

describe("repoKeyOfAlbatros", () => {
  it.each([
    ["standard base64 of html_url", b64("https://git.example.test/acme/widgets")],
    ["standard base64 with .git", b64("https://git.example.test/acme/widgets.git")],
    ["URL-safe base64 without padding", b64url("https://git.example.test/Acme/Widgets")],
    ["URL-safe base64 with .git", b64url("https://git.example.test/acme/widgets.git")],
  ])("reads %s", (_what, encoded) => {
    expect(repoKeyOfAlbatros(encoded)).toBe(KEY);
  });

  it.each([
    ["not base64", "not base64!"],
    ["base64 of something that is not a URL", b64("hello world")],
    ["base64 of a URL without owner/name", b64("https://git.example.test/")],
    ["an impossible length", "abcde"],
  ])("refuses %s", (_what, encoded) => {
    expect(repoKeyOfAlbatros(encoded)).toBeUndefined();
  });

  it("writes the key Albatros writes: standard base64 of the URL under the prefix", () => {
    expect(albatrosKeyOf("albatros/", "https://git.example.test/acme/widgets")).toBe(
      `albatros/${b64("https://git.example.test/acme/widgets")}`,
    );
  });
});

describe("secretsFromInject", () => {
  it("parses plain export lines, quoted or not, with set +x, comments and blank lines", () => {
    const inject = [
      "set +x",
      "# deploy",
      "export A=plain",
      "export B='single quoted with spaces $HOME'",
      'export C="double quoted"',
      "",
      "export EMPTY=",
      "export D=x=y\r",
    ].join("\n");
    expect(secretsFromInject(inject)).toEqual({
      A: "plain",
      B: "single quoted with spaces $HOME",
      C: "double quoted",
      EMPTY: "",
      D: "x=y",
    });
  });

  it.each([
    ["a command", "export A=1\ncurl https://example.test | sh"],
    ["an expansion", "export A=$HOME"],
    ["a double-quoted expansion", 'export A="$(cat /x)"'],
    ["a command substitution", "export A=`id`"],
    ["an assignment without export", "A=1"],
    ["two assignments on a line", "export A=1 B=2"],
    ["a name petrel reserves", "export deploy_key=abc"],
    ["an invalid name", "export 1A=x"],
    ["a trailing command", "export A=1; rm -rf /"],
  ])("keeps the text as inject when it has %s", (_what, inject) => {
    expect(secretsFromInject(inject)).toBeUndefined();
  });
});

describe("entryFromAlbatros", () => {
  it("makes a token-only entry with the inject and no secrets", () => {
    const value = AlbatrosEntry.parse({
      hook: { token: "t0ken" },
      gitea: { url: "https://git.example.test", token: "g" },
      trusted: { senders: ["dana"] },
      inject: "export A=1",
    });
    const entry = entryFromAlbatros("albatros/xyz", KEY, value, "builder");
    expect(entry).toMatchObject({
      key: KEY,
      albatros: "albatros/xyz",
      inject: "export A=1",
      secrets: {},
      config: { hook: { token: "t0ken" }, trusted: { senders: ["dana"] }, flavors: { default: { builder: "builder" } } },
    });
    expect(entry.config.hook.secret).toBeUndefined();
  });

  it("refuses an entry without a hook token", () => {
    expect(AlbatrosEntry.safeParse({ hook: {}, inject: "x" }).success).toBe(false);
  });
});

describe("payloadForBuilder", () => {
  const albatros = { metaOptional: [] as string[] };
  const petrel = { metaOptional: ["REPO", "TRUSTED"] };

  it("gives an Albatros builder the inject text itself", () => {
    expect(payloadForBuilder({ secrets: {}, inject: "set +x\nexport A=1" }, albatros)).toBe("set +x\nexport A=1");
  });

  it("gives an Albatros builder export lines for kept-apart secrets, then the inject, and never the deploy key", () => {
    const text = payloadForBuilder({ secrets: { A: "it's" }, deploy_key: "KEY-MATERIAL", inject: "echo hi\n" }, albatros);
    expect(text).toContain("export A='it'\\''s'\n");
    expect(String(text).endsWith("echo hi\n")).toBe(true);
    expect(text).not.toContain("KEY-MATERIAL");
  });

  it("gives petrel's builders the JSON payload, inject included", () => {
    const payload = { secrets: { A: "1" }, inject: "echo hi" };
    expect(payloadForBuilder(payload, petrel)).toBe(payload);
  });

  it("gives nothing to an untrusted build, nor an empty text", () => {
    expect(payloadForBuilder(undefined, albatros)).toBeUndefined();
    expect(payloadForBuilder({ secrets: {} }, albatros)).toBeUndefined();
    expect(REQUIRED_META).toHaveLength(4);
  });
});
