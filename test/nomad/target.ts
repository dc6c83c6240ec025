import { randomBytes } from "node:crypto";
import { Agent, request } from "undici";
import { OPTIONAL_META, REQUIRED_META } from "../../src/contract/dispatch.js";
import { type NomadFake, type NomadFakeOptions, startNomadFake } from "../fakes/nomad.js";

/** True when the contract tests run against a real Nomad (`NOMAD_ADDR` set for the test run). */
export const realNomad = Boolean(process.env.NOMAD_ADDR);

/** Where the contract tests send their requests: the fake, or a real Nomad named by `NOMAD_ADDR`. */
export interface NomadTarget {
  addr: string;
  token: string | undefined;
  /** Undefined against a real Nomad: fake-only assertions are skipped then. */
  fake: NomadFake | undefined;
  dispatcher: Agent;
  /** A fresh ID for a job of this run, so runs against a shared Nomad never collide. */
  jobId(name: string): string;
  /** Registers a parameterized batch builder (raw_exec, exits 0) under `id`, bypassing the client under test. */
  registerBuilder(id: string, parameterized?: { Payload?: string; MetaRequired?: string[]; MetaOptional?: string[] }): Promise<void>;
  /** Raw HTTP to the target, for contract assertions below the client. */
  http(
    method: string,
    path: string,
    body?: unknown,
  ): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; text: string }>;
  close(): Promise<void>;
}

/** A parameterized batch job petrel could use as a builder; raw_exec so a `nomad agent -dev` can run it. */
export function builderJob(
  id: string,
  parameterized: { Payload?: string; MetaRequired?: string[]; MetaOptional?: string[] } = {},
): Record<string, unknown> {
  return {
    ID: id,
    Type: "batch",
    Datacenters: ["*"],
    ParameterizedJob: {
      Payload: parameterized.Payload ?? "optional",
      MetaRequired: parameterized.MetaRequired ?? [...REQUIRED_META],
      MetaOptional: parameterized.MetaOptional ?? [...OPTIONAL_META],
    },
    TaskGroups: [
      {
        Name: "runner",
        Count: 1,
        RestartPolicy: { Attempts: 0, Mode: "fail" },
        ReschedulePolicy: { Attempts: 0, Unlimited: false },
        Tasks: [{ Name: "executor", Driver: "raw_exec", Config: { command: "/bin/sh", args: ["-c", "echo built; exit 0"] } }],
      },
    ],
  };
}

/** Starts the fake, or points at the real Nomad; `close` purges every job this run registered there. */
export async function startTarget(fakeOptions: NomadFakeOptions = {}): Promise<NomadTarget> {
  const fake = realNomad ? undefined : await startNomadFake(fakeOptions);
  const addr = (fake?.url ?? process.env.NOMAD_ADDR ?? "").replace(/\/+$/, "");
  const token = realNomad ? process.env.NOMAD_TOKEN || undefined : fakeOptions.aclToken;
  const dispatcher = new Agent();
  const run = realNomad ? `petrel-test-${randomBytes(3).toString("hex")}` : "";

  const http: NomadTarget["http"] = async (method, path, body) => {
    const res = await request(`${addr}${path}`, {
      method: method as "GET",
      dispatcher,
      headers: { ...(token ? { "x-nomad-token": token } : {}), "content-type": "application/json" },
      ...(body === undefined ? {} : { body: typeof body === "string" ? body : JSON.stringify(body) }),
    });
    return { status: res.statusCode, headers: res.headers, text: await res.body.text() };
  };

  return {
    addr,
    token,
    fake,
    dispatcher,
    jobId: (name) => (run ? `${run}-${name}` : name),
    async registerBuilder(id, parameterized) {
      const res = await http("POST", "/v1/jobs", { Job: builderJob(id, parameterized) });
      if (res.status !== 200) throw new Error(`registering ${id} failed: ${res.status} ${res.text}`);
    },
    http,
    async close() {
      if (realNomad && run) {
        const list = await http("GET", `/v1/jobs?prefix=${encodeURIComponent(run)}`);
        const ids = (JSON.parse(list.text) as { ID: string }[]).map((j) => j.ID);
        for (const id of ids) await http("DELETE", `/v1/job/${encodeURIComponent(id)}?purge=true`);
      }
      await fake?.close();
      await dispatcher.close();
    },
  };
}
