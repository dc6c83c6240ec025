import { spawn } from "node:child_process";
import { describe, expect, it } from "vitest";
import { planFromNomadEnv } from "../../src/executor/env.js";

// The executor reads single-machine payloads from an inherited pipe (PETREL_PAYLOAD_FD): run it for real in a
// child process that gets the pipe as descriptor 3, exactly as the local backend spawns it.
const PROBE = `
const { planFromNomadEnv } = await import(${JSON.stringify(new URL("../../src/executor/env.ts", import.meta.url).pathname)});
const { fstatSync } = await import("node:fs");
try {
  const plan = await planFromNomadEnv(process.env);
  let open = true;
  try { fstatSync(3); } catch { open = false; }
  process.stdout.write(JSON.stringify({ secrets: plan.secrets, deployKey: plan.source.checkout?.deployKey, fdOpen: open, fdVar: plan.baseEnv.PETREL_PAYLOAD_FD ?? null }));
} catch (err) {
  process.stdout.write(JSON.stringify({ error: err.code ?? err.failure, message: err.message }));
}
`;

const ENV = {
  NOMAD_JOB_ID: "builder/dispatch-1-aaaaaaaa",
  NOMAD_META_REPO_URL: "https://git.example.test/acme/widgets.git",
  NOMAD_META_COMMIT: "4c1d7e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d",
  NOMAD_META_BRANCH: "main",
  NOMAD_META_FLAVOR: "default",
  NOMAD_META_TRUSTED: "true",
  PETREL_CACHE_DIR: "/var/cache/petrel",
};

function probe(payload: string | undefined, env: Record<string, string>): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", PROBE], {
      env: { PATH: process.env.PATH, ...ENV, ...env },
      stdio: ["ignore", "pipe", "inherit", "pipe"],
    });
    let out = "";
    child.stdout?.setEncoding("utf8").on("data", (d: string) => (out += d));
    const pipe = child.stdio[3] as NodeJS.WritableStream;
    pipe.on("error", () => undefined);
    pipe.end(payload ?? "");
    child.once("error", reject);
    child.once("close", () => resolve(JSON.parse(out) as Record<string, unknown>));
  });
}

describe("the executor's payload over a descriptor (PETREL_PAYLOAD_FD)", () => {
  it("reads secrets and the deploy key from the pipe, closes it, and keeps the variable from the build", async () => {
    const got = await probe(JSON.stringify({ secrets: { API_TOKEN: "s3cret" }, deploy_key: "KEY" }), { PETREL_PAYLOAD_FD: "3" });
    expect(got).toEqual({ secrets: { API_TOKEN: "s3cret" }, deployKey: "KEY", fdOpen: false, fdVar: null });
  }, 20_000);

  it("refuses a payload that is not JSON with a clear error", async () => {
    const got = await probe("not json", { PETREL_PAYLOAD_FD: "3" });
    expect(got.message).toMatch(/descriptor 3 is not JSON/);
  }, 20_000);

  it("refuses a descriptor below 3 (stdin, stdout, stderr)", async () => {
    await expect(planFromNomadEnv({ ...ENV, PETREL_PAYLOAD_FD: "0" })).rejects.toThrow(/PETREL_PAYLOAD_FD=0/);
  });
});
