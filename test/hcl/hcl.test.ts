import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { parse } from "@cdktf/hcl2json";
import { describe, expect, it } from "vitest";
import { OPTIONAL_META, REQUIRED_META } from "../../src/builds/dispatch.js";
import { ROOT } from "../executor/helpers.js";

type Block = Record<string, unknown>;
const HCL = join(ROOT, "hcl");
const files = readdirSync(HCL).filter((f) => f.endsWith(".nomad.hcl")).sort();

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
  it("holds the two builder jobs and the petrel service job", () => {
    expect(files).toEqual(["builder-raw.nomad.hcl", "builder.nomad.hcl", "petrel.nomad.hcl"]);
  });

  it.each(files)("%s parses as HCL", async (file) => {
    const doc = await load(file);
    expect(Object.keys(doc)).toContain("job");
  });

  describe.each(["builder.nomad.hcl", "builder-raw.nomad.hcl"])("%s follows the builder contract (SPEC §5)", (file) => {
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
      expect(config.command).toBe("petrel");
      expect(config.args).toEqual(["executor"]);
      expect(one(task.env, "env").PETREL_CACHE_DIR).toBe("/var/cache/petrel");
      expect(task.kill_signal).toBe("SIGTERM");
      // Enough time after SIGTERM for the executor's own grace period (10 s) plus cleanup.
      expect(Number.parseInt(String(task.kill_timeout), 10)).toBeGreaterThan(10);
    });
  });

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
});
