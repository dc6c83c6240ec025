import { createHash, timingSafeEqual } from "node:crypto";

/** Constant-time string equality: both sides are hashed first, so neither length nor content leaks. */
export function safeEqual(a: string, b: string): boolean {
  const ha = createHash("sha256").update(a, "utf8").digest();
  const hb = createHash("sha256").update(b, "utf8").digest();
  return timingSafeEqual(ha, hb);
}

/** True when `Authorization: Bearer <t>` carries the admin token; never true while no admin token is set. */
export function isAdmin(authorization: string | undefined, adminToken: string | undefined): boolean {
  if (adminToken === undefined || authorization === undefined) return false;
  const m = /^Bearer +(\S+)\s*$/i.exec(authorization);
  return m !== null && safeEqual(m[1] ?? "", adminToken);
}
