/** `npm run bench`: every benchmark in turn; exits non-zero when a target is missed. */
import { fileURLToPath } from "node:url";

const benches: Array<[string, string]> = [
  ["hook", "./hook.ts"],
  ["executor", "./executor.ts"],
  ["logs", "./logs.ts"],
];

const only = process.argv.slice(2);
let allMet = true;
for (const [name, path] of benches) {
  if (only.length > 0 && !only.includes(name)) continue;
  const mod = (await import(fileURLToPath(new URL(path, import.meta.url)))) as { main: () => Promise<boolean | void> };
  const met = await mod.main();
  if (met === false) allMet = false;
}
process.stdout.write(`\n${allMet ? "all targets met" : "some targets missed (see MISS above)"}\n`);
process.exit(allMet ? 0 : 1);
