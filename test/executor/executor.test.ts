import { spawnSync } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { lockFile } from "../../src/executor/lock.js";
import {
  cleanup,
  createRepo,
  isAlive,
  mountPoints,
  mountSupport,
  pushMeta,
  runExecutor,
  script,
  sh,
  type TestRepo,
  tempDir,
  treeDigest,
  waitFor,
} from "./helpers.js";

const support = mountSupport();
if (!support.ok) console.warn(`SKIPPED executor mount tests: this process may not mount overlayfs (${support.reason})`);
const userns = spawnSync("unshare", ["--user", "--map-root-user", "--mount", "true"]).status === 0;
if (!userns) console.warn("SKIPPED the user-namespace executor test: unshare --user is not permitted here");

function worktreeDirs(cacheDir: string): string[] {
  const root = join(cacheDir, "worktrees");
  if (!existsSync(root)) return [];
  return readdirSync(root).flatMap((repo) =>
    readdirSync(join(root, repo))
      .filter((n) => !n.endsWith(".lock"))
      .map((n) => join(root, repo, n)),
  );
}

describe.skipIf(!support.ok)("petrel executor (overlay in a private mount namespace)", () => {
  let dir: string;
  let repo: TestRepo;
  let cacheDir: string;
  let commit: string;
  let hostMounts: string[];

  beforeAll(() => {
    dir = tempDir("exec");
    repo = createRepo(dir);
    cacheDir = join(dir, "cache");
    commit = repo.commit(
      {
        ...script(
          'echo "first line"; echo "commit=$COMMIT branch=$BRANCH flavor=$FLAVOR ci=$CI id=$PETREL_BUILD_ID url=$REPO_URL"; cat data/a.txt; exit "${EXIT_WITH:-0}"',
        ),
        "data/a.txt": "alpha\n",
        "data/b.txt": "beta\n",
        "keep.txt": "keep\n",
      },
      { executable: [".petrel"] },
    );
    hostMounts = mountPoints(dir);
  });

  afterAll(() => {
    cleanup(dir);
  });

  it("checks out cold through the mirror, then reuses the cached worktree", async () => {
    const cold = await runExecutor({ meta: pushMeta(repo, commit), cacheDir, taskDir: join(dir, "t1") });
    expect(cold.code).toBe(0);
    expect(cold.stderr).toMatch(`==> checkout acme/widgets@${commit.slice(0, 7)} (fetched refs/heads/main)`);
    expect(cold.stdout).toContain("first line");
    expect(cold.stdout).toContain(`commit=${commit} branch=main flavor=default ci=true id=builder/dispatch-`);
    expect(cold.stdout).toContain("alpha");
    const warm = await runExecutor({ meta: pushMeta(repo, commit), cacheDir, taskDir: join(dir, "t2") });
    expect(warm.code).toBe(0);
    expect(warm.stderr).toMatch(`==> checkout acme/widgets@${commit.slice(0, 7)} (cached)`);
    expect(warm.stderr).toMatch(/==> overlay at .* \(private mount namespace\)/);
    expect(warm.stderr).toMatch(/==> exit 0 after/);
    expect(worktreeDirs(cacheDir)).toEqual([expect.stringMatching(new RegExp(`/${commit}$`))]);
    // Scratch layers and their lock files go with the build.
    expect(readdirSync(join(cacheDir, "builds"))).toEqual([]);
  });

  it("makes the build's exit code the executor's", async () => {
    const r = await runExecutor({ meta: pushMeta(repo, commit), cacheDir, taskDir: join(dir, "t3"), env: { EXIT_WITH: "7" } });
    expect(r.code).toBe(7);
    expect(r.stderr).toContain("==> exit 7 after");
  });

  it("writes stdout, stderr and its step lines also to ${NOMAD_ALLOC_DIR}/petrel/all.log, in write order", async () => {
    const c = repo.commit(script("echo out; sleep 0.2; echo err >&2; sleep 0.2; printf 'out2\\r\\n'"));
    const allocDir = join(dir, "alloc-merged");
    const r = await runExecutor({ meta: pushMeta(repo, c), cacheDir, taskDir: join(dir, "t-merged"), env: { NOMAD_ALLOC_DIR: allocDir } });
    expect(r.code).toBe(0);
    // Nomad's two logs stay as they were.
    expect(r.stdout).toBe("out\nout2\r\n");
    expect(r.stderr).toContain("err\n");
    const merged = readFileSync(join(allocDir, "petrel", "all.log"), "utf8");
    // Every byte of both, nothing else.
    expect(merged.length).toBe(r.stdout.length + r.stderr.length);
    const lines = merged.split("\n").filter(Boolean);
    expect(lines.filter((l) => !l.startsWith("==> "))).toEqual(["out", "err", "out2\r"]);
    expect(lines[0]).toMatch(/^==> checkout /);
    expect(lines.findIndex((l) => l.startsWith("==> run .petrel"))).toBeLessThan(lines.indexOf("out"));
    expect(lines.at(-1)).toMatch(/^==> exit 0 after/);
  });

  it("exits once the build script has, although a process it left behind still holds the output pipes", async () => {
    // `setsid` takes the process out of the build's group; it keeps the pipes the executor reads. Were the
    // executor to wait for them, a Nomad allocation (or a local build's PID namespace) would never end.
    const c = repo.commit(script("setsid sleep 31.7 & echo started"));
    const started = Date.now();
    try {
      const r = await runExecutor({
        meta: pushMeta(repo, c),
        cacheDir,
        taskDir: join(dir, "t-orphan"),
        env: { NOMAD_ALLOC_DIR: join(dir, "alloc-orphan") },
      });
      expect(r.code).toBe(0);
      expect(r.stdout).toContain("started");
      expect(Date.now() - started).toBeLessThan(15_000);
    } finally {
      spawnSync("pkill", ["-f", "sleep 31.7"]);
    }
  });

  it("leaves the base worktree byte-identical after a build that deletes, rewrites and adds files", async () => {
    const c = repo.commit(
      script(
        [
          "rm -f data/a.txt keep.txt",
          "echo changed > data/b.txt",
          "chmod 600 data/b.txt",
          "echo new > data/new.txt",
          "mkdir -p out && echo x > out/y",
          "git -c user.email=b@x -c user.name=b commit -qam 'build commit' && git tag built",
          "test ! -e keep.txt && echo 'deleted ok'",
        ].join("\n"),
      ),
      { executable: [".petrel"] },
    );
    await runExecutor({ meta: pushMeta(repo, c, { PETREL: "warm" }), cacheDir, taskDir: join(dir, "t4") });
    const [base] = worktreeDirs(cacheDir).filter((p) => p.endsWith(c));
    expect(base).toBeDefined();
    const before = treeDigest(base as string);
    const r = await runExecutor({ meta: pushMeta(repo, c), cacheDir, taskDir: join(dir, "t5") });
    expect(r.stdout).toContain("deleted ok");
    expect(treeDigest(base as string)).toEqual(before);
    // And the next build of the commit starts from the pristine tree again.
    const again = await runExecutor({ meta: pushMeta(repo, c), cacheDir, taskDir: join(dir, "t6") });
    expect(again.stdout).toContain("deleted ok");
    expect(again.code).toBe(0);
  });

  it("checks a commit out once when four builds of it start together", async () => {
    const c = repo.commit({ ...script("echo built; ls data | wc -l"), "data/c.txt": "c\n" }, { executable: [".petrel"] });
    const runs = await Promise.all(
      [1, 2, 3, 4].map((i) => runExecutor({ meta: pushMeta(repo, c), cacheDir, taskDir: join(dir, `c${i}`) })),
    );
    for (const r of runs) {
      expect(r.code).toBe(0);
      expect(r.stdout).toContain("built");
    }
    const fetched = runs.filter((r) => !r.stderr.includes("(cached)"));
    expect(fetched).toHaveLength(1);
    const repoDir = join(cacheDir, "worktrees", readdirSync(join(cacheDir, "worktrees"))[0] as string);
    expect(readdirSync(repoDir).filter((n) => n.startsWith(".tmp-"))).toEqual([]);
  });

  it("never trusts a worktree a killed executor left half done, and the next build succeeds", async () => {
    const c = repo.commit({ ...script("cat big/f-0099.txt"), ...bigTree(100) }, { executable: [".petrel"] });
    const bin = join(dir, "slowgit");
    const mark = join(dir, "checkout-started");
    mkdirSync(bin, { recursive: true });
    const realGit = sh("command -v git").trim();
    writeFileSync(join(bin, "git"), `#!/bin/sh\ncase " $* " in *" checkout "*) echo $$ > ${mark}; sleep 30;; esac\nexec ${realGit} "$@"\n`);
    chmodSync(join(bin, "git"), 0o755);
    let pid = 0;
    const killed = runExecutor({
      meta: pushMeta(repo, c),
      cacheDir,
      taskDir: join(dir, "k1"),
      env: { PATH: `${bin}:${process.env.PATH}` },
      onSpawn: (p) => (pid = p),
    });
    expect(await waitFor(() => existsSync(mark) && readFileSync(mark, "utf8").endsWith("\n"), 15_000)).toBe(true);
    process.kill(-pid, "SIGKILL");
    // git runs in a process group of its own: as under Nomad, where the whole task dies, kill it too.
    process.kill(-Number(readFileSync(mark, "utf8")), "SIGKILL");
    const k = await killed;
    expect(k.signal).toBe("SIGKILL");
    const repoDir = join(cacheDir, "worktrees", readdirSync(join(cacheDir, "worktrees"))[0] as string);
    expect(readdirSync(repoDir).some((n) => n.startsWith(`.tmp-${c}-`))).toBe(true);
    expect(existsSync(join(repoDir, c))).toBe(false);
    const good = await runExecutor({ meta: pushMeta(repo, c), cacheDir, taskDir: join(dir, "k2") });
    expect(good.code).toBe(0);
    expect(good.stdout).toContain("file 99");
    expect(good.stderr).toContain("(from mirror)");
    expect(readdirSync(repoDir).filter((n) => n.startsWith(".tmp-"))).toEqual([]);
    expect(readFileSync(join(repoDir, c, "big/f-0042.txt"), "utf8")).toBe("file 42\n");
  });

  it("stops the build's whole process group on SIGTERM and cleans up within the kill grace", async () => {
    const c = repo.commit(script('sleep 300 & echo $! > "$PIDFILE"; echo started; wait'), { executable: [".petrel"] });
    const pidfile = join(dir, "sleep.pid");
    let signalled = false;
    const started = Date.now();
    const r = await runExecutor({
      meta: pushMeta(repo, c),
      cacheDir,
      taskDir: join(dir, "s1"),
      env: { PIDFILE: pidfile },
      onStdout: (text, pid) => {
        if (!signalled && text.includes("started")) {
          signalled = true;
          process.kill(pid, "SIGTERM");
        }
      },
    });
    expect(signalled).toBe(true);
    expect(r.code).toBe(143);
    expect(r.stderr).toContain("==> cancelled");
    expect(Date.now() - started).toBeLessThan(10_000);
    const sleeper = Number(readFileSync(pidfile, "utf8"));
    expect(await waitFor(() => !isAlive(sleeper), 2000)).toBe(true);
    expect(readdirSync(join(cacheDir, "builds")).filter((n) => !n.endsWith(".lock"))).toEqual([]);
    expect(existsSync(join(dir, "s1", "build"))).toBe(false);
  });

  it("stops a checkout in progress on SIGTERM and leaves no half worktree", async () => {
    const c = repo.commit({ ...script("echo never"), "late.txt": "late\n" }, { executable: [".petrel"] });
    const bin = join(dir, "slowgit2");
    const mark = join(dir, "checkout-started-2");
    mkdirSync(bin, { recursive: true });
    const realGit = sh("command -v git").trim();
    writeFileSync(join(bin, "git"), `#!/bin/sh\ncase " $* " in *" checkout "*) touch ${mark}; sleep 30;; esac\nexec ${realGit} "$@"\n`);
    chmodSync(join(bin, "git"), 0o755);
    let pid = 0;
    const started = Date.now();
    const run = runExecutor({
      meta: pushMeta(repo, c),
      cacheDir,
      taskDir: join(dir, "tc"),
      env: { PATH: `${bin}:${process.env.PATH}` },
      onSpawn: (p) => (pid = p),
    });
    expect(await waitFor(() => existsSync(mark), 15_000)).toBe(true);
    process.kill(pid, "SIGTERM");
    const r = await run;
    expect(r.code).toBe(143);
    expect(r.stderr).toContain("==> cancelled");
    expect(r.stdout).not.toContain("never");
    expect(Date.now() - started).toBeLessThan(10_000);
    const repoDir = join(cacheDir, "worktrees", readdirSync(join(cacheDir, "worktrees"))[0] as string);
    expect(readdirSync(repoDir).filter((n) => n.includes(c) && !n.endsWith(".lock"))).toEqual([]);
  });

  it("kills a build that ignores SIGTERM once the grace period is over", async () => {
    const c = repo.commit(script("trap '' TERM; echo started; while :; do sleep 1; done"), { executable: [".petrel"] });
    let signalledAt = 0;
    const r = await runExecutor({
      meta: pushMeta(repo, c),
      cacheDir,
      taskDir: join(dir, "s2"),
      env: { PETREL_KILL_GRACE: "1s" },
      onStdout: (text, pid) => {
        if (!signalledAt && text.includes("started")) {
          signalledAt = Date.now();
          process.kill(pid, "SIGTERM");
        }
      },
    });
    expect(r.code).toBe(143);
    const took = Date.now() - signalledAt;
    expect(took).toBeGreaterThanOrEqual(900);
    expect(took).toBeLessThan(6000);
  });

  it("gives trusted builds a 0600 secrets file and untrusted builds none", async () => {
    const c = repo.commit(
      script(
        [
          'if [ -n "$PETREL_SECRETS" ]; then stat -c "mode=%a" "$PETREL_SECRETS"; . "$PETREL_SECRETS"; printf "token=[%s]\\n" "$API_TOKEN"; echo "$PETREL_SECRETS" > "$SEEN"; else echo "no secrets"; fi',
          'test -e "$NOMAD_TASK_DIR/payload.json" && echo "payload visible" || echo "payload hidden"',
        ].join("\n"),
      ),
      { executable: [".petrel"] },
    );
    const secretsDir = join(dir, "secrets1");
    mkdirSync(secretsDir);
    const seen = join(dir, "seen-secrets");
    const payload = { secrets: { API_TOKEN: 'it\'s a "secret"\nline2', "bad-name": "x" } };
    const trusted = await runExecutor({
      meta: pushMeta(repo, c, { TRUSTED: "true" }),
      cacheDir,
      taskDir: join(dir, "sec1"),
      secretsDir,
      payload,
      env: { SEEN: seen },
    });
    expect(trusted.code).toBe(0);
    expect(trusted.stdout).toContain("mode=600");
    expect(trusted.stdout).toContain(`token=[it's a "secret"\nline2]`);
    expect(trusted.stdout).toContain("payload hidden");
    expect(trusted.stderr).toContain('==> secrets: 1 in $PETREL_SECRETS; skipped "bad-name"');
    const path = readFileSync(seen, "utf8").trim();
    expect(path.startsWith(secretsDir)).toBe(true);
    expect(existsSync(path)).toBe(false);

    const untrusted = await runExecutor({
      meta: pushMeta(repo, c, { TRUSTED: "false" }),
      cacheDir,
      taskDir: join(dir, "sec2"),
      secretsDir: join(dir, "secrets1"),
      payload,
      env: { PETREL_SECRETS: "/inherited/should/not/pass" },
    });
    expect(untrusted.code).toBe(0);
    expect(untrusted.stdout).toContain("no secrets");
    expect(untrusted.stderr).not.toContain("==> secrets");
    expect(readdirSync(secretsDir)).toEqual([]);
  });

  it("keeps trusted and untrusted caches apart and mounts them only inside the build", async () => {
    const home = join(dir, "home");
    mkdirSync(home);
    const c = repo.commit(script('ls "$HOME/.cache/tool" | tr "\\n" " "; echo; echo "$WHO" > "$HOME/.cache/tool/by-$WHO"'), {
      executable: [".petrel"],
    });
    const meta = (trusted: string) => pushMeta(repo, c, { TRUSTED: trusted, CACHES: "tool=~/.cache/tool" });
    const t1 = await runExecutor({ meta: meta("true"), cacheDir, taskDir: join(dir, "ca1"), env: { HOME: home, WHO: "trusted1" } });
    expect(t1.stderr).toContain("==> caches tool=~/.cache/tool (trusted)");
    const u1 = await runExecutor({ meta: meta("false"), cacheDir, taskDir: join(dir, "ca2"), env: { HOME: home, WHO: "fork" } });
    expect(u1.stderr).toContain("untrusted: separate from trusted builds");
    expect(u1.stdout.split("\n")[0]).toBe("");
    const t2 = await runExecutor({ meta: meta("true"), cacheDir, taskDir: join(dir, "ca3"), env: { HOME: home, WHO: "trusted2" } });
    expect(t2.stdout.split("\n")[0]?.trim()).toBe("by-trusted1");
    // The bind mount lived in the build's namespace only: the host path stays an empty directory.
    expect(readdirSync(join(home, ".cache/tool"))).toEqual([]);
  });

  it("hides the cache directory and the deploy key from the build, and uses the key for the fetch only", async () => {
    const bin = join(dir, "fakessh");
    mkdirSync(bin, { recursive: true });
    const log = join(dir, "ssh.log");
    // A stand-in for ssh: records the key file it was given, then serves the repository like sshd would.
    writeFileSync(
      join(bin, "ssh"),
      [
        "#!/bin/sh",
        'key=""',
        'while [ $# -gt 2 ]; do case "$1" in -i) key="$2"; shift 2;; -o|-p) shift 2;; *) shift;; esac; done',
        `{ stat -c "mode=%a" "$key"; cat "$key"; } >> ${log}`,
        'exec sh -c "$2"',
      ].join("\n"),
    );
    chmodSync(join(bin, "ssh"), 0o755);
    const keyText = "-----BEGIN OPENSSH PRIVATE KEY-----\nMARKER-DEPLOY-KEY-0xC0FFEE\n-----END OPENSSH PRIVATE KEY-----";
    const c = repo.commit(
      script(
        [
          'echo "cache entries: $(ls -A "$PETREL_CACHE_DIR" | wc -l)"',
          // The pattern is split so the script itself (in the build directory) does not match it.
          'env | grep -c "MARKER-DEPLOY""-KEY" || true',
          "env | grep -c GIT_SSH_COMMAND || true",
          'grep -rl "MARKER-DEPLOY""-KEY" "$TMPDIR" "$NOMAD_TASK_DIR" "$HOME" 2>/dev/null | wc -l',
        ].join("\n"),
      ),
      { executable: [".petrel"] },
    );
    const tmp = join(dir, "exec-tmp");
    mkdirSync(tmp);
    const r = await runExecutor({
      meta: pushMeta(repo, c, { REPO_URL: `ssh://git.example.test${repo.bare}`, TRUSTED: "true" }),
      cacheDir,
      taskDir: join(dir, "dk"),
      payload: { secrets: {}, deploy_key: keyText },
      env: { PATH: `${bin}:${process.env.PATH}`, TMPDIR: tmp, HOME: join(dir, "home") },
    });
    expect(r.stderr).toContain("(fetched refs/heads/main)");
    expect(r.code).toBe(0);
    expect(r.stdout.split("\n").slice(0, 4)).toEqual(["cache entries: 0", "0", "0", "0"]);
    const used = readFileSync(log, "utf8");
    expect(used).toContain("mode=600");
    expect(used).toContain("MARKER-DEPLOY-KEY-0xC0FFEE");
    expect(readdirSync(tmp)).toEqual([]);
  });

  it("does not let the build unmount what hides the cache directory", async () => {
    const c = repo.commit(
      script(
        [
          'umount "$PETREL_CACHE_DIR" 2>/dev/null; echo "visible after umount: $(ls -A "$PETREL_CACHE_DIR" | wc -l)"',
          'mkdir -p sub && mount -t tmpfs probe sub 2>/dev/null && echo "mount allowed" || echo "mount refused"',
        ].join("\n"),
      ),
      { executable: [".petrel"] },
    );
    const r = await runExecutor({ meta: pushMeta(repo, c), cacheDir, taskDir: join(dir, "um") });
    expect(r.stdout).toContain("visible after umount: 0");
    expect(r.stdout).toContain("mount refused");
    expect(r.code).toBe(0);
  });

  it("fetches a pull request's head from the base repository's refs/pull/<n>/head", async () => {
    const base = sh("git rev-parse HEAD", repo.work).trim();
    const pr = repo.commit(
      { ...script("echo pr build"), "pr.txt": "from a fork\n" },
      { executable: [".petrel"], push: "refs/pull/7/head" },
    );
    sh(`git reset -q --hard ${base}`, repo.work);
    const r = await runExecutor({
      meta: pushMeta(repo, pr, { EVENT: "pull_request", PR: "7", BRANCH: "feature/x" }),
      cacheDir,
      taskDir: join(dir, "pr"),
    });
    expect(r.stderr).toContain("(fetched refs/pull/7/head)");
    expect(r.stdout).toContain("pr build");
    expect(r.code).toBe(0);
  });

  it("prints one clear line and a distinct exit code for each setup failure", async () => {
    const noScript = repo.commit({ ".petrel": null, README: "no script\n" });
    const missing = await runExecutor({ meta: pushMeta(repo, noScript), cacheDir, taskDir: join(dir, "f1") });
    expect(missing.code).toBe(66);
    expect(missing.stderr).toContain("==> error: no build script: neither .petrel nor .albatros at the root of acme/widgets@");

    const unreachable = await runExecutor({
      meta: pushMeta(repo, noScript, { REPO_URL: `file://${dir}/nope.git` }),
      cacheDir,
      taskDir: join(dir, "f2"),
    });
    expect(unreachable.code).toBe(69);
    expect(unreachable.stderr).toMatch(/==> error: repository unreachable: file:\/\/.*nope\.git: /);

    const ghost = "0123456789abcdef0123456789abcdef01234567";
    const notThere = await runExecutor({ meta: pushMeta(repo, ghost), cacheDir, taskDir: join(dir, "f3") });
    expect(notThere.code).toBe(65);
    expect(notThere.stderr).toContain(`==> error: commit ${ghost} not found in file://`);

    const bad = await runExecutor({ meta: pushMeta(repo, "not-a-commit"), cacheDir, taskDir: join(dir, "f4") });
    expect(bad.code).toBe(64);
    expect(bad.stderr).toContain("==> error: invalid dispatch meta: NOMAD_META_COMMIT: ");
    for (const r of [missing, unreachable, notThere, bad]) expect(r.stderr.split("\n").filter((l) => l.includes("error")).length).toBe(1);
  });

  it("runs .albatros when there is no .petrel, and a script without the executable bit through sh", async () => {
    const c = repo.commit({ ".petrel": null, ".albatros": "echo albatros ran with $0\n" });
    const r = await runExecutor({ meta: pushMeta(repo, c), cacheDir, taskDir: join(dir, "alb") });
    expect(r.code).toBe(0);
    expect(r.stderr).toContain("==> run .albatros");
    expect(r.stdout).toContain("albatros ran with ./.albatros");
  });

  it("reports a full disk as such", async () => {
    const c = repo.commit({ ...script("echo never"), "blob.bin": randomText(3 * 1024 * 1024) }, { executable: [".petrel"] });
    const small = join(dir, "small-cache");
    mkdirSync(small);
    // The tmpfs exists only in the namespace this unshare creates around the executor.
    const r = await runExecutor({
      meta: pushMeta(repo, c),
      cacheDir: small,
      taskDir: join(dir, "full"),
      prefix: [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "/bin/sh",
        "-c",
        `mount -t tmpfs -o size=1m full ${small} && exec "$@"`,
        "sh",
      ],
    });
    expect(r.stderr).toMatch(/==> error: disk full: no space left under .*small-cache/);
    expect(r.code).toBe(74);
  });

  it("builds a copy only when copy mode is configured, for a trusted build, leaving the base worktree untouched", async () => {
    const r0 = await runExecutor({ meta: pushMeta(repo, commit), cacheDir, taskDir: join(dir, "cp0") });
    expect(r0.code).toBe(0);
    const [base] = worktreeDirs(cacheDir).filter((p) => p.endsWith(commit));
    const before = treeDigest(base as string);
    // Untrusted builds are refused in copy mode (test/executor/isolation.test.ts performs the attacks).
    const c = await runExecutor({
      meta: pushMeta(repo, commit, { CACHES: "x=~/.x", TRUSTED: "true" }),
      cacheDir,
      taskDir: join(dir, "cp1"),
      env: { PETREL_ISOLATION: "copy", EXIT_WITH: "0" },
    });
    expect(c.code).toBe(0);
    expect(c.stderr).toMatch(/==> copy of the tree at .* \(no mounts possible\)/);
    expect(c.stderr).toContain("==> caches: not mounted without mount namespaces");
    expect(c.stdout).toContain("alpha");
    expect(treeDigest(base as string)).toEqual(before);
  });

  it("holds its worktree, scratch directory and caches against eviction while it runs", async () => {
    const c = repo.commit(script('echo started; while [ ! -e "$RELEASE" ]; do sleep 0.05; done'), { executable: [".petrel"] });
    const release = join(dir, "release-locks");
    let probed: (boolean | undefined)[] = [];
    const r = await runExecutor({
      meta: pushMeta(repo, c, { CACHES: "tool=~/.tool", TRUSTED: "true" }),
      cacheDir,
      taskDir: join(dir, "lk"),
      env: { RELEASE: release, HOME: join(dir, "home-lk") },
      onStdout: (text) => {
        if (!text.includes("started") || probed.length) return;
        probed = [undefined];
        void (async () => {
          const builds = readdirSync(join(cacheDir, "builds")).filter((n) => n.endsWith(".lock"));
          const mine = builds.map((n) => join(cacheDir, "builds", n));
          const wt = worktreeDirs(cacheDir).find((p) => p.endsWith(c)) as string;
          const cachesLock = join(cacheDir, "caches", readdirSync(join(cacheDir, "caches"))[0] as string, "trusted.lock");
          const results: boolean[] = [];
          for (const path of [...mine, `${wt}.lock`, cachesLock]) {
            const l = await lockFile(path, { wait: false });
            results.push(l === undefined);
            l?.release();
          }
          probed = results;
          writeFileSync(release, "");
        })();
      },
    });
    expect(r.code).toBe(0);
    expect(probed.length).toBeGreaterThanOrEqual(3);
    expect(probed.every((busy) => busy === true)).toBe(true);
  });

  it("checks out again when the cached worktree is evicted between the executor's look and the build's lock", async () => {
    const c = repo.commit(script("cat data/a.txt"), { executable: [".petrel"] });
    await runExecutor({ meta: pushMeta(repo, c), cacheDir, taskDir: join(dir, "ev0") });
    const wt = worktreeDirs(cacheDir).find((p) => p.endsWith(c)) as string;
    const bin = join(dir, "evicting-flock");
    const mark = join(dir, "evicted-once");
    mkdirSync(bin, { recursive: true });
    const realFlock = sh("command -v flock").trim();
    // The build's shell takes the worktree lock on descriptor 5: remove the worktree just before, once.
    writeFileSync(
      join(bin, "flock"),
      `#!/bin/sh
if [ "$2" = 5 ] && [ ! -e ${mark} ]; then touch ${mark}; rm -rf ${wt}; fi
exec ${realFlock} "$@"
`,
    );
    chmodSync(join(bin, "flock"), 0o755);
    const r = await runExecutor({
      meta: pushMeta(repo, c),
      cacheDir,
      taskDir: join(dir, "ev1"),
      env: { PATH: `${bin}:${process.env.PATH}` },
    });
    expect(existsSync(mark)).toBe(true);
    expect(r.stderr).toContain("(cached)");
    expect(r.stderr).toContain("(from mirror)");
    expect(r.stdout).toContain("alpha");
    expect(r.code).toBe(0);
  });

  it.skipIf(!userns)("runs in a user namespace when asked to, with the same isolation", async () => {
    const r = await runExecutor({ meta: pushMeta(repo, commit), cacheDir, taskDir: join(dir, "un1"), env: { PETREL_ISOLATION: "userns" } });
    expect(r.stderr).toMatch(/==> overlay at .* \(user \+ mount namespace\)/);
    expect(r.stdout).toContain("alpha");
    expect(r.code).toBe(0);
    expect(readdirSync(join(cacheDir, "builds")).filter((n) => !n.endsWith(".lock"))).toEqual([]);
  });

  it("leaves no mount behind on the host", () => {
    expect(mountPoints(dir)).toEqual(hostMounts);
  });
});

function bigTree(n: number): Record<string, string> {
  const files: Record<string, string> = {};
  for (let i = 0; i < n; i++) files[`big/f-${String(i).padStart(4, "0")}.txt`] = `file ${i}\n`;
  return files;
}

function randomText(bytes: number): string {
  let s = "";
  while (s.length < bytes) s += Math.random().toString(36).slice(2);
  return s.slice(0, bytes);
}
