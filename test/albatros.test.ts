import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readConfig } from "../src/config.js";
import type { RunningPetrel } from "../src/main.js";
import { startPetrel } from "../src/main.js";
import type { ConsulFake } from "./fakes/consul.js";
import { startConsulFake } from "./fakes/consul.js";
import type { GiteaFake } from "./fakes/gitea.js";
import { startGiteaFake } from "./fakes/gitea.js";
import type { NomadFake } from "./fakes/nomad.js";
import { startNomadFake } from "./fakes/nomad.js";
import { fixtureBytes } from "./gitea/fixtures.js";
import { captureLogs } from "./helpers/log-capture.js";
import { eventually } from "./helpers/wait.js";
import { builderJob } from "./nomad/target.js";

// An Albatros installation switched over by changing the URL its webhooks call (SPEC §12): its Consul entries,
// its Albatros-style builder (four required meta keys, no optional one), its token hook and its log follow,
// through petrel's composition root against the fakes.

const PUSH = fixtureBytes("push.json").toString("utf8");
const FIXTURE_COMMIT = "4c1d7e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d";
const WIDGETS_TOKEN = "widgets-albatros-token-5d2c";
const GADGETS_TOKEN = "gadgets-albatros-token-8e1a";
const INJECT = 'set +x\nexport DEPLOY_TOKEN=albatros-deploy-3b7f\nexport NPM_TOKEN="albatros-npm-9c2d"\n';
const ADMIN = "admin-token-0123456789abcdef";
const b64 = (s: string) => Buffer.from(s).toString("base64");

/** The push fixture for `repo` (acme/<repo>) at `commit`, pushed by `sender`. */
function push(commit: string, options: { repo?: string; sender?: string } = {}): string {
  const text = PUSH.replaceAll(FIXTURE_COMMIT, commit).replaceAll("widgets", options.repo ?? "widgets");
  if (options.sender === undefined) return text;
  const json = JSON.parse(text) as { sender: { login: string }; pusher?: { login: string } };
  json.sender.login = options.sender;
  if (json.pusher) json.pusher.login = options.sender;
  return JSON.stringify(json);
}

describe("Albatros compatibility", () => {
  let consul: ConsulFake;
  let nomad: NomadFake;
  let gitea: GiteaFake;
  let petrel: RunningPetrel;
  const logs = captureLogs("info");

  /** As Albatros users call it: `curl -d @payload.json 'http://…/hook?token=…&flavor=…'`, unsigned. */
  const curlHook = (body: string, query: string) =>
    fetch(`${petrel.url}/hook?${query}`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", "x-gitea-event": "push" },
      body,
    });

  const dispatched = (commit: string) => nomad.children("builder").filter((id) => nomad.job(id)?.Meta?.COMMIT === commit);
  const payloadOf = (id: string) => {
    const p = nomad.job(id)?.Payload;
    return p ? Buffer.from(String(p), "base64").toString("utf8") : null;
  };

  beforeAll(async () => {
    consul = await startConsulFake();
    nomad = await startNomadFake();
    gitea = await startGiteaFake({ token: "gitea-token-albatros-1" });
    // Albatros's builder: the four required keys and nothing optional.
    nomad.registerJob(builderJob("builder", { MetaRequired: ["REPO_URL", "COMMIT", "BRANCH", "FLAVOR"], MetaOptional: [] }));
    nomad.registerJob(builderJob("builder-petrel"));
    consul.set(
      `albatros/${b64("https://git.example.test/acme/widgets")}`,
      JSON.stringify({
        hook: { token: WIDGETS_TOKEN },
        gitea: { url: gitea.url, token: "gitea-token-albatros-1" },
        trusted: { senders: ["dana"] },
        inject: INJECT,
        logs: "public",
      }),
    );
    consul.set(
      `albatros/${Buffer.from("https://git.example.test/acme/gadgets.git").toString("base64url")}`,
      JSON.stringify({ hook: { token: GADGETS_TOKEN }, trusted: { senders: ["dana"] }, inject: "export GADGET=1" }),
    );
    // A migrated repository: petrel's layout, its inject kept beside the parsed secrets, on a petrel builder.
    consul.set(
      "petrel/repos/git.example.test/acme/tools",
      JSON.stringify({
        hook: { token: "tools-token-0a1b" },
        trusted: { senders: ["dana"] },
        flavors: { default: { builder: "builder-petrel" } },
      }),
    );
    consul.set("petrel/secrets/git.example.test/acme/tools", JSON.stringify({ TOOLS_TOKEN: "tools-secret-4d", inject: "source /etc/ci" }));
    const env = {
      NOMAD_ADDR: nomad.url,
      CONSUL_HTTP_ADDR: consul.url,
      PETREL_LISTEN: "127.0.0.1:0",
      PETREL_URL: "https://ci.example.test",
      PETREL_ADMIN_TOKEN: ADMIN,
    };
    petrel = await startPetrel(readConfig(env), logs.log, env);
  });

  afterAll(async () => {
    await petrel.stop();
    await Promise.all([consul.close(), nomad.close(), gitea.close()]);
    const text = logs.text();
    for (const secret of [WIDGETS_TOKEN, GADGETS_TOKEN, "albatros-deploy-3b7f", "albatros-npm-9c2d", "tools-secret-4d"]) {
      expect(text).not.toContain(secret);
    }
  });

  it("builds a trusted push from `curl -d @payload.json` with ?token&flavor: four meta keys and the inject text as payload", async () => {
    const commit = "a1".repeat(20);
    const res = await curlHook(push(commit), `token=${WIDGETS_TOKEN}&flavor=nix`);
    expect(res.status).toBe(201);
    const { build } = (await res.json()) as { build: string };
    expect(build).toMatch(/^builder\/dispatch-/);
    expect(nomad.job(build)?.Meta).toEqual({
      REPO_URL: "https://git.example.test/acme/widgets.git",
      COMMIT: commit,
      BRANCH: "main",
      FLAVOR: "nix",
    });
    expect(payloadOf(build)).toBe(INJECT);
    await eventually(() => gitea.statuses.some((s) => s.sha === commit));
    expect(gitea.statuses.find((s) => s.sha === commit)).toMatchObject({ status: "pending", context: "petrel/nix" });
  });

  it("builds an untrusted sender's push without any payload", async () => {
    const commit = "b2".repeat(20);
    const res = await curlHook(push(commit, { sender: "mallory" }), `token=${WIDGETS_TOKEN}`);
    expect(res.status).toBe(201);
    const { build } = (await res.json()) as { build: string };
    expect(nomad.job(build)?.Meta?.FLAVOR).toBe("default");
    expect(payloadOf(build)).toBeNull();
  });

  it("takes the token as a bearer token and a JSON body too", async () => {
    const commit = "c3".repeat(20);
    const res = await fetch(`${petrel.url}/hook`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-gitea-event": "push", authorization: `Bearer ${WIDGETS_TOKEN}` },
      body: push(commit),
    });
    expect(res.status).toBe(201);
  });

  it.each([
    ["no token", ""],
    ["a wrong token", "token=widgets-albatros-token-5d2d"],
    ["another entry's token", `token=${GADGETS_TOKEN}`],
  ])("answers 401 unauthorized to %s and dispatches nothing", async (_what, query) => {
    const commit = "d4".repeat(20);
    const res = await curlHook(push(commit), query);
    expect(res.status).toBe(401);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe("unauthorized");
    expect(dispatched(commit)).toHaveLength(0);
  });

  it("never lets one entry's token build another repository (attack: a forged payload naming B, sent with A's token)", async () => {
    const commit = "e5".repeat(20);
    // The attacker holds widgets' token and forges a delivery naming gadgets, which has secrets to steal.
    const forged = await curlHook(push(commit, { repo: "gadgets" }), `token=${WIDGETS_TOKEN}`);
    expect(forged.status).toBe(401);
    // A payload whose identity fields disagree (html_url of widgets, clone URL of gadgets) is refused too.
    const mixed = push(commit).replace("https://git.example.test/acme/widgets.git", "https://git.example.test/acme/gadgets.git");
    const mismatch = await curlHook(mixed, `token=${WIDGETS_TOKEN}`);
    expect(mismatch.status).toBe(400);
    expect(((await mismatch.json()) as { error: { code: string } }).error.code).toBe("repository_mismatch");
    // A repository with no entry at all is not built with anyone's token.
    const foreign = await curlHook(push(commit, { repo: "payroll" }), `token=${WIDGETS_TOKEN}`);
    expect(foreign.status).toBe(404);
    expect(nomad.children("builder").filter((id) => nomad.job(id)?.Meta?.COMMIT === commit)).toHaveLength(0);
    // The rightful token still builds gadgets, with gadgets' own inject.
    const own = await curlHook(push(commit, { repo: "gadgets" }), `token=${GADGETS_TOKEN}`);
    expect(own.status).toBe(201);
    const { build } = (await own.json()) as { build: string };
    expect(payloadOf(build)).toBe("export GADGET=1");
  });

  it("gives a petrel builder the JSON payload, with the inject kept beside the secrets", async () => {
    const commit = "f6".repeat(20);
    const res = await curlHook(push(commit, { repo: "tools" }), "token=tools-token-0a1b");
    expect(res.status).toBe(201);
    const { build } = (await res.json()) as { build: string };
    expect(build).toMatch(/^builder-petrel\//);
    expect(JSON.parse(String(payloadOf(build)))).toEqual({ secrets: { TOOLS_TOKEN: "tools-secret-4d" }, inject: "source /etc/ci" });
    expect(nomad.job(build)?.Meta).toMatchObject({ TRUSTED: "true", EVENT: "push" });
  });

  it("follows an Albatros build's log with GET /build?job=&log= until the build ends", async () => {
    const commit = "0a".repeat(20);
    const res = await curlHook(push(commit), `token=${WIDGETS_TOKEN}`);
    const { build } = (await res.json()) as { build: string };
    nomad.placeAlloc(build, { node: "worker-2" });
    nomad.startTask(build);
    nomad.writeLog(build, "stderr", "+ go build\n");
    const follow = await fetch(`${petrel.url}/build?job=${encodeURIComponent(build)}&log=stderr`);
    expect(follow.status).toBe(200);
    expect(follow.headers.get("content-type")).toMatch(/^text\/plain/);
    const reader = (follow.body as ReadableStream<Uint8Array>).getReader();
    const decoder = new TextDecoder();
    let text = "";
    while (!text.includes("+ go build")) text += decoder.decode((await reader.read()).value);
    nomad.writeLog(build, "stderr", "ok\n");
    nomad.finishTask(build, 0);
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += decoder.decode(value);
    }
    expect(text).toBe("+ go build\nok\n");
  });

  it("asks for the token to read a build of an Albatros entry that does not say its logs are public", async () => {
    const commit = "1b".repeat(20);
    const res = await curlHook(push(commit, { repo: "gadgets" }), `token=${GADGETS_TOKEN}`);
    const { build } = (await res.json()) as { build: string };
    const url = `${petrel.url}/build?job=${encodeURIComponent(build)}&log=stdout`;
    expect((await fetch(url)).status).toBe(401);
    nomad.placeAlloc(build);
    nomad.finishTask(build, 0);
    expect((await fetch(url, { headers: { authorization: `Bearer ${ADMIN}` } })).status).toBe(200);
  });
});
