import { chmodSync, existsSync, mkdirSync, readdirSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { repoSlug } from "../../src/executor/layout.js";
import {
  cleanup,
  createRepo,
  mountSupport,
  pushMeta,
  type RunOptions,
  runExecutor,
  sh,
  type TestRepo,
  tempDir,
  treeDigest,
} from "./helpers.js";

// Issue 9, finding 1: a fork must not be able to switch isolation off, and no build may write the shared
// worktree of a commit or another namespace's caches. Every test here performs the attack with a real git
// repository, a real `petrel executor` child process and real mounts (root only: skipped otherwise).
const support = mountSupport();
const root = process.getuid?.() === 0;
if (!support.ok || !root)
  console.warn(`SKIPPED executor isolation tests: they need root and overlay mounts (${support.reason || "not root"})`);

/** What a fork's build script does when it gets to run: write into every shared place it can name. */
const HOSTILE = [
  "set +e",
  'try() { if sh -c "$1" 2>/dev/null; then echo "ESCAPED: $1"; fi; }',
  'echo "uid=$(id -u)"',
  'umount -l "$PETREL_CACHE_DIR" 2>/dev/null',
  'try "echo pwned > $MAIN_WT/pwned"',
  'try "echo pwned > $MAIN_WT/.petrel"',
  'try "echo poison > $TRUSTED_CACHE/poison"',
  'try "echo pwned > $PETREL_CACHE_DIR/worktrees/pwned"',
  'for p in 1 $PPID self; do try "echo pwned > /proc/$p/root$MAIN_WT/pwned"; try "echo poison > /proc/$p/root$TRUSTED_CACHE/poison"; done',
  'try "mount -o remount,rw $MAIN_WT"',
  'try "mount -o remount,rw /"',
  'mkdir -p /tmp/petrel-hostile-mnt 2>/dev/null; try "mount --bind / /tmp/petrel-hostile-mnt"',
  "try \"nsenter -t 1 -m -- sh -c 'echo pwned > $MAIN_WT/pwned'\"",
  'for d in ../lower ../../worktrees/*/* ../../../worktrees/*/*; do try "echo pwned > $d/pwned"; done',
  "echo HOSTILE-SCRIPT-RAN",
].join("\n");

describe.skipIf(!support.ok || !root)("executor isolation under attack", () => {
  let dir: string;
  let repo: TestRepo;
  let cacheDir: string;
  let main: string;
  let mainWt: string;
  let trustedCache: string;
  let before: { wt: Map<string, string>; cache: Map<string, string> };
  let n = 0;

  const run = (opts: Omit<RunOptions, "cacheDir" | "taskDir"> & { taskDir?: string }) =>
    runExecutor({
      cacheDir,
      taskDir: join(dir, `task-${++n}`),
      ...opts,
      env: { MAIN_WT: mainWt, TRUSTED_CACHE: trustedCache, ...opts.env },
    });

  /** A fork's pull request head: `prepare` shapes the work tree (files, symlinks), pushed to refs/pull/<pr>/head. */
  function forkCommit(pr: number, prepare: (work: string) => void): string {
    const base = sh("git rev-parse HEAD", repo.work).trim();
    writeFileSync(join(repo.work, ".petrel"), `#!/bin/sh\n${HOSTILE}\n`);
    chmodSync(join(repo.work, ".petrel"), 0o755);
    prepare(repo.work);
    // The PR number in the message keeps commits of identical trees made in the same second distinct.
    sh(`git add -A && git -c user.name=fork -c user.email=fork@example.test commit -qm "fork ${pr}"`, repo.work);
    const c = sh("git rev-parse HEAD", repo.work).trim();
    sh(`git push -q ${repo.bare} HEAD:refs/pull/${pr}/head && git reset -q --hard ${base}`, repo.work);
    return c;
  }

  const prMeta = (commit: string, pr: number, caches: string) =>
    pushMeta(repo, commit, { EVENT: "pull_request", PR: String(pr), BRANCH: "feature", TRUSTED: "false", CACHES: caches });

  /** The shared worktree and the trusted caches are exactly as main's trusted build left them. */
  function expectUntouched(): void {
    expect(treeDigest(mainWt)).toEqual(before.wt);
    expect(treeDigest(trustedCache)).toEqual(before.cache);
    expect(existsSync(join(mainWt, "pwned"))).toBe(false);
  }

  beforeAll(async () => {
    dir = tempDir("iso");
    repo = createRepo(dir);
    cacheDir = join(dir, "cache");
    main = repo.commit(
      {
        ".petrel": '#!/bin/sh\necho "main build"; [ -e deps/trusted.txt ] || echo trusted-data > deps/trusted.txt\n',
        "data/a.txt": "alpha\n",
      },
      { executable: [".petrel"] },
    );
    mainWt = join(cacheDir, "worktrees", repoSlug(repo.url), main);
    trustedCache = join(cacheDir, "caches", repoSlug(repo.url), "trusted", "deps");
    const r = await runExecutor({
      meta: pushMeta(repo, main, { TRUSTED: "true", CACHES: "deps=deps" }),
      cacheDir,
      taskDir: join(dir, "main-0"),
    });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("main build");
    before = { wt: treeDigest(mainWt), cache: treeDigest(trustedCache) };
    expect(before.cache.size).toBe(2);
  });

  afterAll(() => {
    cleanup(dir);
  });

  it("(a) refuses a cache whose mount point the fork made a regular file, without falling back to a copy", async () => {
    const c = forkCommit(7, (work) => writeFileSync(join(work, "deps"), "a file where the cache mounts\n"));
    const r = await run({ meta: prMeta(c, 7, "deps=deps") });
    expect(r.stderr).toContain('==> error: cache "deps" (deps) refused: "deps" in the tree is a regular file; nothing was mounted');
    expect(r.code).toBe(78);
    expect(r.stderr).not.toContain("copy of the tree");
    expect(r.stderr).not.toContain("==> overlay");
    expect(r.stdout).not.toContain("HOSTILE-SCRIPT-RAN");
    expectUntouched();
    // The next trusted build of main runs main's code.
    const next = await run({ meta: pushMeta(repo, main, { TRUSTED: "true", CACHES: "deps=deps" }) });
    expect(next.stdout).toContain("main build");
    expect(next.code).toBe(0);
    expect(treeDigest(mainWt)).toEqual(before.wt);
    // A trusted build using its cache marks it as used (mtime): that is the new state to keep.
    before.cache = treeDigest(trustedCache);
  });

  it("(b) refuses cache mount points that are symlinks out of the tree, or paths that escape it", async () => {
    const toRoot = forkCommit(8, (work) => symlinkSync("/", join(work, "deps")));
    const up = forkCommit(9, (work) => symlinkSync("../../..", join(work, "deps")));
    const nested = forkCommit(10, (work) => {
      symlinkSync("/", join(work, "vendor"));
    });
    const cases: [string, string, string][] = [
      [toRoot, "deps=deps", '"deps" in the tree is a symlink'],
      [up, "deps=deps", '"deps" in the tree is a symlink'],
      [nested, "deps=vendor/deps", '"vendor" in the tree is a symlink'],
      [nested, "deps=../deps", "the path contains '..'"],
      [nested, "deps=sub/../../deps", "the path contains '..'"],
    ];
    for (const [commit, caches, reason] of cases) {
      const r = await run({ meta: prMeta(commit, commit === toRoot ? 8 : commit === up ? 9 : 10, caches) });
      expect(r.stderr).toContain(`==> error: cache "deps" (${caches.slice(5)}) refused: ${reason}`);
      expect(r.code).toBe(78);
      expect(r.stdout).not.toContain("HOSTILE-SCRIPT-RAN");
    }
    // An absolute mount point that leads into the build tree through a host symlink is checked in the tree too.
    const file = forkCommit(11, (work) => writeFileSync(join(work, "deps"), "file\n"));
    const taskDir = join(dir, "abs-task");
    mkdirSync(join(taskDir, "build"), { recursive: true });
    symlinkSync(join(taskDir, "build"), join(dir, "into-tree"));
    const abs = await run({ meta: prMeta(file, 11, `deps=${dir}/into-tree/deps`), taskDir });
    expect(abs.stderr).toContain('refused: "deps" in the tree is a regular file');
    expect(abs.code).toBe(78);
    expectUntouched();
  });

  it("(c) keeps a hostile build in mount mode away from the shared worktree and the trusted caches", async () => {
    const c = forkCommit(12, () => undefined);
    const r = await run({ meta: prMeta(c, 12, "deps=deps") });
    expect(r.stderr).toMatch(/==> overlay at .* \(private mount namespace\)/);
    expect(r.stdout).toContain("uid=0");
    expect(r.stdout).toContain("HOSTILE-SCRIPT-RAN");
    expect(r.stdout).not.toContain("ESCAPED");
    expect(r.code).toBe(0);
    expectUntouched();
    // Its own worktree too: the overlay's lower layer is mounted read-only.
    const own = join(cacheDir, "worktrees", repoSlug(repo.url), c);
    expect(existsSync(join(own, "pwned"))).toBe(false);
  });

  it("fails closed when mounting fails: no copy, no build", async () => {
    const bin = join(dir, "failing-mount");
    mkdirSync(bin);
    writeFileSync(join(bin, "mount"), "#!/bin/sh\necho 'mount: permission denied (test)' >&2\nexit 32\n");
    chmodSync(join(bin, "mount"), 0o755);
    const c = forkCommit(13, () => undefined);
    for (const trusted of ["false", "true"]) {
      const r = await run({ meta: { ...prMeta(c, 13, ""), TRUSTED: trusted }, env: { PATH: `${bin}:${process.env.PATH}` } });
      expect(r.stderr).toContain("==> error: cannot set up the build tree (mount): mount: permission denied (test)");
      expect(r.code).toBe(71);
      expect(r.stderr).not.toContain("copy");
      expect(r.stdout).not.toContain("HOSTILE-SCRIPT-RAN");
    }
    expectUntouched();
  });

  it("(d) refuses an untrusted build when copy mode is configured, before checking anything out", async () => {
    const c = forkCommit(14, () => undefined);
    const r = await run({ meta: prMeta(c, 14, ""), env: { PETREL_ISOLATION: "copy" } });
    expect(r.stderr).toContain("==> error: refusing to run an untrusted build (fork or unknown sender) with PETREL_ISOLATION=copy");
    expect(r.code).toBe(77);
    expect(r.stderr).not.toContain("==> checkout");
    expect(r.stdout).not.toContain("HOSTILE-SCRIPT-RAN");
    expect(existsSync(join(cacheDir, "worktrees", repoSlug(repo.url), c))).toBe(false);
    expectUntouched();
  });

  it("(e) runs a trusted build in copy mode as an unprivileged user that cannot reach the cache directory", async () => {
    const base = sh("git rev-parse HEAD", repo.work).trim();
    const c = repo.commit(
      {
        ".petrel": [
          "#!/bin/sh",
          HOSTILE,
          'ls -A "$PETREL_CACHE_DIR" >/dev/null 2>&1 && echo CACHE-DIR-READABLE',
          'try "echo pwned > $OWN_WT/pwned"',
          "echo built > built.txt && cat built.txt",
          'echo home > "$HOME/h" && echo "home writable"',
          '. "$PETREL_SECRETS" && echo "token=$TOKEN"',
        ].join("\n"),
      },
      { executable: [".petrel"] },
    );
    sh(`git reset -q --hard ${base}`, repo.work);
    const ownWt = join(cacheDir, "worktrees", repoSlug(repo.url), c);
    const tmp = join(dir, "copy-tmp");
    mkdirSync(tmp);
    // As /tmp is: the build user must be able to pass through to its copy, home and secrets.
    chmodSync(dir, 0o711);
    const meta = pushMeta(repo, c, { TRUSTED: "true", CACHES: "deps=deps" });
    const warm = await run({
      meta,
      env: { PETREL_ISOLATION: "copy", TMPDIR: tmp, OWN_WT: ownWt },
      payload: { secrets: { TOKEN: "s3cret" } },
    });
    expect(warm.code).toBe(0);
    const ownBefore = treeDigest(ownWt);
    const r = await run({ meta, env: { PETREL_ISOLATION: "copy", TMPDIR: tmp, OWN_WT: ownWt }, payload: { secrets: { TOKEN: "s3cret" } } });
    expect(r.stderr).toMatch(/==> copy of the tree at .*copy-tmp\/petrel-copy-/);
    expect(r.stderr).toContain("build runs as uid 65534");
    expect(r.stdout).toContain("uid=65534");
    expect(r.stdout).toContain("HOSTILE-SCRIPT-RAN");
    expect(r.stdout).not.toContain("ESCAPED");
    expect(r.stdout).not.toContain("CACHE-DIR-READABLE");
    expect(r.stdout).toContain("built\nhome writable\ntoken=s3cret");
    expect(r.code).toBe(0);
    expect(statSync(cacheDir).mode & 0o777).toBe(0o700);
    expect(treeDigest(ownWt)).toEqual(ownBefore);
    expectUntouched();
    // The private copy, its home and the secrets go with the build.
    expect(readdirSync(tmp)).toEqual([]);
  });
});
