import { existsSync, readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";
import { describe, expect, it } from "vitest";

const SRC = fileURLToPath(new URL("../src", import.meta.url));

interface Module {
  /** Path relative to src/, e.g. `builds/plan.ts`. */
  path: string;
  /**
   * Modules this one imports or re-exports from, relative to src/: type-only imports count (they tie the
   * modules' meanings together), and so do `import("./x.js")` calls (a lazy load is still a dependency).
   */
  imports: string[];
  /** Types, interfaces, classes, functions, enums and constants this module declares and exports (not re-exports). */
  declares: string[];
}

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const full = join(dir, e.name);
    if (e.isDirectory()) return sourceFiles(full);
    return /\.tsx?$/.test(e.name) && !e.name.endsWith(".d.ts") ? [full] : [];
  });
}

function isExported(node: ts.Node): boolean {
  return ts.canHaveModifiers(node) && (ts.getModifiers(node) ?? []).some((m) => m.kind === ts.SyntaxKind.ExportKeyword);
}

/** The relative imports (static, type-only, re-exports and `import()` of a literal) and exported declarations. */
function readModule(file: string, text: string = readFileSync(file, "utf8")): Module {
  const source = ts.createSourceFile(file, text, ts.ScriptTarget.ES2022, true);
  const specs: string[] = [];
  const declares: string[] = [];
  const visit = (node: ts.Node) => {
    if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword) {
      const [arg] = node.arguments;
      if (arg && ts.isStringLiteralLike(arg)) specs.push(arg.text);
    }
    ts.forEachChild(node, visit);
  };
  for (const stmt of source.statements) {
    if (
      (ts.isImportDeclaration(stmt) || ts.isExportDeclaration(stmt)) &&
      stmt.moduleSpecifier &&
      ts.isStringLiteral(stmt.moduleSpecifier)
    ) {
      specs.push(stmt.moduleSpecifier.text);
      continue;
    }
    visit(stmt);
    if (!isExported(stmt)) continue;
    if (
      (ts.isInterfaceDeclaration(stmt) ||
        ts.isTypeAliasDeclaration(stmt) ||
        ts.isClassDeclaration(stmt) ||
        ts.isFunctionDeclaration(stmt) ||
        ts.isEnumDeclaration(stmt)) &&
      stmt.name
    ) {
      declares.push(stmt.name.text);
    }
    if (ts.isVariableStatement(stmt)) {
      for (const d of stmt.declarationList.declarations) if (ts.isIdentifier(d.name)) declares.push(d.name.text);
    }
  }
  const imports = specs
    .filter((spec) => spec.startsWith("."))
    .map((spec) => relative(SRC, resolve(dirname(file), spec.replace(/\.js$/, ".ts"))))
    // A page module (`x.tsx`) is imported as `x.js` like any other.
    .map((path) => (existsSync(join(SRC, path)) || !existsSync(join(SRC, `${path}x`)) ? path : `${path}x`));
  return { path: relative(SRC, file), imports: [...new Set(imports)], declares: [...new Set(declares)] };
}

function readGraph(): Map<string, Module> {
  return new Map(
    sourceFiles(SRC)
      .map((f) => readModule(f))
      .map((m) => [m.path, m]),
  );
}

/** Every elementary cycle's first sighting, as `a → b → … → a`, found by depth-first search. */
function findCycles(graph: Map<string, Module>): string[] {
  const cycles = new Set<string>();
  const state = new Map<string, "open" | "done">();
  const stack: string[] = [];
  const visit = (path: string) => {
    state.set(path, "open");
    stack.push(path);
    for (const next of graph.get(path)?.imports ?? []) {
      if (!graph.has(next)) continue;
      if (state.get(next) === "open") {
        cycles.add([...stack.slice(stack.indexOf(next)), next].join(" → "));
      } else if (state.get(next) === undefined) visit(next);
    }
    stack.pop();
    state.set(path, "done");
  };
  for (const path of [...graph.keys()].sort()) if (!state.has(path)) visit(path);
  return [...cycles];
}

describe("the module structure of src/", () => {
  const graph = readGraph();

  it("reads the whole tree and resolves every relative import to a file in it", () => {
    expect(graph.size).toBeGreaterThan(40);
    const dangling = [...graph.values()].flatMap((m) => m.imports.filter((i) => !graph.has(i)).map((i) => `${m.path} → ${i}`));
    expect(dangling).toEqual([]);
  });

  it("has no import cycles (type-only imports count)", () => {
    const cycles = findCycles(graph);
    expect(cycles, `import cycles:\n${cycles.join("\n")}`).toEqual([]);
  });

  it("gives no two exported types, interfaces, classes, functions or constants the same name (re-exports are fine)", () => {
    const owners = new Map<string, string[]>();
    for (const m of graph.values()) for (const name of m.declares) owners.set(name, [...(owners.get(name) ?? []), m.path]);
    const clashes = [...owners].filter(([, paths]) => paths.length > 1).map(([name, paths]) => `${name}: ${paths.sort().join(", ")}`);
    expect(clashes, `exported twice:\n${clashes.join("\n")}`).toEqual([]);
  });
});

describe("the checks of the architecture test itself", () => {
  it("reads type-only imports, re-exports and lazy imports as edges, and only declarations as exports", () => {
    const m = readModule(
      join(SRC, "x", "a.ts"),
      [
        'import type { T } from "./t.js";',
        'import { u } from "../u.js";',
        'export { V } from "./v.js";',
        'import "node:fs";',
        'export async function load() { return import("./lazy.js"); }',
        "export interface Shape {}",
        "export const Schema = 1;",
        "export type Schema = number;",
        "export let counter = 0, other = 1;",
        "const hidden = 2;",
        "export type Alias = string;",
        "class Hidden {}",
        "export { Hidden };",
      ].join("\n"),
    );
    expect(m.imports.sort()).toEqual(["u.ts", "x/lazy.ts", "x/t.ts", "x/v.ts"]);
    expect(m.declares.sort()).toEqual(["Alias", "Schema", "Shape", "counter", "load", "other"]);
  });

  it("finds a cycle and names it, and none where there is none", () => {
    const mod = (path: string, imports: string[]): [string, Module] => [path, { path, imports, declares: [] }];
    const graph = new Map([mod("a.ts", ["b.ts"]), mod("b.ts", ["c.ts"]), mod("c.ts", ["a.ts"]), mod("d.ts", ["a.ts"])]);
    expect(findCycles(graph)).toEqual(["a.ts → b.ts → c.ts → a.ts"]);
    expect(findCycles(new Map([mod("a.ts", ["b.ts"]), mod("b.ts", []), mod("c.ts", ["b.ts"])]))).toEqual([]);
  });
});
