import type { DestinationStream, Logger } from "pino";
import pino from "pino";
import pretty from "pino-pretty";

export type { Logger } from "pino";

/**
 * Paths pino blanks before a line is written. Secrets are also kept out of log calls in the first place;
 * this is the net under that rule, for a field someone adds later.
 */
export const REDACT_PATHS = [
  "token",
  "secret",
  "secrets",
  "deploy_key",
  "deployKey",
  "inject",
  "signature",
  "authorization",
  "password",
  "payload",
  "*.token",
  "*.secret",
  "*.secrets",
  "*.deploy_key",
  "*.deployKey",
  "*.inject",
  "*.signature",
  "*.authorization",
  "*.password",
  "*.payload",
  "headers.authorization",
  'headers["x-gitea-signature"]',
  'headers["x-forgejo-signature"]',
  'headers["x-hub-signature-256"]',
  'headers["x-hub-signature"]',
  'headers["x-nomad-token"]',
  'headers["x-consul-token"]',
  "req.headers.authorization",
];

export interface LoggerOptions {
  level: string;
  /** Where lines go; stdout when unset (tests pass a stream). */
  destination?: DestinationStream;
  /** Human-readable lines instead of JSON: for a person at a terminal (main.ts passes stdout.isTTY). */
  pretty?: boolean;
}

/** The root logger: JSON lines (or pretty ones for a terminal), redacted. */
export function createLogger(options: LoggerOptions): Logger {
  const settings = {
    level: options.level,
    base: { service: "petrel" },
    redact: { paths: REDACT_PATHS, censor: "[redacted]" },
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  if (options.pretty) {
    // In-process and synchronous (no worker thread): a terminal reader wants each line as it happens.
    const out = pretty({
      colorize: options.destination === undefined && process.stdout.isTTY === true,
      ignore: "pid,hostname,service",
      translateTime: "SYS:HH:MM:ss.l",
      sync: true,
      ...(options.destination === undefined ? {} : { destination: options.destination }),
    });
    return pino(settings, out);
  }
  return pino(settings, options.destination ?? pino.destination({ sync: false }));
}
