import { spawn } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cleanup, createRepo, mountPoints, mountSupport, PETREL, sh, type TestRepo, tempDir, treeDigest } from "./helpers.js";

const support = mountSupport();
if (!support.ok) console.warn(`SKIPPED petrel run overlay tests: this process may not mount overlayfs (${support.reason})`);

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function petrelRun(cwd: string, args: string[], env: NodeJS.ProcessEnv, input?: string): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [PETREL, "run", ...args], {
      cwd,
      env: { PATH: process.env.PATH, ...env },
      stdio: [input === undefined ? "ignore" : "pipe", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout?.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
    if (input !== undefined) child.stdin?.end(input);
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

const DESTRUCTIVE = [
  "#!/bin/sh",
  'echo "pwd=$PWD flavor=$FLAVOR commit=$COMMIT branch=$BRANCH"',
  "rm -rf src notes.txt",
  "echo overwritten > README",
  "echo fresh > new-file",
  "chmod 700 README",
  "git -c user.email=b@x -c user.name=b add -A && git -c user.email=b@x -c user.name=b commit -qm 'from the build' && git checkout -qb build-branch",
  "echo hook > .git/hooks/post-commit",
  'exit "${EXIT_WITH:-0}"',
].join("\n");

describe("petrel run", () => {
  let dir: string;
  let repo: TestRepo;
  let env: NodeJS.ProcessEnv;
  let commit: string;

  beforeAll(() => {
    dir = tempDir("run");
    repo = createRepo(dir);
    commit = repo.commit(
      { ".petrel": `${DESTRUCTIVE}\n`, README: "readme\n", "src/a.c": "int a;\n", "src/deep/b.c": "int b;\n" },
      { executable: [".petrel"] },
    );
    sh("git remote add origin https://git.example.test/acme/widgets.git", repo.work);
    // Uncommitted work must be built as it is, and survive.
    writeFileSync(join(repo.work, "notes.txt"), "untracked notes\n");
    writeFileSync(join(repo.work, "src/a.c"), "int a = 1; /* edited */\n");
    const home = join(dir, "home");
    mkdirSync(home);
    env = { HOME: home, PETREL_CACHE_DIR: join(dir, "cache"), PETREL_KILL_GRACE: "1s" };
  });
  afterAll(() => cleanup(dir));

  it.skipIf(!support.ok)("builds the working tree in place without changing a byte of it", async () => {
    // git status refreshes the index file; take it first so the digest is of a settled tree.
    const status = sh("git status --porcelain", repo.work);
    const before = treeDigest(repo.work);
    const mounts = mountPoints(dir);
    const r = await petrelRun(join(repo.work, "src"), ["--flavor", "nix"], env);
    expect(r.stderr).toContain(`==> checkout acme/widgets@${commit.slice(0, 7)} (working tree ${repo.work})`);
    expect(r.stderr).toMatch(/==> overlay at .* \(private mount namespace\)/);
    expect(r.stdout).toContain(`pwd=${repo.work} flavor=nix commit=${commit} branch=main`);
    expect(r.code).toBe(0);
    expect(treeDigest(repo.work)).toEqual(before);
    expect(sh("git status --porcelain", repo.work)).toBe(status);
    expect(status).toContain(" M src/a.c");
    expect(sh("git branch --list", repo.work).trim()).toBe("* main");
    expect(mountPoints(dir)).toEqual(mounts);
  });

  it.skipIf(!support.ok)("keeps a linked worktree's git directory, outside the tree, read-only for the build", async () => {
    const linked = join(dir, "linked");
    sh(`git worktree add -q ${linked} -b linked-branch`, repo.work);
    writeFileSync(
      join(linked, ".petrel"),
      '#!/bin/sh\ngit -c user.email=b@x -c user.name=b commit -q --allow-empty -m "from the build" 2>/dev/null; echo "commit rc=$?"\n',
    );
    sh("git status --porcelain", repo.work);
    const before = treeDigest(join(repo.work, ".git"));
    const r = await petrelRun(linked, [], env);
    expect(r.stdout).toMatch(/commit rc=[1-9]/);
    expect(r.code).toBe(0);
    expect(treeDigest(join(repo.work, ".git"))).toEqual(before);
    expect(sh("git log -1 --format=%s linked-branch", repo.work).trim()).toBe("change");
  });

  it("leaves the working tree untouched in copy mode too, and passes the build's exit code on", async () => {
    const before = treeDigest(repo.work);
    const r = await petrelRun(repo.work, [], { ...env, PETREL_ISOLATION: "copy", EXIT_WITH: "5" });
    expect(r.stderr).toMatch(/==> copy of the tree at .* \(no mounts possible\)/);
    expect(r.stdout).toContain("flavor=default");
    expect(r.code).toBe(5);
    expect(treeDigest(repo.work)).toEqual(before);
  });

  it("falls back to a copy of the developer's own tree where mounting fails (petrel run only)", async () => {
    const bin = join(dir, "failing-mount");
    mkdirSync(bin, { recursive: true });
    writeFileSync(join(bin, "mount"), "#!/bin/sh\necho 'mount: permission denied (test)' >&2\nexit 32\n", { mode: 0o755 });
    const before = treeDigest(repo.work);
    const r = await petrelRun(repo.work, [], { ...env, PATH: `${bin}:${process.env.PATH}` });
    expect(r.stderr).toMatch(/unavailable \(mount: permission denied \(test\)\); trying copy/);
    expect(r.stderr).toMatch(/==> copy of the tree at /);
    expect(r.stdout).toContain("flavor=default");
    expect(r.code).toBe(0);
    expect(treeDigest(repo.work)).toEqual(before);
  });

  it.skipIf(!support.ok)("opens a shell in the build directory with the build's environment when --debug and the build fails", async () => {
    const before = treeDigest(repo.work);
    const r = await petrelRun(
      repo.work,
      ["--debug"],
      { ...env, SHELL: "/bin/sh", EXIT_WITH: "3" },
      'echo "debug:$PWD:$FLAVOR:$(cat README):$(git log -1 --format=%s)"\nexit\n',
    );
    expect(r.stderr).toContain(`==> build failed (exit 3): debug shell in ${repo.work}`);
    expect(r.stdout).toContain(`debug:${repo.work}:default:overwritten:from the build`);
    expect(r.code).toBe(3);
    expect(treeDigest(repo.work)).toEqual(before);
  });

  it("does not open a shell when the build succeeds under --debug", async () => {
    const r = await petrelRun(repo.work, ["--debug"], { ...env, SHELL: "/bin/sh", PETREL_ISOLATION: "copy" }, "echo SHOULD-NOT-RUN\n");
    expect(r.code).toBe(0);
    expect(r.stdout).not.toContain("SHOULD-NOT-RUN");
    expect(r.stderr).not.toContain("debug shell");
  });

  it("refuses to run outside a git working tree and rejects unknown options", async () => {
    const outside = join(dir, "plain");
    mkdirSync(outside);
    const r = await petrelRun(outside, [], { ...env, GIT_CEILING_DIRECTORIES: dir });
    expect(r.code).toBe(64);
    expect(r.stderr).toContain("==> error: not inside a git working tree");
    const bad = await petrelRun(repo.work, ["--bogus"], env);
    expect(bad.code).toBe(64);
    expect(bad.stderr).toContain("petrel run: unknown option --bogus; see `petrel run --help`");
  });
});
