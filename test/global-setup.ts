import { spawnSync } from "node:child_process";
import { readdirSync, statSync, utimesSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

/** The newest modification time under `dir` (0 when it does not exist). */
function newest(dir: string): number {
  let latest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) latest = Math.max(latest, statSync(join(entry.parentPath, entry.name)).mtimeMs);
  }
  return latest;
}

/**
 * Builds dist/ once, so tests that spawn the `petrel` CLI run the compiled program as users do. `npm ci` has
 * already built it (the `prepare` script), and the build is incremental (`dist/.tsbuildinfo`), so this compiles
 * only when a source or compiler setting is newer than the last build. Type errors do not stop the emit
 * (`npm test` type-checks on its own first), so this only fails when nothing compiles.
 */
export default function setup(): void {
  const root = fileURLToPath(new URL("..", import.meta.url));
  let built = 0;
  try {
    built = statSync(join(root, "dist/.tsbuildinfo")).mtimeMs;
  } catch {}
  const inputs = Math.max(
    newest(join(root, "src")),
    ...["tsconfig.json", "tsconfig.build.json", "package-lock.json"].map((f) => statSync(join(root, f)).mtimeMs),
  );
  if (built > inputs) return;
  const result = spawnSync(process.execPath, [`${root}/node_modules/typescript/bin/tsc`, "-p", "tsconfig.build.json"], {
    cwd: root,
    encoding: "utf8",
  });
  if (result.status !== 0) {
    process.stderr.write(`global setup: tsc reported errors (dist/ emitted anyway):\n${result.stdout.slice(0, 2000)}\n`);
    return;
  }
  // tsc leaves its build info alone when a touched source compiles to the same output; mark the check as done.
  const now = new Date();
  utimesSync(join(root, "dist/.tsbuildinfo"), now, now);
}
