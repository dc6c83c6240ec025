import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { EXIT } from "../../src/cli/ops.js";
import { parseDeliveryFile, replayCommand } from "../../src/cli/replay.js";
import { fixtureBytes, fixtureJson } from "../gitea/fixtures.js";
import type { Cluster } from "../helpers/cluster.js";
import { HOOK_SECRET, REPO_KEY, startCluster } from "../helpers/cluster.js";
import { captureIo, listen, until } from "./harness.js";

let cluster: Cluster;
let server: { url: string; close(): Promise<void> };
let dir: string;
let env: Record<string, string>;

beforeEach(async () => {
  cluster = await startCluster();
  server = await listen(cluster.app);
  dir = mkdtempSync(join(tmpdir(), "petrel-replay-"));
  env = { NOMAD_ADDR: cluster.nomad.url, CONSUL_HTTP_ADDR: cluster.consul.url, PETREL_URL: server.url };
});
afterEach(async () => {
  await server.close();
  await cluster.close();
});

function file(name: string, content: Buffer | string): string {
  const path = join(dir, name);
  writeFileSync(path, content);
  return path;
}

describe("petrel replay", () => {
  it("signs a saved push payload with the repository's secret; petrel answers 201 and Nomad has the child", async () => {
    const path = file("push.json", fixtureBytes("push.json"));
    const c = captureIo();
    expect(await replayCommand([path], env, c.io)).toBe(0);
    const [status, body] = c.stdout().split("\n");
    expect(status).toBe("201");
    const answer = JSON.parse(body ?? "") as { build: string; status: string };
    expect(cluster.nomad.children("builder")).toEqual([answer.build]);
    expect(cluster.nomad.job(answer.build)?.Meta).toMatchObject({
      EVENT: "push",
      BRANCH: "main",
      COMMIT: "4c1d7e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d",
    });
    expect(c.stderr()).toContain(`consul ${cluster.consul.url}: GET petrel/repos/${REPO_KEY}`);
    expect(c.stderr()).toMatch(
      /replaying push \(push\) for git\.example\.test\/acme\/widgets as delivery [0-9a-f-]{36}, signed with its hook secret/,
    );
    expect(c.stderr()).toContain(`POST ${server.url}/hook`);
    expect(c.stderr()).not.toContain(HOOK_SECRET);

    // Like a Gitea redelivery: a new delivery id, the same build.
    const again = captureIo();
    expect(await replayCommand([path, "--json", "-q"], env, again.io)).toBe(0);
    expect(JSON.parse(again.stdout())).toEqual({ status: 200, body: { ...answer } });
    expect(cluster.nomad.children("builder")).toHaveLength(1);
  });

  it("replays {headers, body} with the saved event names and fresh signatures", async () => {
    const saved = {
      headers: {
        "X-Gitea-Event": "pull_request",
        "X-Gitea-Event-Type": "pull_request_sync",
        "X-Gitea-Delivery": "a8e2c4f6-1b3d-4e5f-8a9b-0c1d2e3f4a5b",
        "X-Gitea-Signature": "0".repeat(64),
      },
      body: fixtureJson("pull_request.synchronized.json"),
    };
    const c = captureIo();
    expect(await replayCommand([file("pr.json", JSON.stringify(saved)), "--flavor", "default"], env, c.io)).toBe(0);
    expect(c.stdout().startsWith("201\n")).toBe(true);
    const [child] = cluster.nomad.children("builder");
    expect(cluster.nomad.job(child ?? "")?.Meta).toMatchObject({ EVENT: "pull_request", PR: "18" });
    expect(c.stderr()).toContain("replaying pull_request (pull_request_sync)");
    expect(c.stderr()).toContain(`POST ${server.url}/hook?flavor=default`);
  });

  it("sends ?token= for an entry with a token and never prints the token", async () => {
    const token = "shared-hook-token-4b7e1d9a";
    cluster.consul.set(`petrel/repos/${REPO_KEY}`, JSON.stringify({ hook: { token }, trusted: { senders: ["dana"] } }));
    await until(async () => ((await cluster.registry.get(REPO_KEY))?.config.hook.secret === undefined ? true : undefined));
    const c = captureIo();
    expect(await replayCommand([file("push.json", fixtureBytes("push.json"))], env, c.io)).toBe(0);
    expect(c.stdout().startsWith("201\n")).toBe(true);
    expect(c.stderr()).toContain(`POST ${server.url}/hook?token=%E2%80%A6`);
    expect(c.stderr()).not.toContain(token);
    expect(c.stderr()).not.toContain("signed with its hook secret");
  });

  it("exits 6 and shows petrel's answer when the signature does not match petrel's secret", async () => {
    // The CLI reads a YAML file (single-machine mode) whose secret differs from the one petrel checks.
    const yaml = file("petrel.yaml", `repos:\n  ${REPO_KEY}:\n    hook: { secret: "a-different-secret-value" }\n`);
    const c = captureIo();
    expect(await replayCommand([file("push.json", fixtureBytes("push.json"))], { PETREL_CONFIG: yaml, PETREL_URL: server.url }, c.io)).toBe(
      EXIT.unauthorized,
    );
    expect(c.stdout()).toMatch(/^401\n\{"error":\{"code":"unauthorized","message":"webhook authentication failed/);
    expect(c.stderr()).toContain(`petrel replay: petrel at ${server.url} answered 401 to POST /hook`);
    expect(cluster.nomad.children("builder")).toHaveLength(0);
  });

  it("exits 4 without sending anything when the repository is not registered", async () => {
    const payload = fixtureJson("push.json") as { repository: { html_url: string } };
    payload.repository.html_url = "https://git.example.test/acme/unknown";
    const c = captureIo();
    expect(await replayCommand([file("push.json", JSON.stringify(payload))], env, c.io)).toBe(EXIT.notFound);
    expect(c.stderr()).toContain("git.example.test/acme/unknown is not registered in Consul at");
    expect(c.stderr()).not.toContain("POST");
  });

  it("exits 5 naming the address when petrel is not reachable", async () => {
    const c = captureIo();
    expect(await replayCommand([file("push.json", fixtureBytes("push.json"))], { ...env, PETREL_URL: "http://127.0.0.1:1" }, c.io)).toBe(
      EXIT.unreachable,
    );
    expect(c.stderr()).toMatch(/cannot reach petrel at http:\/\/127\.0\.0\.1:1 \(POST \/hook\)/);
  });
});

describe("parseDeliveryFile", () => {
  const bytes = (v: unknown) => Buffer.from(JSON.stringify(v));

  it("infers the event from the payload", () => {
    expect(parseDeliveryFile("f", bytes({ ref: "refs/heads/main", after: "abc" }), undefined)).toMatchObject({
      event: "push",
      eventType: "push",
    });
    expect(parseDeliveryFile("f", bytes({ action: "opened", pull_request: {} }), undefined)).toMatchObject({
      event: "pull_request",
      eventType: "pull_request",
    });
    expect(parseDeliveryFile("f", bytes({ action: "synchronized", pull_request: {} }), undefined)).toMatchObject({
      eventType: "pull_request_sync",
    });
    expect(parseDeliveryFile("f", bytes({ action: "label_updated", pull_request: {} }), undefined)).toMatchObject({
      eventType: "pull_request_label",
    });
    expect(parseDeliveryFile("f", bytes({ ref: "main", ref_type: "branch" }), "delete")).toMatchObject({
      event: "delete",
      eventType: "delete",
    });
    expect(() => parseDeliveryFile("f", bytes({ ref: "main" }), undefined)).toThrow(/pass --event/);
  });

  it("sends a raw payload byte for byte and a saved string body as it was", () => {
    const raw = Buffer.from('{"ref":"refs/heads/main",  "after":"abc"}\n');
    expect(parseDeliveryFile("f", raw, undefined).body.equals(raw)).toBe(true);
    const body = '{\n  "ref": "refs/heads/x",\n  "after": "abc"\n}';
    expect(parseDeliveryFile("f", bytes({ headers: { "x-gitea-event": "push" }, body }), undefined).body.toString()).toBe(body);
  });
});
