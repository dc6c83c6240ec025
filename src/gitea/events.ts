import { z } from "zod";
import { truncate } from "../errors.js";
import { describeIssues } from "../registry/schema.js";
import type { HeaderReader } from "./signature.js";

const SHA = z.string().regex(/^(?:[0-9a-f]{40}|[0-9a-f]{64})$/, "must be a 40 or 64 character lower-case hex id");

/** A repository as webhook payloads carry it; only the fields petrel reads. */
export const Repository = z.object({
  html_url: z.string().min(1),
  full_name: z.string().min(1),
  private: z.boolean(),
  clone_url: z.string().min(1),
  ssh_url: z.string().optional(),
});
export type Repository = z.infer<typeof Repository>;

export const User = z.object({ login: z.string().min(1) });
export type User = z.infer<typeof User>;

/** What every delivery petrel accepts carries: the repository it concerns (selects the registry entry) and who acted. */
export const Envelope = z.object({ repository: Repository, sender: User });
export type Envelope = z.infer<typeof Envelope>;

/**
 * `push`: `ref` is the full ref name; `after` is all zeros when a tag was deleted. For an annotated tag `after`
 * is the tag object while `head_commit` is the commit it points to (Gitea services/repository/push.go).
 */
export const PushEvent = Envelope.extend({
  ref: z.string().min(1),
  after: SHA,
  head_commit: z
    .object({ id: SHA, message: z.string().optional() })
    .nullish()
    .transform((c) => c ?? null),
});
export type PushEvent = z.infer<typeof PushEvent>;

const PrRepository = z.object({
  full_name: z.string().min(1),
  clone_url: z.string().min(1),
  html_url: z.string().optional(),
  ssh_url: z.string().optional(),
});

/** `pull_request`: `repository` is the base repository; `head.repo` is null once the head repository is deleted. */
export const PullRequestEvent = Envelope.extend({
  action: z.string().min(1),
  number: z.number().int().positive(),
  pull_request: z.object({
    merged: z.boolean().optional(),
    title: z.string().optional(),
    head: z.object({
      ref: z.string(),
      sha: SHA,
      repo: PrRepository.nullish().transform((r) => r ?? null),
    }),
    base: z.object({ ref: z.string(), repo: PrRepository }),
  }),
});
export type PullRequestEvent = z.infer<typeof PullRequestEvent>;

/** A parsed delivery: the event name comes from the event header, the body is validated for that event. */
export type Delivery =
  | { kind: "push"; event: "push"; deliveryId?: string; payload: PushEvent }
  | { kind: "pull_request"; event: "pull_request"; deliveryId?: string; payload: PullRequestEvent }
  | { kind: "other"; event: string; deliveryId?: string; payload: Envelope };

export type ParsedDelivery = Delivery | { kind: "malformed"; message: string };

const EVENT_HEADERS = ["X-Gitea-Event", "X-Forgejo-Event", "X-GitHub-Event"] as const;
const DELIVERY_HEADERS = ["X-Gitea-Delivery", "X-Forgejo-Delivery", "X-GitHub-Delivery"] as const;
const EVENT_NAME = /^[a-z0-9_.-]{1,64}$/;

/** The event name of a delivery: `X-Gitea-Event`, else `X-Forgejo-Event`, else `X-GitHub-Event`, lower-cased. */
export function eventName(headers: HeaderReader): string | undefined {
  for (const name of EVENT_HEADERS) {
    const value = headers(name)?.trim();
    if (value) return value.toLowerCase();
  }
  return undefined;
}

/**
 * Parses a delivery from its headers and its JSON body (already `JSON.parse`d). Unknown keys are ignored; a body
 * that lacks a field petrel needs is `malformed` with a message naming the field. Never throws.
 */
export function parseDelivery(headers: HeaderReader, json: unknown): ParsedDelivery {
  try {
    return parse(headers, json);
  } catch {
    return { kind: "malformed", message: "delivery could not be parsed" };
  }
}

function parse(headers: HeaderReader, body: unknown): ParsedDelivery {
  const event = eventName(headers);
  if (event === undefined) {
    return { kind: "malformed", message: `no event header (${EVENT_HEADERS.join(", ")})` };
  }
  if (!EVENT_NAME.test(event)) return { kind: "malformed", message: "event header is not an event name" };
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    return { kind: "malformed", message: "body is not a JSON object" };
  }
  const id = deliveryId(headers);
  const extra = id === undefined ? {} : { deliveryId: id };
  if (event === "push") {
    const parsed = PushEvent.safeParse(body);
    if (!parsed.success) return malformed(event, parsed.error);
    return { kind: "push", event, ...extra, payload: parsed.data };
  }
  if (event === "pull_request") {
    const parsed = PullRequestEvent.safeParse(body);
    if (!parsed.success) return malformed(event, parsed.error);
    return { kind: "pull_request", event, ...extra, payload: parsed.data };
  }
  const parsed = Envelope.safeParse(body);
  if (!parsed.success) return malformed(event, parsed.error);
  return { kind: "other", event, ...extra, payload: parsed.data };
}

function deliveryId(headers: HeaderReader): string | undefined {
  for (const name of DELIVERY_HEADERS) {
    const value = headers(name)?.trim();
    if (value) return truncate(value, 100);
  }
  return undefined;
}

function malformed(event: string, error: z.ZodError): ParsedDelivery {
  return { kind: "malformed", message: truncate(`${event} payload: ${describeIssues(error)}`, 500) };
}
