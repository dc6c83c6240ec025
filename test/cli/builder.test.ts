import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { builderCommand, checkBuilderJob } from "../../src/cli/builder.js";
import { EXIT } from "../../src/cli/ops.js";
import { startNomadFake } from "../fakes/nomad.js";
import type { NomadTarget } from "../nomad/target.js";
import { realNomad, startTarget } from "../nomad/target.js";
import { captureIo } from "./harness.js";

const RAW_BUILDER = readFileSync(fileURLToPath(new URL("../../hcl/builder-raw.nomad.hcl", import.meta.url)), "utf8");

const SERVICE_JOB = (id: string) => `job "${id}" {
  type        = "service"
  datacenters = ["*"]
  group "web" {
    task "server" {
      driver = "raw_exec"
      config {
        command = "/bin/sleep"
        args    = ["3600"]
      }
    }
  }
}
`;

let target: NomadTarget;
let dir: string;

/** The repository's raw_exec builder, renamed to a job ID of this run (so runs against a real Nomad never collide). */
function builderFile(id: string, edit: (hcl: string) => string = (h) => h): string {
  const path = join(dir, `${id}.nomad.hcl`);
  writeFileSync(path, edit(RAW_BUILDER.replace('job "builder"', `job "${id}"`)));
  return path;
}

function env(): Record<string, string> {
  return { NOMAD_ADDR: target.addr, ...(target.token ? { NOMAD_TOKEN: target.token } : {}) };
}

beforeEach(async () => {
  target = await startTarget();
  dir = mkdtempSync(join(tmpdir(), "petrel-builder-"));
});
afterEach(async () => {
  await target.close();
});

describe("petrel builder register", () => {
  it("parses with Nomad, checks the job, then registers it with its HCL source", async () => {
    const id = target.jobId("builder");
    const file = builderFile(id);
    const c = captureIo();
    expect(await builderCommand(["register", file], env(), c.io)).toBe(0);
    expect(c.stdout()).toContain(`job "${id}" (${file})`);
    expect(c.stdout()).toContain("  ok       a parameterized batch builder");
    expect(c.stdout()).toMatch(new RegExp(`registered "${id}" with Nomad at .* \\(job modify index \\d+\\)`));
    expect(c.stderr()).toContain(`nomad ${target.addr}: POST /v1/jobs/parse (${file})`);
    expect(c.stderr()).toContain(`nomad ${target.addr}: POST /v1/jobs (${id}, with its HCL source)`);

    const job = await target.http("GET", `/v1/job/${encodeURIComponent(id)}`);
    expect(job.status).toBe(200);
    expect(JSON.parse(job.text)).toMatchObject({
      ID: id,
      Type: "batch",
      ParameterizedJob: { MetaRequired: ["REPO_URL", "COMMIT", "BRANCH", "FLAVOR"] },
    });

    const fake = target.fake;
    if (fake === undefined) return;
    const calls = fake.requests
      .filter((r) => r.method === "POST")
      .map((r) => ({ path: r.path, body: JSON.parse(r.body) as Record<string, unknown> }));
    expect(calls.map((r) => r.path)).toEqual(["/v1/jobs/parse", "/v1/jobs"]);
    expect(calls[0]?.body).toEqual({ JobHCL: readFileSync(file, "utf8"), Canonicalize: true });
    expect(calls[1]?.body).toMatchObject({
      Job: { ID: id, Type: "batch" },
      Submission: { Source: readFileSync(file, "utf8"), Format: "hcl2" },
    });
    expect(fake.submission(id)).toEqual({ Source: readFileSync(file, "utf8"), Format: "hcl2" });
  });

  it("only parses and checks with --dry-run", async () => {
    const id = target.jobId("builder-dry");
    const c = captureIo();
    expect(await builderCommand(["register", builderFile(id), "--dry-run", "--json"], env(), c.io)).toBe(0);
    expect(JSON.parse(c.stdout())).toMatchObject({ job: id, problems: [], registered: null, dry_run: true });
    expect((await target.http("GET", `/v1/job/${encodeURIComponent(id)}`)).status).toBe(404);
    if (target.fake) expect(target.fake.requests.filter((r) => r.method === "POST").map((r) => r.path)).toEqual(["/v1/jobs/parse"]);
  });

  it("refuses a job that is not a parameterized batch job and registers nothing", async () => {
    const id = target.jobId("web");
    const file = join(dir, "web.nomad.hcl");
    writeFileSync(file, SERVICE_JOB(id));
    const c = captureIo();
    expect(await builderCommand(["register", file], env(), c.io)).toBe(EXIT.refused);
    expect(c.stdout()).toContain('problem  type is "service"; a builder is a batch job');
    expect(c.stdout()).toContain("problem  it has no parameterized block");
    expect(c.stdout()).toContain('problem  no task group "runner" (found "web")');
    expect(c.stderr()).toContain(`petrel builder register: ${file} is not a petrel builder (3 problems); nothing registered`);
    expect((await target.http("GET", `/v1/job/${encodeURIComponent(id)}`)).status).toBe(404);
    if (target.fake) expect(target.fake.requests.some((r) => r.method === "POST" && r.path === "/v1/jobs")).toBe(false);
  });

  it("names missing meta keys and a wrongly named task", async () => {
    const id = target.jobId("builder-bad");
    const file = builderFile(id, (h) =>
      h
        .replace('meta_required = ["REPO_URL", "COMMIT", "BRANCH", "FLAVOR"]', 'meta_required = ["REPO_URL", "COMMIT"]')
        .replace('task "executor"', 'task "build"'),
    );
    const c = captureIo();
    expect(await builderCommand(["register", file, "-q"], env(), c.io)).toBe(EXIT.refused);
    expect(c.stdout()).toContain("meta_required lacks BRANCH, FLAVOR; it must include REPO_URL, COMMIT, BRANCH, FLAVOR");
    expect(c.stdout()).toContain('group "runner" has no task "executor" (found "build")');
  });

  it("passes Nomad's parse error on and exits 2", async () => {
    const file = join(dir, "broken.nomad.hcl");
    writeFileSync(file, 'job "x" {\n  type = \n');
    const c = captureIo();
    expect(await builderCommand(["register", file], env(), c.io)).toBe(EXIT.refused);
    expect(c.stderr()).toMatch(
      new RegExp(`petrel builder register: Nomad at ${target.addr}: nomad parse job answered 400: Failed to parse job`),
    );
  });

  it("refuses to run without NOMAD_ADDR and says why", async () => {
    const c = captureIo();
    expect(await builderCommand(["register", builderFile("builder")], {}, c.io)).toBe(EXIT.refused);
    expect(c.stderr()).toContain("builder register talks to Nomad: set NOMAD_ADDR");
  });
});

describe.skipIf(realNomad)("petrel builder register (fake-only)", () => {
  it("exits 6 when Nomad refuses the token", async () => {
    const fake = await startNomadFake({ aclToken: "nomad-secret-token" });
    try {
      const c = captureIo();
      expect(await builderCommand(["register", builderFile("builder")], { NOMAD_ADDR: fake.url, NOMAD_TOKEN: "wrong" }, c.io)).toBe(
        EXIT.unauthorized,
      );
      expect(c.stderr()).toContain("answered 403");
      expect(c.stderr()).not.toContain("wrong");
    } finally {
      await fake.close();
    }
  });
});

describe("checkBuilderJob", () => {
  it("warns about restarts, reschedules, a missing dispatch_payload and undeclared optional meta", () => {
    const check = checkBuilderJob({
      ID: "b",
      Type: "batch",
      ParameterizedJob: { Payload: "optional", MetaRequired: ["REPO_URL", "COMMIT", "BRANCH", "FLAVOR"], MetaOptional: ["REPO"] },
      TaskGroups: [{ Name: "runner", RestartPolicy: { Attempts: 3 }, ReschedulePolicy: { Attempts: 1 }, Tasks: [{ Name: "executor" }] }],
    });
    expect(check.problems).toEqual([]);
    expect(check.warnings).toEqual([
      "meta_optional lacks EVENT, PR, TAG, TRUSTED, PRIVATE, CACHES: petrel will not send them",
      'task "executor" has no dispatch_payload { file = "payload.json" }: secrets sent with trusted builds never reach it',
      "restart attempts = 3: a failed build would run again; set restart { attempts = 0 }",
      "reschedule attempts = 1: a lost build would run again elsewhere; set reschedule { attempts = 0, unlimited = false }",
    ]);
  });

  it("refuses required meta petrel never sends", () => {
    const check = checkBuilderJob({
      Type: "batch",
      ParameterizedJob: { MetaRequired: ["REPO_URL", "COMMIT", "BRANCH", "FLAVOR", "IMAGE"], MetaOptional: [] },
      TaskGroups: [{ Name: "runner", Tasks: [{ Name: "executor", DispatchPayload: { File: "payload.json" } }] }],
    });
    expect(check.problems).toEqual(["meta_required also demands IMAGE, which petrel never sends: every dispatch would be refused"]);
  });
});
