import { chmodSync, existsSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Page } from "playwright-core";
import type { Build } from "../../src/builds/backend.js";
import { isTerminal } from "../../src/builds/backend.js";
import type { LocalBackend } from "../../src/local/backend.js";
import { meta, serveLocal, until } from "../cli/harness.js";

export const CHROMIUM = "/usr/bin/chromium";
/** Browser tests skip only on a developer's machine without Debian's chromium; in CI a missing browser fails them. */
export const BROWSER_SKIP = !existsSync(CHROMIUM) && process.env.CI === undefined;
/** The flags every browser test starts chromium with (no network of its own, no sandbox as root). */
export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** Lines the `big` branch prints: what a 100,000-line log page must render in time. */
export const BIG_LINES = 100_000;

/** A single-machine petrel whose stand-in executor prints a log chosen by branch, like the real one (merged log too). */
export interface PagesPetrel {
  url: string;
  dir: string;
  backend: LocalBackend;
  /** Starts a build of `repo` (acme/widgets: public; acme/secret: token only) at `branch`. */
  dispatch(branch: string, repo?: string): Promise<string>;
  /** Waits for a build to end. */
  final(id: string): Promise<Build>;
  /** Lets the `gate` builds (or, given "big", the `big-live` builds) go on. */
  openGate(which?: "gate" | "big"): void;
  close(): Promise<void>;
}

let seq = 0;

/**
 * Branches: `colors` prints colours, a `\r` progress line and step headers; `gate` prints a line, waits for
 * the gate, prints another; `sleep` runs until cancelled; `big` prints BIG_LINES coloured lines; `big-live` prints a
 * line, waits for the "big" gate, then prints BIG_LINES coloured lines; `mib-N` about N MiB.
 */
export async function startPagesPetrel(publicUrl = "http://127.0.0.1"): Promise<PagesPetrel> {
  const dir = mkdtempSync(join(tmpdir(), "petrel-pages-"));
  const script = join(dir, "executor.sh");
  writeFileSync(
    script,
    `#!/bin/sh
exec 3>>"\${PETREL_MERGED_LOG:-/dev/null}"
out() { printf "$@"; printf "$@" >&3; }
step() { printf "==> %s\\n" "$1" >&2; printf "==> %s\\n" "$1" >&3; }
step "checkout acme/widgets@\${NOMAD_META_COMMIT%\${NOMAD_META_COMMIT#???????}} (cached) 12 ms"
step "run .petrel (started 40 ms after the executor)"
case "$NOMAD_META_BRANCH" in
  colors)
    out '\\033[31mred error\\033[0m and \\033[1;32mbold green\\033[0m\\n'
    out 'downloading 10%%\\rdownloading 55%%\\rdownloading 100%%\\n'
    out 'plain <b>not bold</b> & done\\n' ;;
  gate)
    out 'before gate\\n'
    while [ ! -e "${dir}/gate" ]; do sleep 0.05; done
    out '\\033[36mafter gate\\033[0m\\n'
    out 'fetching 1%%\\rfetching 50%%\\rfetching 100%%\\n' ;;
  sleep) out 'sleeping\\n'; exec sleep 60 ;;
  mib-*)
    # About N MiB of 100-byte lines, every tenth one coloured.
    awk -v n="\${NOMAD_META_BRANCH#mib-}" 'BEGIN { for (i = 1; i <= n * 10486; i++) { if (i % 10 == 0) printf "\\033[33mwarn\\033[0m %090d\\n", i; else printf "line %093d\\n", i } }' > "${dir}/mib-$$"
    cat "${dir}/mib-$$"; cat "${dir}/mib-$$" >&3 ;;
  big-live)
    out 'waiting for the big gate\\n'
    while [ ! -e "${dir}/gate-big" ]; do sleep 0.05; done
    seq 1 ${BIG_LINES} | awk '{ printf "line %d \\033[32mok\\033[0m\\n", $1 }' > "${dir}/big-$$"
    cat "${dir}/big-$$"; cat "${dir}/big-$$" >&3 ;;
  big)
    seq 1 ${BIG_LINES} | awk '{ printf "line %d \\033[32mok\\033[0m\\n", $1 }' > "${dir}/big-$$"
    cat "${dir}/big-$$"; cat "${dir}/big-$$" >&3 ;;
esac
step "exit 0 after 1.25 s"
`,
  );
  chmodSync(script, 0o755);
  const configPath = join(dir, "petrel.yaml");
  writeFileSync(
    configPath,
    `repos:\n  git.example.test/acme/widgets:\n    hook: { secret: "pages-hook-secret-0123456789" }\n    logs: public\n  git.example.test/acme/secret:\n    hook: { secret: "pages-hook-secret-0123456789" }\n    logs: token\n`,
  );
  const served = await serveLocal({ dir, configPath, executor: [script], concurrency: 4, publicUrl });
  return {
    url: served.url,
    dir,
    backend: served.backend,
    async dispatch(branch, repo = "acme/widgets") {
      const commit = (seq++).toString(16).padStart(8, "0").repeat(5);
      const m = { ...meta(branch, commit, repo), PRIVATE: repo === "acme/widgets" ? "false" : "true" };
      return (await served.backend.dispatch({ builder: "builder", meta: m, idempotencyToken: `pages-${seq}-${Date.now()}` })).id;
    },
    final: (id) =>
      until(async () => {
        const b = await served.backend.getBuild(id);
        return b !== undefined && isTerminal(b.state) ? b : undefined;
      }, 60_000),
    openGate: (which = "gate") => writeFileSync(join(dir, which === "gate" ? "gate" : "gate-big"), ""),
    close: served.close,
  };
}

/** Where the page's timing stood once it had rendered, in ms since the navigation started. */
export interface RenderTiming {
  /** The second animation frame after `load`: the whole page parsed, laid out and painted. */
  rendered: number;
  firstByte: number;
  lastByte: number;
  parsed: number;
}

/**
 * Waits for the second animation frame after `load` in a page that has just been navigated to (`goto` with
 * `waitUntil: "load"`), and reads the navigation's timing. Shared by the browser test and bench/pages.ts.
 */
export function renderTiming(page: Page): Promise<RenderTiming> {
  return page.evaluate(
    () =>
      new Promise<RenderTiming>((resolve) =>
        requestAnimationFrame(() =>
          requestAnimationFrame(() => {
            const nav = performance.getEntriesByType("navigation")[0] as PerformanceNavigationTiming;
            resolve({ rendered: performance.now(), firstByte: nav.responseStart, lastByte: nav.responseEnd, parsed: nav.domInteractive });
          }),
        ),
      ),
  );
}
