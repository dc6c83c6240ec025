import { randomBytes, randomUUID } from "node:crypto";
import { appendFile, mkdir, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { OPTIONAL_META } from "../../src/contract/dispatch.js";
import type { NomadFake } from "../fakes/nomad.js";
import { builderJob, type NomadTarget } from "./target.js";

/** What a scripted build does from start to end. */
export interface LifecycleScript {
  stdout?: string;
  stderr?: string;
  exitCode: number;
}

/**
 * The lifecycle steps the Nomad suites drive, the same against the fake and a real agent. Every step resolves
 * once its effect is visible through the HTTP API, so a test reads the state it caused, never a guess.
 */
export interface LifecycleDriver {
  readonly real: boolean;
  /** Only against the fake: steps a real agent cannot take on demand (lose a node, fail a placement). */
  readonly fake: NomadFake | undefined;
  /** Registers a builder whose task does what the driver tells it; its children are scripted. */
  registerBuilder(id: string): Promise<void>;
  /** Dispatches a child of `builder`; returns the child's job ID. */
  dispatch(builder: string, meta: Record<string, string>): Promise<string>;
  /** The allocation is placed (on `node`, against the fake); returns its ID. */
  place(id: string, opts?: { node?: string }): Promise<string>;
  /** The task is running. */
  start(id: string): Promise<void>;
  /** The task writes `text` to its stdout or stderr. */
  writeLog(id: string, type: "stdout" | "stderr", text: string): Promise<void>;
  /** The task exits with `exitCode`; resolves once the allocation is terminal. */
  finish(id: string, exitCode: number): Promise<void>;
  /** place, start, write, finish. */
  run(id: string, script: LifecycleScript): Promise<void>;
}

/** The meta key naming the control file a real task reads its steps from. */
export const CONTROL_META = "PETREL_TEST_CTL";

// A tiny interpreter: it reads line N of the control file once it exists and acts on it, so each step the
// test takes happens in the real task when the test takes it. Bytes travel base64-encoded so any text fits.
const INTERPRETER = [
  'ctl="$NOMAD_META_PETREL_TEST_CTL"; n=1',
  "while :; do",
  // No `${` anywhere: Nomad reads it in a task's config as an interpolation (`${n}` fails validation).
  '  line=$(sed -n "$n"p "$ctl" 2>/dev/null)',
  '  if [ -z "$line" ]; then sleep 0.05; continue; fi',
  "  n=$((n+1)); set -- $line",
  '  case "$1" in',
  '    out) printf %s "$2" | base64 -d ;;',
  '    err) printf %s "$2" | base64 -d >&2 ;;',
  '    exit) exit "$2" ;;',
  "  esac",
  "done",
].join("\n");

/** A builder whose raw_exec task runs the interpreter; the fake stores it like any other job. */
export function scriptedBuilderJob(id: string): Record<string, unknown> {
  const job = builderJob(id, { MetaOptional: [...OPTIONAL_META, CONTROL_META] });
  const groups = job.TaskGroups as { Tasks: Record<string, unknown>[] }[];
  for (const group of groups) {
    group.Tasks = group.Tasks.map((task) => ({ ...task, Config: { command: "/bin/sh", args: ["-c", INTERPRETER] } }));
  }
  return job;
}

export function createLifecycleDriver(t: NomadTarget): LifecycleDriver {
  return t.fake ? fakeDriver(t, t.fake) : realDriver(t);
}

async function dispatchOver(t: NomadTarget, builder: string, meta: Record<string, string>): Promise<string> {
  const res = await t.http("POST", `/v1/job/${encodeURIComponent(builder)}/dispatch`, {
    Meta: meta,
    IdempotencyToken: randomUUID(),
  });
  if (res.status !== 200) throw new Error(`dispatching ${builder} failed: ${res.status} ${res.text}`);
  return (JSON.parse(res.text) as { DispatchedJobID: string }).DispatchedJobID;
}

async function registerOver(t: NomadTarget, id: string): Promise<void> {
  const res = await t.http("POST", "/v1/jobs", { Job: scriptedBuilderJob(id) });
  if (res.status !== 200) throw new Error(`registering ${id} failed: ${res.status} ${res.text}`);
}

function fakeDriver(t: NomadTarget, fake: NomadFake): LifecycleDriver {
  const driver: LifecycleDriver = {
    real: false,
    fake,
    registerBuilder: (id) => registerOver(t, id),
    dispatch: (builder, meta) => dispatchOver(t, builder, meta),
    place: async (id, opts = {}) => fake.placeAlloc(id, opts.node === undefined ? {} : { node: opts.node }),
    start: async (id) => fake.startTask(id),
    writeLog: async (id, type, text) => fake.writeLog(id, type, text),
    finish: async (id, exitCode) => fake.finishTask(id, exitCode),
    async run(id, script) {
      await driver.place(id);
      await driver.start(id);
      if (script.stdout !== undefined) await driver.writeLog(id, "stdout", script.stdout);
      if (script.stderr !== undefined) await driver.writeLog(id, "stderr", script.stderr);
      await driver.finish(id, script.exitCode);
    },
  };
  return driver;
}

interface RealAlloc {
  ID: string;
  ClientStatus: string;
  CreateIndex: number;
  TaskStates?: Record<string, { State: string }> | null;
}

/**
 * Against a real agent whose client shares this machine's file system (`nomad agent -dev`): the control files
 * live under `PETREL_TEST_CTL_DIR` (default: the temp directory), which the raw_exec task reads.
 */
function realDriver(t: NomadTarget): LifecycleDriver {
  const dir = process.env.PETREL_TEST_CTL_DIR ?? join(tmpdir(), "petrel-driver");
  const controls = new Map<string, string>();
  const control = (id: string) => {
    const file = controls.get(id);
    if (file === undefined) throw new Error(`${id} was not dispatched by this driver`);
    return file;
  };

  // Blocking queries on the job's allocations: each answer comes when something changed, not after a guess.
  async function until(id: string, done: (alloc: RealAlloc) => boolean, what: string, ms = 60_000): Promise<RealAlloc> {
    const deadline = Date.now() + ms;
    let index = 0;
    while (Date.now() < deadline) {
      const res = await t.http("GET", `/v1/job/${encodeURIComponent(id)}/allocations?index=${index}&wait=5s`);
      if (res.status !== 200) throw new Error(`reading allocations of ${id}: ${res.status} ${res.text}`);
      index = Number(res.headers["x-nomad-index"] ?? 0);
      const newest = (JSON.parse(res.text) as RealAlloc[]).sort((a, b) => b.CreateIndex - a.CreateIndex)[0];
      if (newest !== undefined && done(newest)) return newest;
    }
    throw new Error(`${id}: ${what} did not happen within ${ms} ms`);
  }
  const say = (id: string, line: string) => appendFile(control(id), `${line}\n`);

  const driver: LifecycleDriver = {
    real: true,
    fake: undefined,
    registerBuilder: (id) => registerOver(t, id),
    async dispatch(builder, meta) {
      await mkdir(dir, { recursive: true });
      const file = join(dir, `${randomBytes(8).toString("hex")}.ctl`);
      await writeFile(file, "");
      const id = await dispatchOver(t, builder, { ...meta, [CONTROL_META]: file });
      controls.set(id, file);
      return id;
    },
    async place(id) {
      return (await until(id, () => true, "placement")).ID;
    },
    async start(id) {
      await until(id, (a) => a.TaskStates?.executor?.State === "running", "the task's start");
    },
    writeLog: (id, type, text) => say(id, `${type === "stdout" ? "out" : "err"} ${Buffer.from(text).toString("base64")}`),
    async finish(id, exitCode) {
      await say(id, `exit ${exitCode}`);
      await until(id, (a) => a.ClientStatus === "complete" || a.ClientStatus === "failed", "the task's end");
    },
    async run(id, script) {
      await driver.place(id);
      await driver.start(id);
      if (script.stdout !== undefined) await driver.writeLog(id, "stdout", script.stdout);
      if (script.stderr !== undefined) await driver.writeLog(id, "stderr", script.stderr);
      await driver.finish(id, script.exitCode);
    },
  };
  return driver;
}
