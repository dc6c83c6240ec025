import { request } from "undici";
import { describe, expect, it } from "vitest";
import { startConsulFake } from "./consul.js";
import { startGiteaFake } from "./gitea.js";
import { startNomadFake } from "./nomad.js";

// A request a fake does not model gets a 501 and fails the suite when the fake closes.

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
});
