import { execFileSync, spawn } from "node:child_process";
import { mkdirSync, statSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import { buildSlug, normalizeRepoUrl, redactUrl, repoNameFromUrl, repoSlug } from "../../src/executor/layout.js";
import { lockFile } from "../../src/executor/lock.js";
import { modesFor } from "../../src/executor/sandbox.js";
import { formatSecrets, writeSecretsFile } from "../../src/executor/secrets.js";
import { DEFAULT_EVICTION, formatMs, parseDuration, parseSize, readEvictionSettings } from "../../src/executor/settings.js";
import { cleanup, ROOT, tempDir, waitFor } from "./helpers.js";

const dir = tempDir("units");
afterAll(() => cleanup(dir));

describe("file locks", () => {
  it("lets shared holders coexist and keeps an exclusive locker out until all release", async () => {
    const path = join(dir, "a.lock");
    const s1 = await lockFile(path, { shared: true });
    const s2 = await lockFile(path, { shared: true, wait: false });
    expect(s1).toBeDefined();
    expect(s2).toBeDefined();
    expect(await lockFile(path, { wait: false })).toBeUndefined();
    s1?.release();
    expect(await lockFile(path, { wait: false })).toBeUndefined();
    s2?.release();
    const x = await lockFile(path, { wait: false });
    expect(x).toBeDefined();
    expect(await lockFile(path, { shared: true, wait: false })).toBeUndefined();
    x?.release();
  });

  it("makes a waiting locker proceed when the holder releases", async () => {
    const path = join(dir, "b.lock");
    const first = await lockFile(path);
    let got = false;
    const second = lockFile(path).then((l) => {
      got = true;
      return l;
    });
    await new Promise((r) => setTimeout(r, 100));
    expect(got).toBe(false);
    first?.release();
    (await second)?.release();
    expect(got).toBe(true);
  });

  it("frees the lock when the holding process is killed", async () => {
    const path = join(dir, "c.lock");
    const lockJs = join(ROOT, "dist/executor/lock.js");
    const holder = spawn(
      process.execPath,
      [
        "--input-type=module",
        "-e",
        `const { lockFile } = await import(${JSON.stringify(lockJs)}); await lockFile(${JSON.stringify(path)}); console.log("held"); setInterval(() => {}, 1000);`,
      ],
      { stdio: ["ignore", "pipe", "inherit"] },
    );
    let out = "";
    holder.stdout.on("data", (d: Buffer) => (out += d.toString()));
    expect(await waitFor(() => out.includes("held"), 10_000)).toBe(true);
    expect(await lockFile(path, { wait: false })).toBeUndefined();
    holder.kill("SIGKILL");
    await new Promise((r) => holder.on("exit", r));
    const after = await lockFile(path, { wait: false });
    expect(after).toBeDefined();
    after?.release();
  });

  it("does not hand out a lock on a file that was deleted and recreated meanwhile", async () => {
    const path = join(dir, "d.lock");
    const holder = await lockFile(path);
    // Opens the current file now and waits for its lock.
    const waiting = lockFile(path);
    await new Promise((r) => setTimeout(r, 50));
    // The holder deletes the file while holding it (as eviction does); then someone locks the path anew.
    unlinkSync(path);
    holder?.release();
    const fresh = await lockFile(path, { wait: false });
    const w = await Promise.race([waiting, new Promise((r) => setTimeout(() => r("blocked"), 300))]);
    // The waiter got the deleted file's lock but must not count it: exactly one of the two holds the path.
    expect([fresh !== undefined, w !== "blocked"].filter(Boolean)).toHaveLength(1);
    expect(await lockFile(path, { wait: false })).toBeUndefined();
    fresh?.release();
    (await waiting)?.release();
  });

  it("gives up waiting when aborted", async () => {
    const path = join(dir, "e.lock");
    const holder = await lockFile(path);
    const ac = new AbortController();
    const waiting = lockFile(path, { signal: ac.signal });
    setTimeout(() => ac.abort(), 50);
    await expect(waiting).rejects.toThrow();
    holder?.release();
  });
});

describe("secrets file", () => {
  it("round-trips any value through a POSIX shell", () => {
    fc.assert(
      fc.property(
        fc.string({ unit: "grapheme" }).filter((s) => !s.includes("\0")),
        (value) => {
          const { text } = formatSecrets({ VALUE: value });
          const file = join(dir, "s.sh");
          writeFileSync(file, text);
          const out = execFileSync("/bin/sh", ["-c", `. "$1"; printf %s "$VALUE"`, "sh", file], { encoding: "utf8" });
          expect(out).toBe(value);
        },
      ),
      { numRuns: 60 },
    );
  });

  it("skips names a shell cannot export and keeps the others", () => {
    const { text, skipped } = formatSecrets({ "bad-name": "x", GOOD: "y", "1X": "z", _ok: "w" });
    expect(skipped.sort()).toEqual(["1X", "bad-name"]);
    expect(text).toContain("export GOOD='y'");
    expect(text).toContain("export _ok='w'");
    expect(text).not.toContain("bad-name");
  });

  it("writes the file with mode 0600, also over an older file", async () => {
    const secretsDir = join(dir, "secrets");
    mkdirSync(secretsDir);
    writeFileSync(join(secretsDir, "petrel-secrets-b.sh"), "old", { mode: 0o644 });
    const f = await writeSecretsFile({ A: "1" }, secretsDir, "b");
    expect(statSync(f.path).mode & 0o777).toBe(0o600);
    const own = await writeSecretsFile({ A: "1" }, undefined, "b");
    expect(own.ownDir).toBeDefined();
    expect(statSync(own.ownDir as string).mode & 0o777).toBe(0o700);
    expect(statSync(own.path).mode & 0o777).toBe(0o600);
    cleanup(own.ownDir as string);
  });
});

describe("settings", () => {
  it("parses durations and sizes", () => {
    expect(parseDuration("90")).toBe(90_000);
    expect(parseDuration("15m")).toBe(900_000);
    expect(parseDuration("7d")).toBe(7 * 86_400_000);
    expect(parseDuration("250ms")).toBe(250);
    expect(parseDuration("soon")).toBeUndefined();
    expect(parseSize("512M")).toBe(512 * 1024 ** 2);
    expect(parseSize("20GiB")).toBe(20 * 1024 ** 3);
    expect(parseSize("4096")).toBe(4096);
    expect(parseSize("lots")).toBeUndefined();
    expect(formatMs(12.4)).toBe("12 ms");
    expect(formatMs(1234)).toBe("1.23 s");
  });

  it("reads eviction variables and names the malformed one", () => {
    const ok = readEvictionSettings({ PETREL_EVICT_WORKTREES_SIZE: "1G", PETREL_EVICT_CACHES_AGE: "2d" });
    expect(ok).toEqual({ settings: { ...DEFAULT_EVICTION, worktreesMaxBytes: 1024 ** 3, cachesMaxAgeMs: 2 * 86_400_000 } });
    expect(readEvictionSettings({ PETREL_EVICT_MIRRORS_AGE: "forever" })).toEqual({
      problem: { variable: "PETREL_EVICT_MIRRORS_AGE", value: "forever", expected: "a duration such as 30m, 12h or 7d" },
    });
  });
});

describe("isolation modes", () => {
  it("never falls back to a copy on its own; only petrel run may, and an explicit setting is taken as it is", () => {
    expect(modesFor("auto", 0)).toEqual(["mount"]);
    expect(modesFor("auto", 1000)).toEqual(["userns"]);
    expect(modesFor("auto", 0, true)).toEqual(["mount", "copy"]);
    expect(modesFor("auto", 1000, true)).toEqual(["userns", "copy"]);
    expect(modesFor("mount", 0, true)).toEqual(["mount"]);
    expect(modesFor("copy", 0)).toEqual(["copy"]);
  });
});

describe("cache layout names", () => {
  it("derives a readable directory name per repository, the same for every URL form of it", () => {
    expect(repoSlug("https://git.example.test/acme/widgets.git")).toBe("git.example.test+acme+widgets");
    expect(repoSlug("ssh://git@git.example.test/acme/widgets")).toBe("git.example.test+acme+widgets");
    expect(repoSlug("git@git.example.test:acme/widgets.git")).toBe("git.example.test+acme+widgets");
    expect(repoSlug("https://user:token@GIT.example.test/acme/widgets/")).toBe("git.example.test+acme+widgets");
    expect(repoSlug("https://git.example.test:3000/acme/widgets")).toBe("git.example.test%3a3000+acme+widgets");
    expect(repoSlug("file:///srv/git/w.git")).toBe("+srv+git+w");
  });

  it("never gives two repositories the same directory, and only safe names", () => {
    const url = fc.oneof(
      fc.string(),
      fc
        .tuple(
          fc.constantFrom("https://", "ssh://git@", "file://", ""),
          fc.array(fc.stringMatching(/^[A-Za-z0-9._%+~:@ -]{0,12}$/), { maxLength: 4 }),
        )
        .map(([scheme, parts]) => `${scheme}${parts.join("/")}`),
    );
    fc.assert(
      fc.property(url, url, (a, b) => {
        const sa = repoSlug(a);
        expect(sa).toMatch(/^[A-Za-z0-9._%+~-]+$/);
        expect([".", ".."]).not.toContain(sa);
        if (normalizeRepoUrl(a) !== normalizeRepoUrl(b)) expect(repoSlug(b)).not.toBe(sa);
      }),
      { numRuns: 3000 },
    );
    const long = `https://git.example.test/${"x".repeat(300)}`;
    expect(repoSlug(long).length).toBeLessThanOrEqual(120);
    expect(repoSlug(long)).not.toBe(repoSlug(`${long}y`));
  });

  it("removes credentials from URLs and names builds safely", () => {
    expect(redactUrl("https://user:tok@git.example.test/a/b.git")).toBe("https://git.example.test/a/b.git");
    expect(redactUrl("git@git.example.test:a/b.git")).toBe("git@git.example.test:a/b.git");
    expect(repoNameFromUrl("ssh://git@git.example.test:2222/acme/widgets.git")).toBe("acme/widgets");
    expect(buildSlug("builder/dispatch-1700000000-1a2b3c4d")).toBe("builder_dispatch-1700000000-1a2b3c4d");
    expect(buildSlug("../..")).not.toContain("/");
  });
});
