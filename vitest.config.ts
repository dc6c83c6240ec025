import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    globalSetup: ["test/global-setup.ts"],
    testTimeout: 20_000,
    hookTimeout: 20_000,
    // Tests start real servers, git repositories and child processes; two cores are all CI has.
    maxWorkers: Number(process.env.PETREL_TEST_WORKERS ?? 2),
    // One module graph per worker, not per file: importing hono, zod and the app anew for each of ~80 files cost
    // more than half of the suite's CPU time. Tests keep no module-level state, so files cannot see each other.
    isolate: false,
  },
});
