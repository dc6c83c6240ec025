import { spawn } from "node:child_process";
import { chmodSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { parse } from "@cdktf/hcl2json";
import { describe, expect, it } from "vitest";
import { OPTIONAL_META, REQUIRED_META } from "../../src/contract/dispatch.js";
import { findByEnv } from "../../src/local/isolate.js";
import { ROOT } from "../executor/helpers.js";

type Block = Record<string, unknown>;
const HCL = join(ROOT, "hcl");
const files = readdirSync(HCL)
  .filter((f) => f.endsWith(".nomad.hcl"))
  .sort();

async function load(file: string): Promise<Block> {
  return (await parse(file, readFileSync(join(HCL, file), "utf8"))) as Block;
}

/** hcl2json turns every block into an array (labelled blocks into a map of arrays); this takes the one block. */
function one(value: unknown, what: string): Block {
  expect(Array.isArray(value), `${what} is a block`).toBe(true);
  const list = value as Block[];
  expect(list, `${what} appears once`).toHaveLength(1);
  return list[0] as Block;
}

function labelled(parent: Block, kind: string, label: string): Block {
  const map = parent[kind] as Record<string, unknown> | undefined;
  expect(map, `${kind} blocks`).toBeDefined();
  expect(Object.keys(map as object), `${kind} labels`).toEqual([label]);
  return one((map as Record<string, unknown>)[label], `${kind} "${label}"`);
}

describe("hcl/", () => {
  it("holds the three builder jobs and the petrel service job", () => {
    expect(files).toEqual(["builder-exec.nomad.hcl", "builder-raw.nomad.hcl", "builder.nomad.hcl", "petrel.nomad.hcl"]);
  });

  it.each(files)("%s parses as HCL", async (file) => {
    const doc = await load(file);
    expect(Object.keys(doc)).toContain("job");
  });

  describe.each(["builder.nomad.hcl", "builder-exec.nomad.hcl", "builder-raw.nomad.hcl"])(
    "%s follows petrel's builder contract",
    (file) => {
      it("is a parameterized batch job with the required and optional meta keys and an optional payload", async () => {
        const job = labelled(await load(file), "job", "builder");
        expect(job.type).toBe("batch");
        const p = one(job.parameterized, "parameterized");
        expect(p.meta_required).toEqual([...REQUIRED_META]);
        expect(p.meta_optional).toEqual([...OPTIONAL_META]);
        expect(p.payload).toBe("optional");
      });

      it("runs `petrel executor` as task executor in group runner, exactly once, with the payload file", async () => {
        const job = labelled(await load(file), "job", "builder");
        const group = labelled(job, "group", "runner");
        expect(one(group.restart, "restart").attempts).toBe(0);
        expect(one(group.restart, "restart").mode).toBe("fail");
        expect(one(group.reschedule, "reschedule").attempts).toBe(0);
        expect(one(group.reschedule, "reschedule").unlimited).toBe(false);
        const task = labelled(group, "task", "executor");
        expect(one(task.dispatch_payload, "dispatch_payload").file).toBe("payload.json");
        const config = one(task.config, "config");
        // The raw_exec builder wraps it (own PID namespace); its argv still ends in `petrel executor`.
        expect([config.command, ...(config.args as string[])].slice(-2)).toEqual(["petrel", "executor"]);
        expect(one(task.env, "env").PETREL_CACHE_DIR).toBe("/var/cache/petrel");
        expect(task.kill_signal).toBe("SIGTERM");
        // Enough time after SIGTERM for the executor's own grace period (10 s) plus cleanup.
        expect(Number.parseInt(String(task.kill_timeout), 10)).toBeGreaterThan(10);
      });
    },
  );

  it("runs the Docker builder privileged with the cache host volume at PETREL_CACHE_DIR", async () => {
    const job = labelled(await load("builder.nomad.hcl"), "job", "builder");
    const group = labelled(job, "group", "runner");
    const volume = labelled(group, "volume", "petrel-cache");
    expect(volume).toMatchObject({ type: "host", source: "petrel-cache" });
    const task = labelled(group, "task", "executor");
    expect(task.driver).toBe("docker");
    const config = one(task.config, "config");
    expect(config.privileged).toBe(true);
    expect(config.init).toBe(true);
    expect(config.image).toBe("${var.image}");
    const mount = one(task.volume_mount, "volume_mount");
    expect(mount).toMatchObject({ volume: "petrel-cache", destination: one(task.env, "env").PETREL_CACHE_DIR });
  });

  it("runs the exec builder isolated: exec driver, own PID namespace, root with sys_admin, cache volume, no copy fallback", async () => {
    const job = labelled(await load("builder-exec.nomad.hcl"), "job", "builder");
    const group = labelled(job, "group", "runner");
    expect(labelled(group, "volume", "petrel-cache")).toMatchObject({ type: "host", source: "petrel-cache" });
    const task = labelled(group, "task", "executor");
    expect(task.driver).toBe("exec");
    expect(task.user).toBe("root");
    const config = one(task.config, "config");
    expect(config).toMatchObject({ command: "petrel", args: ["executor"], pid_mode: "private", ipc_mode: "private" });
    expect(config.cap_add).toEqual(["sys_admin"]);
    const env = one(task.env, "env");
    expect(env.PETREL_ISOLATION).toBe("mount");
    expect(one(task.volume_mount, "volume_mount")).toMatchObject({ volume: "petrel-cache", destination: env.PETREL_CACHE_DIR });
    const p = one(job.parameterized, "parameterized");
    expect(p).toMatchObject({ payload: "optional", meta_required: [...REQUIRED_META], meta_optional: [...OPTIONAL_META] });
  });

  it("says in the raw_exec file and in hcl/README.md that raw_exec is for single-tenant, trusted setups only", () => {
    for (const text of [readFileSync(join(HCL, "builder-raw.nomad.hcl"), "utf8"), readFileSync(join(HCL, "README.md"), "utf8")]) {
      expect(text).toMatch(/raw_exec is for single-tenant, trusted setups only/);
    }
  });

  it.skipIf(process.getuid?.() !== 0)(
    "wraps the raw_exec executor in its own PID namespace: SIGTERM reaches it, and nothing it started outlives it (as root)",
    async () => {
      const task = labelled(
        labelled(labelled(await load("builder-raw.nomad.hcl"), "job", "builder"), "group", "runner"),
        "task",
        "executor",
      );
      const config = one(task.config, "config");
      const args = config.args as string[];
      expect(args[1]).toContain("unshare --pid --fork --mount-proc");
      // A stand-in `petrel executor`: sees only its namespace, leaves an escaped session behind, exits 7 on SIGTERM.
      const dir = mkdtempSync(join(tmpdir(), "petrel-raw-"));
      const mark = `raw-${process.pid}-${Date.now()}`;
      writeFileSync(
        join(dir, "petrel"),
        `#!/bin/sh\ntrap 'echo "term as $$" > ${dir}/out; exit 7' TERM\nls /proc | grep -c '^[0-9]' > ${dir}/count\nsetsid sleep 300 &\nwhile :; do sleep 0.05; done\n`,
      );
      chmodSync(join(dir, "petrel"), 0o755);
      const child = spawn(config.command as string, args, {
        env: { PATH: `${dir}:${process.env.PATH}`, MARK: mark },
        stdio: "ignore",
        detached: true,
      });
      const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
      for (let i = 0; i < 100 && (await findByEnv("MARK", mark)).length < 4; i++) await sleep(50);
      expect(Number(readFileSync(join(dir, "count"), "utf8"))).toBeLessThanOrEqual(3);
      child.kill("SIGTERM");
      expect(await exited).toBe(7);
      expect(readFileSync(join(dir, "out"), "utf8")).toBe("term as 1\n");
      expect(await findByEnv("MARK", mark)).toEqual([]);
    },
  );

  it("runs the raw_exec builder without volumes (raw_exec cannot mount them)", async () => {
    const job = labelled(await load("builder-raw.nomad.hcl"), "job", "builder");
    const group = labelled(job, "group", "runner");
    expect(group.volume).toBeUndefined();
    const task = labelled(group, "task", "executor");
    expect(task.driver).toBe("raw_exec");
    expect(task.volume_mount).toBeUndefined();
  });

  it("runs petrel serve as a service with a health check on /health", async () => {
    const job = labelled(await load("petrel.nomad.hcl"), "job", "petrel");
    expect(job.type).toBe("service");
    const group = labelled(job, "group", "petrel");
    const task = labelled(group, "task", "petrel");
    expect(one(task.config, "config").args).toEqual(["serve"]);
    const service = one(group.service, "service");
    expect(one(service.check, "check")).toMatchObject({ type: "http", path: "/health" });
    expect(one(task.env, "env").PETREL_LISTEN).toBe("0.0.0.0:8080");
  });

  it("keeps the archive on a host volume, where PETREL_ARCHIVE_DIR points", async () => {
    const job = labelled(await load("petrel.nomad.hcl"), "job", "petrel");
    const group = labelled(job, "group", "petrel");
    const task = labelled(group, "task", "petrel");
    expect(labelled(group, "volume", "petrel-archive")).toMatchObject({ type: "host", source: "petrel-archive" });
    const mount = one(task.volume_mount, "volume_mount");
    expect(mount.volume).toBe("petrel-archive");
    expect(one(task.env, "env").PETREL_ARCHIVE_DIR).toBe(mount.destination);
  });
});
