/** Columns of text, left-aligned and padded to the widest cell; the last column is never padded. */
export function formatTable(header: readonly string[], rows: ReadonlyArray<readonly string[]>): string {
  const widths = header.map((h, i) => Math.max(width(h), ...rows.map((r) => width(r[i] ?? ""))));
  const line = (cells: readonly string[]) =>
    header
      .map((_, i) => {
        const cell = clean(cells[i] ?? "");
        return i === header.length - 1 ? cell : cell + " ".repeat((widths[i] ?? 0) - width(cell));
      })
      .join("  ")
      .trimEnd();
  return `${[line(header), ...rows.map(line)].join("\n")}\n`;
}

/** How long ago `iso` was, compactly (`45s ago`, `3m ago`, `2h ago`, `4d ago`); `-` when unknown. */
export function formatAge(iso: string | undefined, now: number): string {
  if (iso === undefined) return "-";
  const then = Date.parse(iso);
  if (Number.isNaN(then)) return "-";
  const seconds = Math.max(0, Math.round((now - then) / 1000));
  if (seconds < 60) return `${seconds}s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ago`;
  if (seconds < 86_400) return `${Math.floor(seconds / 3600)}h ago`;
  return `${Math.floor(seconds / 86_400)}d ago`;
}

/** A duration in seconds as `1m05s`, `12s`, `2h03m`. */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

/** A secret shown without giving it away: `abcd…(64 chars)`; short values show no characters at all. */
export function maskSecret(value: string): string {
  // Four characters of a short secret would be a large share of it.
  return value.length >= 16 ? `${value.slice(0, 4)}…(${value.length} chars)` : `…(${value.length} chars)`;
}

// Control characters from a server (a branch name, say) must not reach the terminal as escape sequences.
function clean(cell: string): string {
  return cell.replace(/[\u0000-\u001f\u007f-\u009f]/g, "?");
}

function width(cell: string): number {
  return [...clean(cell)].length;
}
