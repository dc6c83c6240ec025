import { mkdirSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { TestRepo } from "./helpers.js";
import { cleanup, createRepo, mountSupport, runExecutor, script, tempDir } from "./helpers.js";

// The real `petrel executor` given an Albatros entry's `inject` (SPEC §12): as the whole payload (what an
// Albatros builder, one that declares no optional meta, receives) and inside petrel's JSON payload.

const support = mountSupport();
if (!support.ok) console.warn(`SKIPPED executor inject tests: this process may not mount overlayfs (${support.reason})`);

// Not plain exports (a variable set without export, a command): the text must run as shell, not be parsed.
const INJECT = "set +x\nexport DEPLOY_TOKEN='inject-secret-6a1f'\nLOCAL_ONLY=seen\nexport FROM_CMD=$(echo computed)\n";
const BUILD = [
  'if [ -z "$PETREL_SECRETS" ]; then echo "no secrets"; exit 0; fi',
  '. "$PETREL_SECRETS"',
  'echo "deploy=[$DEPLOY_TOKEN] local=[$LOCAL_ONLY] cmd=[$FROM_CMD] api=[$API_TOKEN]"',
].join("\n");

describe.skipIf(!support.ok)("petrel executor with an inject payload", () => {
  let dir: string;
  let repo: TestRepo;
  let commit: string;
  let cacheDir: string;

  beforeAll(() => {
    dir = tempDir("inject");
    repo = createRepo(dir);
    cacheDir = join(dir, "cache");
    commit = repo.commit(script(BUILD), { executable: [".petrel"] });
  });
  afterAll(() => cleanup(dir));

  /** The four meta keys an Albatros builder declares, nothing else. */
  const albatrosMeta = () => ({ REPO_URL: repo.url, COMMIT: commit, BRANCH: "main", FLAVOR: "default" });

  it("sources the inject text, the whole payload of an Albatros builder, through $PETREL_SECRETS", async () => {
    const taskDir = join(dir, "task1");
    const secretsDir = join(dir, "secrets1");
    mkdirSync(taskDir, { recursive: true });
    mkdirSync(secretsDir);
    writeFileSync(join(taskDir, "payload.json"), INJECT);
    const r = await runExecutor({ meta: albatrosMeta(), cacheDir, taskDir, secretsDir });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("deploy=[inject-secret-6a1f] local=[seen] cmd=[computed] api=[]");
    expect(r.stderr).toContain("==> secrets: 0 and the entry's inject text in $PETREL_SECRETS");
    expect(r.stderr).not.toContain("inject-secret-6a1f");
    // Gone with the build, like the secrets file.
    expect(readdirSync(secretsDir)).toEqual([]);
  });

  it("gives an Albatros builder's build nothing when no payload came (an untrusted sender)", async () => {
    const r = await runExecutor({ meta: albatrosMeta(), cacheDir, taskDir: join(dir, "task2") });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("no secrets");
  });

  it("runs the inject of petrel's JSON payload after the secrets, and only for a trusted build", async () => {
    const payload = { secrets: { API_TOKEN: "api-secret-2c" }, inject: INJECT };
    const meta = { ...albatrosMeta(), REPO: "acme/widgets", EVENT: "push" };
    const trusted = await runExecutor({ meta: { ...meta, TRUSTED: "true" }, cacheDir, taskDir: join(dir, "task3"), payload });
    expect(trusted.code).toBe(0);
    expect(trusted.stdout).toContain("deploy=[inject-secret-6a1f] local=[seen] cmd=[computed] api=[api-secret-2c]");
    expect(trusted.stderr).toContain("==> secrets: 1 and the entry's inject text in $PETREL_SECRETS");

    const untrusted = await runExecutor({ meta: { ...meta, TRUSTED: "false" }, cacheDir, taskDir: join(dir, "task4"), payload });
    expect(untrusted.code).toBe(0);
    expect(untrusted.stdout).toContain("no secrets");
  });

  it("reads the inject text over the single-machine payload pipe too", async () => {
    const r = await runExecutor({ meta: albatrosMeta(), cacheDir, taskDir: join(dir, "task5"), payloadPipe: INJECT });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("deploy=[inject-secret-6a1f]");
  });
});
