import type { RepoConfig, RepoKey } from "../registry/schema.js";
import type { Delivery } from "./events.js";

// Where it always lived; its own module so the registry schema can check refs without importing the binding.
export { isRefName } from "./ref.js";

/** What a delivery bound to its entry may build: every field derived from the entry, none from the payload. */
export interface BoundRepository {
  /** `owner/name` from the entry key, for REPO and commit statuses. */
  repo: string;
  /** The clone URL: the entry's `clone_url`, else the payload's clone URL rebuilt on the entry's owner/name. */
  repoUrl: string;
}

export type Binding = ({ ok: true } & BoundRepository) | { ok: false; message: string };

/**
 * Binds a delivery to the registry entry whose secret signed it, pure. The entry (and its secret) is chosen by
 * `repository.html_url`, so every other repository identity in the payload must name the same repository:
 * otherwise anyone holding one repository's hook secret could point builds, caches and statuses at another.
 */
export function bindDelivery(entryKey: RepoKey, entry: { config: Pick<RepoConfig, "gitea" | "clone_url"> }, delivery: Delivery): Binding {
  const [keyHost = "", owner = "", name = ""] = entryKey.toLowerCase().split("/");
  const hosts = allowedHosts(keyHost, entry.config.gitea?.url);
  const repo = `${owner}/${name}`;
  const fail = (what: string, value: unknown): Binding => ({
    ok: false,
    message: `${what} ${JSON.stringify(String(value).slice(0, 200))} does not name ${entryKey}, the repository whose secret signed this delivery`,
  });

  const repository = delivery.payload.repository;
  const html = parseHttpUrl(repository.html_url);
  if (html === undefined || html.host !== keyHost.replace(/_(\d+)$/, ":$1") || !sameRepo(html.path, owner, name, true)) {
    return fail("repository.html_url", repository.html_url);
  }
  const prefix = html.path.slice(0, -2).join("/");
  if (!sameFullName(repository.full_name, repo)) return fail("repository.full_name", repository.full_name);
  const clone = bindCloneUrl(repository.clone_url, hosts, prefix, owner, name);
  if (clone === undefined) return fail("repository.clone_url", repository.clone_url);
  if (repository.ssh_url && !isSshUrlOf(repository.ssh_url, hosts, owner, name)) return fail("repository.ssh_url", repository.ssh_url);

  if (delivery.kind === "pull_request") {
    const base = delivery.payload.pull_request.base.repo;
    if (!sameFullName(base.full_name, repo)) return fail("pull_request.base.repo.full_name", base.full_name);
    if (bindCloneUrl(base.clone_url, hosts, prefix, owner, name) === undefined)
      return fail("pull_request.base.repo.clone_url", base.clone_url);
    if (base.html_url !== undefined) {
      const baseHtml = parseHttpUrl(base.html_url);
      if (baseHtml === undefined || baseHtml.host !== html.host || !sameRepo(baseHtml.path, owner, name, true)) {
        return fail("pull_request.base.repo.html_url", base.html_url);
      }
    }
    if (base.ssh_url && !isSshUrlOf(base.ssh_url, hosts, owner, name)) return fail("pull_request.base.repo.ssh_url", base.ssh_url);
  }
  return { ok: true, repo, repoUrl: entry.config.clone_url ?? clone };
}

/**
 * True when `url` clones the entry's own repository: the operator's `clone_url`, or an http(s) or SSH URL on
 * the entry's host (or `gitea.url`'s) whose path ends in the entry's `owner/name`. Used where a clone URL comes
 * from a build record, whose meta anyone allowed to dispatch the builder could have written.
 */
export function isCloneUrlOfEntry(entryKey: RepoKey, entry: { config: Pick<RepoConfig, "gitea" | "clone_url"> }, url: string): boolean {
  if (url === entry.config.clone_url) return true;
  const [keyHost = "", owner = "", name = ""] = entryKey.split("/");
  const hosts = allowedHosts(keyHost, entry.config.gitea?.url);
  const http = parseHttpUrl(url);
  if (http !== undefined) return hosts.has(http.hostname) && sameRepo(http.path, owner, name, true);
  return isSshUrlOf(url, hosts, owner, name);
}

/** Host names (no port) a clone or SSH URL may name: the entry key's host and the host of `gitea.url`. */
function allowedHosts(keyHost: string, giteaUrl: string | undefined): Set<string> {
  const hosts = new Set([keyHost.replace(/_\d+$/, "")]);
  if (giteaUrl !== undefined) {
    const gitea = parseHttpUrl(giteaUrl);
    if (gitea !== undefined) hosts.add(gitea.hostname);
  }
  return hosts;
}

interface HttpUrl {
  protocol: string;
  /** Lower-cased host with its port when one is given. */
  host: string;
  hostname: string;
  /** Lower-cased path segments, `.git` removed from the last. */
  path: string[];
}

/** An http(s) URL without credentials, query or fragment, or undefined. */
function parseHttpUrl(raw: string): HttpUrl | undefined {
  if (/[\s\\]/.test(raw)) return undefined;
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return undefined;
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") return undefined;
  if (url.username !== "" || url.password !== "" || url.search !== "" || url.hash !== "" || raw.includes("#") || raw.includes("?")) {
    return undefined;
  }
  const segments = url.pathname.replace(/\/+$/, "").split("/").slice(1);
  if (segments.some((s) => s === "" || s === "." || s === ".." || s.includes("%"))) return undefined;
  const last = segments.length - 1;
  if (last >= 0) segments[last] = (segments[last] ?? "").replace(/\.git$/i, "");
  return {
    protocol: url.protocol,
    host: url.host.toLowerCase(),
    hostname: url.hostname.toLowerCase(),
    path: segments.map((s) => s.toLowerCase()),
  };
}

/** True when the path ends in `owner/name`; `anyPrefix` allows a sub-path Gitea (`/git/acme/widgets`). */
function sameRepo(path: readonly string[], owner: string, name: string, anyPrefix: boolean): boolean {
  if (path.length < 2 || (!anyPrefix && path.length !== 2)) return false;
  return path[path.length - 2] === owner && path[path.length - 1] === name;
}

function sameFullName(fullName: string, repo: string): boolean {
  return fullName.toLowerCase() === repo;
}

/**
 * The payload's clone URL rebuilt from its scheme and port and the entry's host, sub-path, owner and name, when
 * it names the entry's repository on an allowed host; undefined for another host or repository, a `file:` URL,
 * a local path or any other scheme.
 */
function bindCloneUrl(raw: string, hosts: ReadonlySet<string>, prefix: string, owner: string, name: string): string | undefined {
  const url = parseHttpUrl(raw);
  if (url === undefined || !hosts.has(url.hostname)) return undefined;
  if (!sameRepo(url.path, owner, name, true) || url.path.slice(0, -2).join("/") !== prefix) return undefined;
  const path = [prefix, owner, `${name}.git`].filter(Boolean).join("/");
  return `${url.protocol}//${url.host}/${path}`;
}

/** True for `ssh://[user@]host[:port]/owner/name[.git]` or `[user@]host:owner/name[.git]` on an allowed host. */
function isSshUrlOf(raw: string, hosts: ReadonlySet<string>, owner: string, name: string): boolean {
  if (/[\s\\?#]/.test(raw)) return false;
  let hostname: string;
  let path: string;
  if (/^ssh:\/\//i.test(raw)) {
    let url: URL;
    try {
      url = new URL(raw);
    } catch {
      return false;
    }
    if (url.password !== "") return false;
    hostname = url.hostname.toLowerCase();
    path = url.pathname;
  } else {
    const scp = /^(?:[A-Za-z0-9._-]+@)?([A-Za-z0-9.-]+):(?!\/\/)(.*)$/.exec(raw);
    if (scp === null) return false;
    hostname = (scp[1] ?? "").toLowerCase();
    path = scp[2] ?? "";
  }
  const segments = path
    .replace(/^\/+/, "")
    .replace(/\.git$/i, "")
    .split("/")
    .map((s) => s.toLowerCase());
  return hosts.has(hostname) && sameRepo(segments, owner, name, false);
}
