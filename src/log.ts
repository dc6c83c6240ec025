import pino from "pino";
import type { DestinationStream, Logger } from "pino";

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
  "signature",
  "authorization",
  "password",
  "payload",
  "*.token",
  "*.secret",
  "*.secrets",
  "*.deploy_key",
  "*.deployKey",
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

/** The root logger: JSON lines, redacted, to stdout unless a destination is given (tests pass a stream). */
export function createLogger(options: { level: string; destination?: DestinationStream }): Logger {
  return pino(
    {
      level: options.level,
      base: { service: "petrel" },
      redact: { paths: REDACT_PATHS, censor: "[redacted]" },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    options.destination ?? pino.destination({ sync: false }),
  );
}
