import { Writable } from "node:stream";
import type { Logger } from "../../src/log.js";
import { createLogger } from "../../src/log.js";

/** A real petrel logger whose JSON lines land in an array, for asserting on what was (not) logged. */
export function captureLogs(level = "trace"): { log: Logger; lines: string[]; text: () => string } {
  const lines: string[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _enc, done) {
      lines.push(...chunk.toString("utf8").split("\n").filter(Boolean));
      done();
    },
  });
  const log = createLogger({ level, destination });
  return { log, lines, text: () => lines.join("\n") };
}
