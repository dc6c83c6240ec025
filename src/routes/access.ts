import type { Context } from "hono";
import { getCookie } from "hono/cookie";
import { isAdmin } from "../auth.js";
import type { Build, BuildSummary } from "../builds/backend.js";
import { entryOfBuild } from "../builds/statuses.js";
import { isBuildOf } from "../contract/dispatch.js";
import { AppError } from "../errors.js";
import { SESSION_COOKIE, type Sessions } from "../pages/session.js";
import type { AppDeps } from "./deps.js";

/** Who may read and change what: the one read rule the API and the pages share. */
export interface Access {
  /** `Authorization: Bearer <admin token>`: the only credential that may change anything through the API. */
  bearer(c: Context): boolean;
  /**
   * May read every build: the bearer token, or a page session cookie. The cookie counts for reads only
   * (GET), so a request a browser sends on its own can never change anything through the JSON API.
   */
  reader(c: Context): boolean;
  /** Lets a page form act as the admin: only after its session cookie and CSRF token were checked. */
  grantForm(c: Context): void;
  /** Throws unless the request carries the bearer token (the API's changing endpoints). */
  requireAdmin(c: Context): void;
  /** Whether an anonymous caller may read a build. */
  publicBuild(build: BuildSummary): Promise<boolean>;
  /** A petrel build the caller may read; refuses foreign IDs before any backend call. */
  ourBuild(c: Context, id: string): Promise<Build>;
}

export function createAccess(deps: AppDeps, sessions: Sessions): Access {
  const bearer = (c: Context) => isAdmin(c.req.header("authorization"), deps.adminToken);
  const forms = new WeakSet<Request>();
  const reader = (c: Context) =>
    bearer(c) ||
    forms.has(c.req.raw) ||
    ((c.req.method === "GET" || c.req.method === "HEAD") && sessions.valid(getCookie(c, SESSION_COOKIE)));

  /**
   * Privacy comes from the registry entry (`logs`, `private`) and the forge's payload (the PRIVATE meta set at
   * dispatch); when neither tells, reading needs the token.
   */
  const publicBuild = async (build: BuildSummary): Promise<boolean> => {
    const entry = await entryOfBuild(deps.registry, build);
    if (entry === undefined) return false;
    if (entry.config.logs !== undefined) return entry.config.logs === "public";
    const isPrivate = entry.config.private ?? build.private;
    return isPrivate === false;
  };

  return {
    bearer,
    reader,
    publicBuild,
    grantForm: (c) => void forms.add(c.req.raw),
    requireAdmin(c) {
      if (deps.adminToken === undefined) {
        throw new AppError("forbidden", "this endpoint is disabled: set PETREL_ADMIN_TOKEN to enable it");
      }
      if (!bearer(c)) throw new AppError("unauthorized", "this endpoint needs Authorization: Bearer <PETREL_ADMIN_TOKEN>");
    },
    async ourBuild(c, id) {
      if (!isBuildOf(id, deps.registry.builders())) {
        throw new AppError("not_found", `${id} is not a petrel build (not a dispatched child of a configured builder job)`);
      }
      const build = await deps.reader.getBuild(id, c.req.raw.signal);
      if (build === undefined && deps.archiveEnabled) {
        throw new AppError(
          "gone",
          `build ${id} is not known: Nomad garbage-collected it before petrel could archive it (or it was never dispatched)`,
        );
      }
      if (build === undefined)
        throw new AppError("not_found", `build ${id} is not known (never dispatched, or garbage-collected by Nomad)`);
      if (!(reader(c) || (await publicBuild(build)))) {
        throw new AppError("unauthorized", "this repository's builds need Authorization: Bearer <PETREL_ADMIN_TOKEN>");
      }
      return build;
    },
  };
}
