/** `npm run bench`: every benchmark in turn; exits non-zero when a target is missed. */
import { fileURLToPath } from "node:url";

type Judge = (result: unknown) => boolean | undefined;

/** Each benchmark, and how its result says whether its targets were met (undefined: it says so itself). */
const benches: Array<[string, string, Judge]> = [
  ["hook", "./hook.ts", (r) => (typeof r === "boolean" ? r : undefined)],
  [
    "executor",
    "./executor.ts",
    (r) => {
      const e = r as { warmMinusFloorMs?: number; warmOverCold?: number };
      return e.warmMinusFloorMs === undefined ? undefined : e.warmMinusFloorMs <= 50 && (e.warmOverCold ?? 1) <= 0.25;
    },
  ],
  ["logs", "./logs.ts", (r) => (typeof r === "boolean" ? r : undefined)],
  ["archive", "./archive.ts", (r) => (typeof r === "boolean" ? r : undefined)],
  ["sse", "./sse.ts", (r) => (typeof r === "boolean" ? r : undefined)],
  ["pages", "./pages.ts", (r) => (typeof r === "boolean" ? r : undefined)],
  ["replicas", "./replicas.ts", (r) => (typeof r === "boolean" ? r : undefined)],
];

const only = process.argv.slice(2);
let allMet = true;
for (const [name, path, judge] of benches) {
  if (only.length > 0 && !only.includes(name)) continue;
  const mod = (await import(fileURLToPath(new URL(path, import.meta.url)))) as { main: () => Promise<unknown> };
  if (judge(await mod.main()) === false) allMet = false;
}
process.stdout.write(`\n${allMet ? "all targets met" : "some targets missed (see MISS above)"}\n`);
process.exit(allMet ? 0 : 1);
