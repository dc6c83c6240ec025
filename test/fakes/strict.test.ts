import { request } from "undici";
import { describe, expect, it } from "vitest";
import { startConsulFake } from "./consul.js";
import { startGiteaFake } from "./gitea.js";
import { startNomadFake } from "./nomad.js";

// A request a fake does not model (a path, or a query parameter a modelled path does not read) gets a 501 and
// fails the suite when the fake closes.

describe("strict fakes", () => {
  it.each([
    ["nomad", async () => startNomadFake(), "/v1/node/pool"],
    ["consul", async () => startConsulFake(), "/v1/catalog/services"],
    ["gitea", async () => startGiteaFake({ token: "t" }), "/api/v1/user"],
  ] as const)("%s answers 501 to an unmodelled request and close() rejects", async (name, start, path) => {
    const fake = await start();
    const res = await request(`${fake.url}${path}`);
    expect(res.statusCode).toBe(501);
    await res.body.text();
    expect(fake.unexpected).toEqual([`GET ${path}`]);
    await expect(fake.close()).rejects.toThrow(`${name} fake: requests it does not model: GET ${path}`);
  });

  it.each([
    ["nomad", "/v1/jobs?prefix=b&reverse=true", "GET /v1/jobs?reverse", async () => startNomadFake()],
    ["nomad", "/v1/job/builder?stale=true", "GET /v1/job/builder?stale", async () => startNomadFake()],
    ["nomad", "/v1/event/stream?topic=Job&filter=x", "GET /v1/event/stream?filter", async () => startNomadFake()],
    ["consul", "/v1/kv/a?consistent", "GET /v1/kv/a?consistent", async () => startConsulFake()],
    ["consul", "/v1/status/leader?stale", "GET /v1/status/leader?stale", async () => startConsulFake()],
    ["gitea", "/api/v1/version?limit=1", "GET /api/v1/version?limit", async () => startGiteaFake({ token: "t" })],
  ] as const)("%s answers 501 to a parameter it does not model on a modelled route (%s)", async (name, path, recorded, start) => {
    const fake = await start();
    const res = await request(`${fake.url}${path}`);
    expect(res.statusCode).toBe(501);
    await res.body.text();
    expect(fake.unexpected).toEqual([recorded]);
    await expect(fake.close()).rejects.toThrow(`${name} fake: requests it does not model: ${recorded}`);
  });

  it.each([
    ["nomad", "/v1/jobs?prefix=b&meta=true&namespace=default&index=0&wait=1s", async () => startNomadFake()],
    ["nomad", "/v1/job/builder%2Fdispatch-1/allocations?all=false&region=global", async () => startNomadFake()],
    ["consul", "/v1/kv/a?recurse&dc=dc1&index=0", async () => startConsulFake()],
  ] as const)("%s answers a modelled route with modelled parameters (%s)", async (_name, path, start) => {
    const fake = await start();
    const res = await request(`${fake.url}${path}`);
    expect(res.statusCode).not.toBe(501);
    await res.body.text();
    expect(fake.unexpected).toEqual([]);
    await fake.close();
  });

  it("the consul fake refuses a datacenter it is not", async () => {
    const fake = await startConsulFake({ datacenter: "dc1" });
    const res = await request(`${fake.url}/v1/kv/a?dc=dc2`);
    expect(res.statusCode).toBe(500);
    expect(await res.body.text()).toBe("No path to datacenter");
    await fake.close();
  });
});
