// Albatros's registry layout (SPEC §12): `<prefix>/<base64 of the repository URL>` → one JSON entry with the
// hook token, the forge, the trusted senders and `inject`, shell text that exports the secrets.
import type { AlbatrosEntry, RepoEntry, RepoKey } from "./schema.js";
import { DEFAULT_TIMEOUT, repoKeyFromUrl } from "./schema.js";

// Standard and URL-safe alphabets, padded or not: installations wrote either.
const BASE64 = /^[A-Za-z0-9+/_-]+={0,2}$/;

/**
 * The repository an Albatros key names: the last segment of the key, base64 (standard or URL-safe, padded or
 * not) of the repository's URL, with or without `.git`. Undefined when it decodes to no repository URL.
 */
export function repoKeyOfAlbatros(encoded: string): RepoKey | undefined {
  if (!BASE64.test(encoded) || encoded.length % 4 === 1) return undefined;
  const text = Buffer.from(encoded.replace(/-/g, "+").replace(/_/g, "/"), "base64").toString("utf8");
  if (!/^https?:\/\/[^\s]+$/.test(text)) return undefined;
  return repoKeyFromUrl(text);
}

/** The key Albatros itself writes for a repository: standard base64 of its `html_url`. */
export function albatrosKeyOf(prefix: string, htmlUrl: string): string {
  return `${prefix.replace(/^\/+|\/+$/g, "")}/${Buffer.from(htmlUrl, "utf8").toString("base64")}`;
}

/**
 * A registry entry from an Albatros entry: token-authenticated, its `inject` given to trusted builds, and any
 * `?flavor=` routed to the default builder (Albatros passed the flavor to one builder as the FLAVOR meta).
 */
export function entryFromAlbatros(consulKey: string, key: RepoKey, value: AlbatrosEntry, defaultBuilder: string): RepoEntry {
  const entry: RepoEntry = {
    key,
    config: {
      hook: { token: value.hook.token },
      trusted: value.trusted,
      flavors: { default: { builder: defaultBuilder } },
      caches: {},
      // Albatros had no build policies: an entry read from it gets petrel's defaults (SPEC §11).
      supersede: true,
      timeout: DEFAULT_TIMEOUT,
      cron: [],
      ...(value.gitea === undefined ? {} : { gitea: value.gitea }),
      ...(value.logs === undefined ? {} : { logs: value.logs }),
      ...(value.private === undefined ? {} : { private: value.private }),
    },
    secrets: {},
    albatros: consulKey,
  };
  if (value.inject !== undefined && value.inject !== "") entry.inject = value.inject;
  return entry;
}

const NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
// Lines that carry no secret and change nothing a sourced file of exports needs.
const IGNORABLE = /^(?:#.*|set \+x|set \+o xtrace)?$/;
const RESERVED: ReadonlySet<string> = new Set(["deploy_key", "inject"]);

/**
 * Secrets parsed out of an `inject` text made only of plain `export NAME=value` lines (value unquoted without
 * shell syntax, single-quoted, or double-quoted without `$`, `` ` ``, `\` or `"`), blank lines, comments and
 * `set +x`; undefined when anything else is there, so the text must stay shell.
 */
export function secretsFromInject(inject: string): Record<string, string> | undefined {
  const secrets: Record<string, string> = {};
  for (const raw of inject.split("\n")) {
    const line = raw.replace(/\r$/, "").trim();
    if (IGNORABLE.test(line)) continue;
    const m = /^export[ \t]+([^=\s]+)=(.*)$/.exec(line);
    if (m === null) return undefined;
    const [, name = "", rest = ""] = m;
    if (!NAME.test(name) || RESERVED.has(name)) return undefined;
    const value = plainValue(rest);
    if (value === undefined) return undefined;
    secrets[name] = value;
  }
  return secrets;
}

function plainValue(text: string): string | undefined {
  const single = /^'([^']*)'$/.exec(text);
  if (single) return single[1];
  const double = /^"([^"$`\\]*)"$/.exec(text);
  if (double) return double[1];
  return /^[^\s'"\\$`;&|<>()*?[\]{}~#!]*$/.test(text) ? text : undefined;
}
