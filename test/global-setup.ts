import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";

/**
 * Builds dist/, so tests that spawn the `petrel` CLI run the compiled program as users do. `npm ci` has already
 * built it (the `prepare` script) and `tsc -b` rebuilds only what changed since (under a second when nothing
 * did). The build does not check types (`npm test` does that on its own first), so this only fails when nothing
 * compiles.
 */
export default function setup(): void {
  const root = fileURLToPath(new URL("..", import.meta.url));
  const result = spawnSync(process.execPath, [`${root}/node_modules/typescript/bin/tsc`, "-b", "tsconfig.build.json"], {
    cwd: root,
    encoding: "utf8",
  });
  if (result.status !== 0)
    process.stderr.write(`global setup: tsc -b failed:\n${result.stdout.slice(0, 2000)}${result.stderr.slice(0, 2000)}\n`);
}
