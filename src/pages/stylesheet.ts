/** The pages' one stylesheet: system fonts, light and dark schemes, usable from 360 px wide. */
export const STYLESHEET = `
:root {
  color-scheme: light dark;
  --bg: #fff; --fg: #1d2329; --muted: #5b6670; --line: #d9dee3; --panel: #f5f7f9; --link: #0b5cad;
  --hl: #fff3b0; --ok: #1a7f37; --bad: #c62828; --warn: #9a6700; --run: #0969da;
  --log-bg: #f6f8fa; --log-fg: #1d2329;
  --a-black: #3b3b3b; --a-red: #c62828; --a-green: #1a7f37; --a-yellow: #8a6d00; --a-blue: #0b5cad;
  --a-magenta: #9c27b0; --a-cyan: #007c89; --a-white: #6e7781;
  --a-bright-black: #6e7781; --a-bright-red: #e53935; --a-bright-green: #2e9e4d; --a-bright-yellow: #a57f00;
  --a-bright-blue: #1e74d6; --a-bright-magenta: #b43fc6; --a-bright-cyan: #0097a7; --a-bright-white: #8c959f;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #0f1318; --fg: #e3e8ed; --muted: #9aa5b1; --line: #2b323a; --panel: #171c22; --link: #6cb6ff;
    --hl: #4d4300; --ok: #3fb950; --bad: #ff6b6b; --warn: #d29922; --run: #58a6ff;
    --log-bg: #0b0e12; --log-fg: #d7dde3;
    --a-black: #6e7681; --a-red: #ff7b72; --a-green: #56d364; --a-yellow: #e3b341; --a-blue: #79c0ff;
    --a-magenta: #d2a8ff; --a-cyan: #56d4dd; --a-white: #c9d1d9;
    --a-bright-black: #8b949e; --a-bright-red: #ffa198; --a-bright-green: #7ee787; --a-bright-yellow: #f2cc60;
    --a-bright-blue: #a5d6ff; --a-bright-magenta: #e2c5ff; --a-bright-cyan: #b3f0ff; --a-bright-white: #f0f6fc;
  }
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg); font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
a { color: var(--link); }
header.top { display: flex; flex-wrap: wrap; gap: .5rem 1rem; align-items: center; padding: .6rem 1rem; border-bottom: 1px solid var(--line); }
header.top .brand { font-weight: 700; text-decoration: none; color: var(--fg); }
header.top nav { margin-left: auto; display: flex; gap: .75rem; align-items: center; }
main { padding: 1rem; max-width: 80rem; margin: 0 auto; }
h1 { font-size: 1.3rem; margin: 0 0 .75rem; overflow-wrap: anywhere; }
h2 { font-size: 1.1rem; margin: 1.25rem 0 .5rem; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace; font-size: .9em; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .25rem 1rem; margin: 0 0 1rem; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
.state { display: inline-block; padding: .05rem .5rem; border-radius: 1rem; font-size: .85rem; font-weight: 600; border: 1px solid currentColor; }
.s-success { color: var(--ok); } .s-failure, .s-error { color: var(--bad); } .s-cancelled { color: var(--warn); }
.s-running, .s-queued { color: var(--run); }
table.builds { width: 100%; border-collapse: collapse; }
table.builds th, table.builds td { text-align: left; padding: .4rem .5rem; border-bottom: 1px solid var(--line); vertical-align: top; }
table.builds th { color: var(--muted); font-weight: 600; font-size: .85rem; }
form.filters { display: flex; flex-wrap: wrap; gap: .5rem; align-items: end; margin-bottom: 1rem; }
form.filters label { display: flex; flex-direction: column; font-size: .85rem; color: var(--muted); }
input, select, button { font: inherit; color: inherit; background: var(--panel); border: 1px solid var(--line); border-radius: .35rem; padding: .35rem .6rem; }
button { cursor: pointer; }
button.danger { color: var(--bad); border-color: var(--bad); }
.actions { display: flex; flex-wrap: wrap; gap: .5rem; margin: 0 0 1rem; }
.actions form { margin: 0; }
.toolbar { display: flex; flex-wrap: wrap; gap: .75rem; align-items: center; margin: .5rem 0; }
.notice { padding: .6rem .8rem; border: 1px solid var(--line); background: var(--panel); border-radius: .35rem; }
.group { border: 1px solid var(--line); border-radius: .35rem; padding: .5rem .75rem; margin-bottom: .75rem; }
.group h3 { font-size: 1rem; margin: 0 0 .35rem; display: flex; gap: .5rem; align-items: center; flex-wrap: wrap; }
.log { background: var(--log-bg); color: var(--log-fg); border: 1px solid var(--line); border-radius: .35rem; padding: .4rem 0;
  font: 13px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace; overflow-x: auto; }
.log .blk { content-visibility: auto; contain-intrinsic-size: auto 500lh; }
.log .blk > div { counter-increment: ln; position: relative; white-space: pre-wrap; overflow-wrap: anywhere;
  padding: 0 .75rem 0 7ch; min-height: 1.45em; }
.log .blk > div::before { content: counter(ln); position: absolute; left: 0; width: 6ch; text-align: right;
  color: var(--muted); user-select: none; cursor: pointer; }
.log .blk > div:hover::before { text-decoration: underline; }
.log summary a[href^="#L"] { display: inline-block; min-width: 5ch; padding-right: 1ch; text-align: right;
  color: var(--muted); text-decoration: none; user-select: none; }
.log :target { background: var(--hl); }
.log details > summary { cursor: pointer; white-space: pre-wrap; font-weight: 600; padding: .1rem .75rem 0 0; list-style-position: inside; }
.log details > summary .dur { float: right; color: var(--muted); font-weight: 400; }
.log details + details, .log .blk + details { border-top: 1px solid var(--line); }
.ansi-bold { font-weight: bold; }
.ansi-black-fg { color: var(--a-black); } .ansi-red-fg { color: var(--a-red); } .ansi-green-fg { color: var(--a-green); }
.ansi-yellow-fg { color: var(--a-yellow); } .ansi-blue-fg { color: var(--a-blue); } .ansi-magenta-fg { color: var(--a-magenta); }
.ansi-cyan-fg { color: var(--a-cyan); } .ansi-white-fg { color: var(--a-white); }
.ansi-bright-black-fg { color: var(--a-bright-black); } .ansi-bright-red-fg { color: var(--a-bright-red); }
.ansi-bright-green-fg { color: var(--a-bright-green); } .ansi-bright-yellow-fg { color: var(--a-bright-yellow); }
.ansi-bright-blue-fg { color: var(--a-bright-blue); } .ansi-bright-magenta-fg { color: var(--a-bright-magenta); }
.ansi-bright-cyan-fg { color: var(--a-bright-cyan); } .ansi-bright-white-fg { color: var(--a-bright-white); }
.ansi-black-bg { background: var(--a-black); } .ansi-red-bg { background: var(--a-red); } .ansi-green-bg { background: var(--a-green); }
.ansi-yellow-bg { background: var(--a-yellow); } .ansi-blue-bg { background: var(--a-blue); } .ansi-magenta-bg { background: var(--a-magenta); }
.ansi-cyan-bg { background: var(--a-cyan); } .ansi-white-bg { background: var(--a-white); }
.ansi-bright-black-bg { background: var(--a-bright-black); } .ansi-bright-red-bg { background: var(--a-bright-red); }
.ansi-bright-green-bg { background: var(--a-bright-green); } .ansi-bright-yellow-bg { background: var(--a-bright-yellow); }
.ansi-bright-blue-bg { background: var(--a-bright-blue); } .ansi-bright-magenta-bg { background: var(--a-bright-magenta); }
.ansi-bright-cyan-bg { background: var(--a-bright-cyan); } .ansi-bright-white-bg { background: var(--a-bright-white); }
.sr-only { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }
@media (max-width: 600px) {
  main { padding: .6rem; }
  table.builds .wide, table.builds thead { display: none; }
  table.builds, table.builds tbody { display: block; }
  table.builds tr { display: flex; flex-wrap: wrap; gap: .2rem .75rem; padding: .45rem 0; border-bottom: 1px solid var(--line); }
  table.builds td { display: block; border: 0; padding: 0; overflow-wrap: anywhere; }
  .log { font-size: 12px; }
  .log .blk > div { padding-left: 5.5ch; }
  .log .blk > div::before { width: 4.5ch; }
}
`;
