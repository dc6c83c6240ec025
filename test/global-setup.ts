import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";

/**
 * Builds dist/ once, so tests that spawn the `petrel` CLI run the compiled program as users do. Type errors
 * do not stop the emit (`npm test` type-checks on its own first), so this only fails when nothing compiles.
 */
export default function setup(): void {
  const root = fileURLToPath(new URL("..", import.meta.url));
  const result = spawnSync(process.execPath, [`${root}/node_modules/typescript/bin/tsc`, "-p", "tsconfig.build.json"], {
    cwd: root,
    encoding: "utf8",
  });
  if (result.status !== 0) {
    process.stderr.write(`global setup: tsc reported errors (dist/ emitted anyway):\n${result.stdout.slice(0, 2000)}\n`);
  }
}
