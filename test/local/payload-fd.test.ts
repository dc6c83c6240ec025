import { chmodSync, mkdirSync, openSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { planFromNomadEnv } from "../../src/executor/env.js";
import { cleanup, createRepo, pushMeta, runExecutor, script, type TestRepo, tempDir } from "../executor/helpers.js";

// The executor reads single-machine payloads from an inherited pipe (PETREL_PAYLOAD_FD): `petrel executor` runs
// for real with the pipe as descriptor 3, exactly as the local backend spawns it.
describe("the executor's payload over a descriptor (PETREL_PAYLOAD_FD)", () => {
  let dir: string;
  let repo: TestRepo;
  let commit: string;

  beforeAll(() => {
    dir = tempDir("payload-fd");
    repo = createRepo(dir);
    commit = repo.commit(
      script(
        [
          '. "$PETREL_SECRETS"; echo "token=$API_TOKEN"',
          'echo "fd3=$([ -e /proc/self/fd/3 ] && echo open || echo closed) var=${PETREL_PAYLOAD_FD:-unset}"',
        ].join("\n"),
      ),
      { executable: [".petrel"] },
    );
  });

  afterAll(() => cleanup(dir));

  const taskEnv = (): Record<string, string> => ({
    ...Object.fromEntries(Object.entries(pushMeta(repo, commit, { TRUSTED: "true" })).map(([k, v]) => [`NOMAD_META_${k}`, v])),
    NOMAD_JOB_ID: "builder/dispatch-1700000000-aaaaaaaa",
    PETREL_CACHE_DIR: join(dir, "cache"),
  });

  const run = (name: string, payloadPipe: string) => {
    const secretsDir = join(dir, `secrets-${name}`);
    // Copy mode runs the build as nobody: the secrets file must be reachable (docs/executor.md).
    mkdirSync(secretsDir, { mode: 0o711 });
    chmodSync(dir, 0o711);
    return runExecutor({
      meta: pushMeta(repo, commit, { TRUSTED: "true" }),
      cacheDir: join(dir, "cache"),
      taskDir: join(dir, `task-${name}`),
      secretsDir,
      payloadPipe,
      env: { PETREL_ISOLATION: "copy" },
    });
  };

  it("reads the secrets from the pipe, closes it, and keeps the variable from the build", async () => {
    const r = await run("ok", JSON.stringify({ secrets: { API_TOKEN: "s3cret" } }));
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toContain("token=s3cret\nfd3=closed var=unset\n");
  }, 30_000);

  it("refuses a payload that starts like JSON but is not, with a clear error and a setup exit code", async () => {
    // Text that does not start with `{` is an Albatros inject payload (test/executor/inject.test.ts).
    const r = await run("bad", '{"secrets": ');
    expect(r.code).toBe(64);
    expect(r.stderr).toContain("==> error: descriptor 3 starts like JSON but is not JSON");
    expect(r.stdout).not.toContain("token=");
  }, 30_000);

  it("takes the deploy key from the descriptor and closes it", async () => {
    const file = join(dir, "payload.json");
    writeFileSync(file, JSON.stringify({ secrets: {}, deploy_key: "KEY" }));
    const fd = openSync(file, "r");
    const plan = await planFromNomadEnv({ ...taskEnv(), PETREL_PAYLOAD_FD: String(fd) });
    expect(plan.source.kind === "commit" && plan.source.checkout.deployKey).toBe("KEY");
    expect(plan.baseEnv.PETREL_PAYLOAD_FD).toBeUndefined();
    expect(() => openSync(`/proc/self/fd/${fd}`, "r")).toThrow();
  });

  it("refuses a descriptor below 3 (stdin, stdout, stderr)", async () => {
    await expect(planFromNomadEnv({ ...taskEnv(), PETREL_PAYLOAD_FD: "0" })).rejects.toThrow(/PETREL_PAYLOAD_FD=0/);
  });
});
