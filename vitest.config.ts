import { defineConfig } from "vitest/config";
import { BaseSequencer, type TestSpecification } from "vitest/node";

/**
 * The files that take longest (a fresh clone's `npm ci`, the browser, replicas waiting out lock TTLs), started
 * first. Without this, a clean checkout (no timing cache) orders files by size, and a small but slow file can
 * start last and run alone while the other worker idles.
 */
const SLOW_FIRST = [
  "test/e2e/fresh-clone.test.ts",
  "test/pages/browser.test.ts",
  "test/archive/reads.test.ts",
  "test/cluster/replicas.test.ts",
  "test/cluster/election.test.ts",
  "test/executor/executor.test.ts",
  "test/policies/cluster.test.ts",
];

class SlowFirstSequencer extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const rank = (spec: TestSpecification) => {
      const i = SLOW_FIRST.findIndex((path) => spec.moduleId.endsWith(path));
      return i === -1 ? SLOW_FIRST.length : i;
    };
    // Array.prototype.sort is stable: the rest keep the base order (timing cache, else size).
    return (await super.sort(files)).sort((a, b) => rank(a) - rank(b));
  }
}

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    globalSetup: ["test/global-setup.ts"],
    testTimeout: 20_000,
    hookTimeout: 20_000,
    // Tests start real servers, git repositories and child processes on CI's two cores. Many of them wait (lock
    // TTLs, retry budgets, a build's sleep) rather than compute, so a third worker fills the cores' idle time:
    // 114 s with two workers, 81 s with three, on this machine.
    maxWorkers: Number(process.env.PETREL_TEST_WORKERS ?? 3),
    // One module graph per worker, not per file: importing hono, zod and the app anew for each of ~80 files cost
    // more than half of the suite's CPU time. Tests keep no module-level state, so files cannot see each other.
    isolate: false,
    sequence: { sequencer: SlowFirstSequencer },
  },
});
