import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { CLIENT_SCRIPT } from "./client-script.js";
import { STYLESHEET } from "./stylesheet.js";

/** A file the pages load, with its validator. */
export interface Asset {
  body: string;
  type: string;
  etag: string;
  /** The path with a version query: cached for a year, since the version changes with the content. */
  href: string;
}

function asset(path: string, type: string, body: string): Asset {
  const hash = createHash("sha256").update(body).digest("base64url").slice(0, 16);
  return { body, type, etag: `"${hash}"`, href: `${path}?v=${hash}` };
}

/** The stylesheet and the script (ansi_up's converter, unchanged but for its `export`, then the pages' code). */
export function createAssets(): { css: Asset; js: Asset } {
  const require = createRequire(import.meta.url);
  const ansiUp = readFileSync(require.resolve("ansi_up"), "utf8")
    .replace(/^export class AnsiUp\b/m, "class AnsiUp")
    .replace(/^\/\/# sourceMappingURL=.*$/m, "");
  if (!ansiUp.includes("class AnsiUp")) throw new Error("ansi_up's module no longer declares `export class AnsiUp`");
  return {
    css: asset("/assets/petrel.css", "text/css; charset=utf-8", STYLESHEET),
    js: asset("/assets/petrel.js", "text/javascript; charset=utf-8", `(function () {\n${ansiUp}\n${CLIENT_SCRIPT}\n})();\n`),
  };
}
