import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { describe, expect, it } from "vitest";
import { childrenOf, findByEnv, killByEnv, namespaceArgv, namespaceProblem } from "../../src/local/isolate.js";

const isRoot = process.getuid?.() === 0;

function run(argv: string[]): { status: number | null; stdout: string; stderr: string } {
  return spawnSync(argv[0] as string, argv.slice(1), { encoding: "utf8", env: { PATH: process.env.PATH } });
}

describe("namespaceProblem", () => {
  it("names the reason when petrel is not root", () => {
    expect(namespaceProblem(1000, process.env)).toBe("petrel does not run as root");
  });

  it.skipIf(!isRoot)("finds nothing wrong as root on this host", () => {
    expect(namespaceProblem(0, process.env)).toBeUndefined();
  });
});

describe.skipIf(!isRoot)("namespaceArgv (as root: real namespaces and mounts)", () => {
  function layout() {
    // A quote and a space in the path: the setup script must quote everything.
    const dir = mkdtempSync(join(tmpdir(), "petrel-ns it's "));
    const data = join(dir, "data");
    const task = join(data, "builds", "b%2F1", "local");
    const secrets = join(data, "builds", "b%2F1", "secrets");
    const other = join(data, "builds", "b%2F2", "local");
    for (const d of [join(data, "cache"), task, secrets, other]) mkdirSync(d, { recursive: true });
    writeFileSync(join(other, "payload.json"), "other-build-secret");
    writeFileSync(join(secrets, "on-disk"), "stale");
    writeFileSync(join(dir, "petrel.yaml"), "hook-secret");
    writeFileSync(join(dir, "notes.txt"), "visible\n");
    mkdirSync(join(dir, "tools"));
    writeFileSync(join(dir, "tools", "t"), "tool\n");
    symlinkSync("tools", join(dir, "link"));
    return { dir, data, task, secrets, other };
  }

  it("hides the data directory except the kept paths, hides petrel.yaml, and runs the command as PID 1 in the task dir", () => {
    const { dir, data, task, secrets, other } = layout();
    const script = [
      'echo "pid=$$ cwd=$PWD"',
      `ls -A ${JSON.stringify(data)} ${JSON.stringify(join(data, "builds"))}`,
      `cat ${JSON.stringify(join(other, "payload.json"))} 2>/dev/null || echo "no other payload"`,
      `cat ${JSON.stringify(join(dir, "petrel.yaml"))} 2>/dev/null || echo "no config"`,
      `cat ${JSON.stringify(join(dir, "notes.txt"))} ${JSON.stringify(join(dir, "link", "t"))}`,
      `ls -A ${JSON.stringify(secrets)}; stat -f -c %T ${JSON.stringify(secrets)}`,
      `echo written > ${JSON.stringify(join(data, "cache", "from-build"))}`,
      `echo written > ${JSON.stringify(join(task, "from-build"))}`,
      "ls /proc | grep -c '^[0-9]'",
    ].join("\n");
    const r = run(
      namespaceArgv({
        dataDir: data,
        keep: [join(data, "cache"), task],
        tmpfs: [secrets],
        hideFiles: [join(dir, "petrel.yaml")],
        cwd: task,
        command: ["/bin/sh", "-c", script],
      }),
    );
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    const lines = r.stdout.trim().split("\n");
    expect(lines[0]).toBe(`pid=1 cwd=${task}`);
    expect(r.stdout).toContain("no other payload");
    expect(r.stdout).not.toContain("other-build-secret");
    expect(r.stdout).toContain("no config");
    expect(r.stdout).not.toContain("hook-secret");
    expect(r.stdout).toContain("visible\ntool\n");
    // The secrets directory is a fresh tmpfs: what was on disk there is not, and nothing written reaches disk.
    expect(r.stdout).toContain("tmpfs\n");
    expect(r.stdout).not.toContain("on-disk");
    // Only the build's own processes: this shell and `ls`/`grep`.
    expect(Number(lines[lines.length - 1])).toBeLessThanOrEqual(3);
    expect(readFileSync(join(data, "cache", "from-build"), "utf8")).toBe("written\n");
    expect(readFileSync(join(task, "from-build"), "utf8")).toBe("written\n");
    // Outside the namespace nothing changed.
    expect(readFileSync(join(dir, "petrel.yaml"), "utf8")).toBe("hook-secret");
    expect(existsSync(join(secrets, "on-disk"))).toBe(true);
  });

  it("lists the data directory as holding only the kept paths", () => {
    const { data, task, secrets } = layout();
    const r = run(
      namespaceArgv({
        dataDir: data,
        keep: [join(data, "cache"), task],
        tmpfs: [secrets],
        hideFiles: [],
        cwd: task,
        command: ["/bin/sh", "-c", `cd ${JSON.stringify(data)} && find . | sort`],
      }),
    );
    expect(r.status).toBe(0);
    expect(r.stdout.trim().split("\n")).toEqual([
      ".",
      "./builds",
      "./builds/b%2F1",
      "./builds/b%2F1/local",
      "./builds/b%2F1/secrets",
      "./cache",
    ]);
  });

  it("ends every process in the namespace when its init is killed", async () => {
    const { data, task } = layout();
    const mark = `ns-${process.pid}-${Date.now()}`;
    const argv = namespaceArgv({
      dataDir: data,
      keep: [task],
      tmpfs: [],
      hideFiles: [],
      cwd: task,
      command: ["/bin/sh", "-c", "setsid sleep 300 & (sleep 301 &) ; sleep 302"],
    });
    const child = spawn(argv[0] as string, argv.slice(1), { env: { PATH: process.env.PATH, MARK: mark }, stdio: "ignore", detached: true });
    const exited = new Promise((r) => child.once("exit", r));
    let found: number[] = [];
    for (let i = 0; i < 100 && found.length < 4; i++) {
      await sleep(50);
      found = await findByEnv("MARK", mark);
    }
    expect(found.length).toBeGreaterThanOrEqual(4);
    // setpriv has exec'd unshare, whose forked child is the namespace's init.
    const [init] = await childrenOf(child.pid as number);
    expect(init).toBeDefined();
    process.kill(init as number, "SIGKILL");
    await exited;
    expect(await findByEnv("MARK", mark)).toEqual([]);
  });

  it("fails with status 125 when a mount cannot be made", () => {
    const { data, task } = layout();
    const r = run(namespaceArgv({ dataDir: join(data, "missing"), keep: [], tmpfs: [], hideFiles: [], cwd: task, command: ["true"] }));
    expect(r.status).toBe(125);
  });
});

describe("findByEnv and killByEnv", () => {
  it("find and kill exactly the processes that carry the marker", async () => {
    const mark = `kb-${process.pid}-${Date.now()}`;
    const marked = spawn("sleep", ["300"], { env: { PATH: process.env.PATH, MARK: mark }, stdio: "ignore" });
    const other = spawn("sleep", ["300"], { env: { PATH: process.env.PATH, MARK: `${mark}-not` }, stdio: "ignore" });
    const gone = new Promise((r) => marked.once("exit", r));
    try {
      await sleep(100);
      expect(await findByEnv("MARK", mark)).toEqual([marked.pid]);
      expect(await killByEnv("MARK", mark)).toBe(1);
      await gone;
      expect(await findByEnv("MARK", mark)).toEqual([]);
      expect(other.exitCode).toBeNull();
    } finally {
      marked.kill("SIGKILL");
      other.kill("SIGKILL");
    }
  });

  it("childrenOf lists a process's children", async () => {
    const parent = spawn("/bin/sh", ["-c", "sleep 300 & sleep 301 & wait"], { stdio: "ignore" });
    try {
      let kids: number[] = [];
      for (let i = 0; i < 40 && kids.length < 2; i++) {
        await sleep(50);
        kids = await childrenOf(parent.pid as number);
      }
      expect(kids).toHaveLength(2);
    } finally {
      for (const pid of await childrenOf(parent.pid as number)) process.kill(pid, "SIGKILL");
      parent.kill("SIGKILL");
    }
  });
});
