import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import type { HeaderReader } from "../../src/gitea/signature.js";

const DIR = fileURLToPath(new URL("../fixtures/gitea/", import.meta.url));

/** The exact bytes of a webhook fixture in test/fixtures/gitea. */
export function fixtureBytes(name: string): Buffer {
  return readFileSync(`${DIR}${name}`);
}

/** A fixture parsed, as the hook route hands it to parseDelivery. */
export function fixtureJson(name: string): unknown {
  return JSON.parse(fixtureBytes(name).toString("utf8"));
}

/** A case-insensitive header reader over a plain record, like Hono's `c.req.header(name)`. */
export function headerReader(headers: Record<string, string | undefined>): HeaderReader {
  const lower = new Map(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));
  return (name) => lower.get(name.toLowerCase());
}
