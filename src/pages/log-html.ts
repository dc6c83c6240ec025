import { AnsiUp } from "ansi_up";

/** SGR sequences (colours, styles): kept from text a `\r` drops, so the colour it set still holds. */
const SGR = /\x1b\[[0-9;:]*m/g;
/** A step header line's own duration, as the executor ends it (`checkout acme/widgets@4c1d7e0 (cached) 120 ms`). */
const OWN_DURATION = /(?<!\bafter)\s(\d+ ms|\d+(?:\.\d+)? s)$/;
/** The previous step's duration, as the line ending it says (`exit 0 after 3.45 s`). */
const AFTER_DURATION = /\bafter (\d+ ms|\d+(?:\.\d+)? s)\b/;
/** Lines per block: each block is laid out only when near the viewport (`content-visibility: auto`). */
export const LINES_PER_BLOCK = 500;
/** A section without a duration of its own waits for the next header to learn it, up to this much HTML. */
const SECTION_HOLD_MAX = 1 << 20;

/** What a terminal leaves of a line `\r` rewrote: the text after the last `\r`, in the colours set before it. */
export function collapseCarriageReturns(line: string): string {
  const text = line.replace(/\r+$/, "");
  const cr = text.lastIndexOf("\r");
  if (cr < 0) return text;
  const dropped = text.slice(0, cr);
  return (dropped.match(SGR)?.join("") ?? "") + text.slice(cr + 1);
}

/** True for the executor's step header lines (`==> ...`), colours aside. */
export function isStepHeader(line: string): boolean {
  return line.replace(SGR, "").startsWith("==> ");
}

function escapeAttr(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/"/g, "&quot;").replace(/</g, "&lt;");
}

const ESCAPES: Record<string, string> = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;" };

/** What ansi_up makes of text without escapes. */
function escapeText(text: string): string {
  return /[&<>"']/.test(text) ? text.replace(/[&<>"']/g, (c) => ESCAPES[c] as string) : text;
}

/** A block of lines, laid out only near the viewport. */
function openBlock(_before: number): string {
  return '<div class="blk">';
}

/** A log rendered to HTML chunk by chunk, so a page can stream it. */
export interface LogHtml {
  /** HTML for the whole lines in `bytes` (and any held before); the rest waits for more. */
  push(bytes: Uint8Array): string;
  /** HTML for what is left; the last line without its newline too when `partial` (a finished log). */
  end(partial: boolean): string;
  /** Bytes of the log rendered so far: where a live view resumes. */
  readonly offset: number;
  readonly lines: number;
}

/**
 * Lines become `<div id="L<n>">` (numbered by CSS); `==>` headers open a `<details>` section whose
 * summary shows the step's duration; lines are grouped in blocks the browser lays out lazily.
 */
export function createLogHtml(): LogHtml {
  const ansi = new AnsiUp();
  ansi.use_classes = true;
  // Cut at newlines only, so every decode gets whole characters.
  const decoder = new TextDecoder("utf-8");
  let held: Uint8Array = new Uint8Array(0);
  let offset = 0;
  let line = 0;
  let blockLines = 0;
  let inSection = false;
  // A section whose header carries no duration is held until the next header says it (or it grows too big).
  let hold: { header: string; n: number; body: string[]; size: number } | undefined;

  // ansi_up costs most of the rendering: a line without escapes, after a full reset (or none yet), is only escaped.
  let plainState = true;
  const convert = (text: string): string => {
    if (plainState && !text.includes("\x1b")) return escapeText(text);
    const html = ansi.ansi_to_html(text);
    const sgr = text.match(SGR);
    if (sgr !== null) plainState = /^\x1b\[0?m$/.test(sgr[sgr.length - 1] as string);
    // An escape cut off at the line's end waits inside ansi_up for the next line: keep using it.
    if (/\x1b(\[[0-9;:]*)?$/.test(text)) plainState = false;
    return html;
  };

  const lineHtml = (text: string): string => {
    line++;
    let out = "";
    if (blockLines === LINES_PER_BLOCK) {
      out = `</div>${openBlock(line - 1)}`;
      blockLines = 0;
    }
    // The number is a CSS counter, not a link element of its own: a third fewer elements makes a 100,000-line
    // page render in half the time. The script makes the number a link. Each block's first line sets the
    // counter: a block's style containment (content-visibility) hides a counter-reset on the block itself.
    const set = blockLines === 0 ? ` style="counter-set:ln ${line}"` : "";
    blockLines++;
    return `${out}<div id=L${line}${set}>${convert(text)}</div>`;
  };

  const summary = (header: string, n: number, duration: string | undefined) =>
    `<summary id="L${n}"><a href="#L${n}">${n}</a><span class="step">${header}</span>${
      duration === undefined ? "" : `<span class="dur" title="step duration">${escapeAttr(duration)}</span>`
    }</summary>`;

  const flushHold = (duration: string | undefined): string => {
    if (hold === undefined) return "";
    const out = `<details open>${summary(hold.header, hold.n, duration)}${openBlock(hold.n)}${hold.body.join("")}`;
    hold = undefined;
    return out;
  };

  const closeSection = (next: string | undefined): string => {
    if (hold !== undefined) return `${flushHold(next === undefined ? undefined : AFTER_DURATION.exec(next)?.[1])}</div></details>`;
    return inSection ? "</div></details>" : "</div>";
  };

  const render = (text: string): string => {
    let out = "";
    for (const raw of text.split("\n")) {
      const collapsed = raw.includes("\r") ? collapseCarriageReturns(raw) : raw;
      const visible = collapsed.startsWith("\x1b") ? collapsed.replace(SGR, "") : collapsed;
      if (visible.startsWith("==> ")) {
        out += closeSection(visible);
        line++;
        blockLines = 0;
        const header = convert(collapsed);
        const own = OWN_DURATION.exec(visible)?.[1];
        inSection = true;
        if (own !== undefined) {
          out += `<details open>${summary(header, line, own)}${openBlock(line)}`;
        } else hold = { header, n: line, body: [], size: 0 };
        continue;
      }
      const html = lineHtml(collapsed);
      if (hold !== undefined) {
        hold.body.push(html);
        hold.size += html.length;
        if (hold.size > SECTION_HOLD_MAX) out += flushHold(undefined);
      } else out += html;
    }
    return out;
  };

  let started = false;
  const start = () => {
    if (started) return "";
    started = true;
    return openBlock(0);
  };

  return {
    get offset() {
      return offset;
    },
    get lines() {
      return line;
    },
    push(bytes) {
      const all = held.length === 0 ? bytes : Buffer.concat([held, bytes]);
      const nl = all.lastIndexOf(0x0a);
      if (nl < 0) {
        held = all;
        return "";
      }
      held = all.subarray(nl + 1);
      offset += nl + 1;
      return start() + render(decoder.decode(all.subarray(0, nl)));
    },
    end(partial) {
      let out = start();
      if (partial && held.length > 0) {
        offset += held.length;
        out += render(decoder.decode(held));
        held = new Uint8Array(0);
      }
      return out + closeSection(undefined);
    },
  };
}
