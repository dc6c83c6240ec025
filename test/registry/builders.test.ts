import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { createFileRegistry } from "../../src/registry/file.js";
import { buildersOf, RepoConfig } from "../../src/registry/schema.js";
import { captureLogs } from "../helpers/log-capture.js";

describe("builders of the registry", () => {
  it("are the default builder plus every flavor's builder", () => {
    const entries = [
      { key: "h/a/b", config: RepoConfig.parse({ hook: { secret: "s" } }), secrets: {} },
      {
        key: "h/a/c",
        config: RepoConfig.parse({ hook: { secret: "s" }, flavors: { nix: { builder: "builder-nix" }, arm: { builder: "builder-arm" } } }),
        secrets: {},
      },
    ];
    expect([...buildersOf(entries, "builder")].sort()).toEqual(["builder", "builder-arm", "builder-nix"]);
  });

  it("follow the YAML file synchronously", async () => {
    const dir = mkdtempSync(join(tmpdir(), "petrel-builders-"));
    const path = join(dir, "petrel.yaml");
    writeFileSync(path, "repos:\n  h.test/a/b:\n    hook: { secret: s }\n    flavors: { nix: { builder: builder-nix } }\n");
    const registry = await createFileRegistry({ path, defaultBuilder: "builder", log: captureLogs().log });
    try {
      expect(registry.builders().has("builder-nix")).toBe(true);
      expect(registry.builders().has("payroll")).toBe(false);
    } finally {
      await registry.close();
    }
  });
});
