import { createHmac, randomBytes } from "node:crypto";
import { safeEqual } from "../auth.js";

/** The cookie that carries a page session (the admin token's stand-in for a browser). */
export const SESSION_COOKIE = "petrel_session";
/** The double-submit cookie that guards the login form, before any session exists. */
export const LOGIN_CSRF_COOKIE = "petrel_login_csrf";
const SESSION_DAYS = 7;

/** Page sessions and CSRF tokens, both derived from the admin token: nothing stored, and rotating the token ends them all. */
export interface Sessions {
  readonly enabled: boolean;
  /** A fresh session cookie value, for a login that gave the right token. */
  issue(now?: number): string;
  /** True for a session cookie this server issued with the current admin token, not yet expired. */
  valid(cookie: string | undefined, now?: number): boolean;
  /** The CSRF token that goes with a session: forms carry it, changes check it. */
  csrfFor(session: string): string;
  /** Constant-time check of a form's CSRF token against its session. */
  csrfValid(session: string, token: string | undefined): boolean;
  /** Whether a login attempt gave the admin token (constant time). */
  tokenMatches(token: string): boolean;
  readonly maxAgeSeconds: number;
}

/** Sessions keyed by the admin token; with no token set, nobody can log in. */
export function createSessions(adminToken: string | undefined): Sessions {
  const mac = (text: string) =>
    createHmac("sha256", adminToken ?? "")
      .update(text)
      .digest("base64url");
  const maxAgeSeconds = SESSION_DAYS * 24 * 3600;
  return {
    enabled: adminToken !== undefined,
    maxAgeSeconds,
    issue(now = Date.now()) {
      const body = `v1.${now + maxAgeSeconds * 1000}.${randomBytes(12).toString("base64url")}`;
      return `${body}.${mac(`session.${body}`)}`;
    },
    valid(cookie, now = Date.now()) {
      if (adminToken === undefined || cookie === undefined) return false;
      const m = /^(v1\.(\d{1,15})\.[A-Za-z0-9_-]{16})\.([A-Za-z0-9_-]{43})$/.exec(cookie);
      if (m === null) return false;
      const [, body = "", expires = "0", sig = ""] = m;
      return safeEqual(sig, mac(`session.${body}`)) && Number(expires) > now;
    },
    csrfFor: (session) => mac(`csrf.${session}`),
    csrfValid: (session, token) => token !== undefined && token !== "" && safeEqual(token, mac(`csrf.${session}`)),
    tokenMatches: (token) => adminToken !== undefined && safeEqual(token, adminToken),
  };
}
