import { readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { ROOT } from "./helpers.js";

/** Specifiers of the static imports (not `import()`) of a compiled ES module. */
function staticImports(file: string): string[] {
  const text = readFileSync(file, "utf8");
  const out: string[] = [];
  for (const m of text.matchAll(/^\s*(?:import|export)\s+(?:[^"'();]*?\sfrom\s+)?["']([^"']+)["'];?\s*$/gm)) out.push(m[1] as string);
  return out;
}

/** Every module loaded eagerly from `entry`: the closure over static imports. */
function eagerGraph(entry: string): { files: string[]; external: string[] } {
  const seen = new Set<string>();
  const external = new Set<string>();
  const visit = (file: string) => {
    if (seen.has(file)) return;
    seen.add(file);
    for (const spec of staticImports(file)) {
      if (spec.startsWith(".")) visit(resolve(dirname(file), spec));
      else external.add(spec);
    }
  };
  visit(entry);
  return { files: [...seen].map((f) => f.slice(ROOT.length)), external: [...external].sort() };
}

describe("executor start-up", () => {
  it("loads only Node built-ins and its own modules before the build starts", () => {
    const { files, external } = eagerGraph(join(ROOT, "dist/cli/executor.js"));
    expect(
      external.every((s) => s.startsWith("node:")),
      external.join(", "),
    ).toBe(true);
    // The dispatch contract is checked without zod; git and eviction are loaded on demand only (a cold
    // checkout, after the build).
    expect(files).toContain("dist/contract/dispatch.js");
    // dist/errors.js may load: the command line's usage errors share petrel's error table, a module that imports
    // nothing. The executor's own failures carry exit codes only (src/executor/errors.ts imports no errors.js).
    expect(readFileSync(join(ROOT, "dist/executor/errors.js"), "utf8")).not.toMatch(/from "\.\.\/errors\.js"/);
    expect(files).not.toContain("dist/executor/materialize.js");
    expect(files).not.toContain("dist/executor/evict.js");
    expect(external).not.toContain("node:crypto");
    expect(files).toContain("dist/executor/sandbox.js");
  });

  it("starts from bin/petrel.js, whose CLI loads nothing but Node built-ins before the command", () => {
    expect(staticImports(join(ROOT, "bin/petrel.js"))).toEqual(["../dist/cli/main.js"]);
    const { files, external } = eagerGraph(join(ROOT, "dist/cli/main.js"));
    expect(files).toEqual(["dist/cli/main.js"]);
    expect(
      external.every((s) => s.startsWith("node:")),
      external.join(", "),
    ).toBe(true);
  });

  it("keeps `petrel run` as light", () => {
    const { external } = eagerGraph(join(ROOT, "dist/cli/run.js"));
    expect(
      external.every((s) => s.startsWith("node:")),
      external.join(", "),
    ).toBe(true);
    expect(external).not.toContain("node:crypto");
  });
});
