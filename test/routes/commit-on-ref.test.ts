import { existsSync, rmSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { LocalPetrel } from "../cli/harness.js";
import { ADMIN_TOKEN, startLocalPetrel } from "../cli/harness.js";

let petrel: LocalPetrel;

beforeAll(async () => {
  petrel = await startLocalPetrel();
});

afterAll(async () => {
  await petrel?.close();
});

async function trigger(body: Record<string, unknown>): Promise<Response> {
  return fetch(`${petrel.url}/builds`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${ADMIN_TOKEN}` },
    body: JSON.stringify(body),
  });
}

async function buildCount(): Promise<number> {
  const res = await fetch(`${petrel.url}/builds?limit=500`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
  return ((await res.json()) as { builds: unknown[] }).builds.length;
}

describe("POST /builds only builds a commit its ref reaches", () => {
  it("answers 400 commit_not_on_ref for a fork's pull request commit passed off as main, and dispatches nothing", async () => {
    const before = await buildCount();
    const res = await trigger({ repo: "acme/widgets", ref: "main", commit: petrel.repo.pull });
    expect(res.status).toBe(400);
    const body = (await res.json()) as { error: { code: string; message: string } };
    expect(body.error.code).toBe("commit_not_on_ref");
    expect(body.error.message).toContain("refs/heads/main");
    expect(await buildCount()).toBe(before);
  });

  it("refuses the abbreviated id of that commit as well", async () => {
    const res = await trigger({ repo: "acme/widgets", ref: "refs/heads/main", commit: petrel.repo.pull.slice(0, 10) });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe("commit_not_on_ref");
  });

  it("refuses a commit that is on another branch only", async () => {
    const res = await trigger({ repo: "acme/widgets", ref: "main", commit: petrel.repo.fail3 });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe("commit_not_on_ref");
  });

  it("builds the same commit from its own pull request ref, untrusted", async () => {
    const res = await trigger({ repo: "acme/widgets", ref: "refs/pull/1/head", commit: petrel.repo.pull });
    expect(res.status).toBe(201);
    const { build } = (await res.json()) as { build: string };
    const shown = await (
      await fetch(`${petrel.url}/builds/${encodeURIComponent(build)}`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })
    ).json();
    expect(shown).toMatchObject({ commit: petrel.repo.pull, ref: "refs/pull/1/head", trusted: false });
  });

  it("builds an ancestor of the branch head, given abbreviated, as its full id", async () => {
    // fail-3 is one commit past main, so main's commit is on fail-3.
    const res = await trigger({ repo: "acme/widgets", ref: "fail-3", commit: petrel.repo.main.slice(0, 12) });
    expect(res.status).toBe(201);
    const { build } = (await res.json()) as { build: string };
    const shown = await (
      await fetch(`${petrel.url}/builds/${encodeURIComponent(build)}`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })
    ).json();
    expect(shown).toMatchObject({ commit: petrel.repo.main });
  });

  it("answers 400 for a ref that does not exist, and for a hostile ref, without building", async () => {
    const before = await buildCount();
    const missing = await trigger({ repo: "acme/widgets", ref: "nope", commit: petrel.repo.main });
    expect(missing.status).toBe(400);
    expect(((await missing.json()) as { error: { message: string } }).error.message).toMatch(/cannot fetch refs\/heads\/nope/);
    const pwned = "/tmp/petrel-pwned";
    rmSync(pwned, { force: true });
    for (const ref of [`--upload-pack=touch ${pwned}`, "main\nx", "refs/heads/../../x"]) {
      const res = await trigger({ repo: "acme/widgets", ref, commit: petrel.repo.main });
      expect(res.status).toBe(400);
      expect(((await res.json()) as { error: { code: string } }).error.code).toBe("bad_request");
    }
    expect(await buildCount()).toBe(before);
    // The option-shaped ref never reached git as an option.
    expect(existsSync(pwned)).toBe(false);
  });
});
