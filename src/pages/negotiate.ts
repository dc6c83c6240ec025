/** The weight `accept` gives `type` by name (no wildcards): 0 when it is not named. */
function weightOf(accept: string, types: readonly string[]): number {
  let best = 0;
  for (const part of accept.split(",")) {
    const [name = "", ...params] = part.trim().toLowerCase().split(";");
    if (!types.includes(name.trim())) continue;
    const q = params.map((p) => /^\s*q=([0-9.]+)\s*$/.exec(p)?.[1]).find((v) => v !== undefined);
    const weight = q === undefined ? 1 : Number(q);
    if (Number.isFinite(weight)) best = Math.max(best, weight);
  }
  return best;
}

/**
 * True when a request's `Accept` prefers a page: it names `text/html` (as browsers do) at least as highly as
 * JSON, plain text or SSE. `*\/*` alone (curl, fetch) keeps the API's JSON and text.
 */
export function prefersHtml(accept: string | undefined): boolean {
  if (accept === undefined) return false;
  const html = weightOf(accept, ["text/html", "application/xhtml+xml"]);
  return html > 0 && html >= weightOf(accept, ["application/json", "text/plain", "text/event-stream"]);
}
