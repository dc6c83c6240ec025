import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { fileURLToPath } from "node:url";
import { type Browser, chromium } from "playwright-core";
import { BIG_LINES, CHROMIUM, CHROMIUM_ARGS, type PagesPetrel, renderTiming, startPagesPetrel } from "../test/pages/harness.js";
import { percentile, verdict } from "./stats.js";

// Build page benchmark (issue 12), two parts.
//
// First byte: a finished build's page, whose log is 10 MiB, against the same log served as plain text
// (`/builds/<id>/logs?type=all`). The page streams: its head (state, facts, toolbar) goes out before any of the
// log is read or rendered. Target: page first byte <= 1.5x the plain text's (medians over ROUNDS alternating
// requests).
//
// Rendering: a finished build's page with a 100,000-line coloured log in headless Chromium (Debian's, with the
// browser test's flags), from the navigation's start to the second animation frame after `load`, against the
// same log's text (colours stripped, HTML-escaped) served as one plain <pre>. Target: the page's p50 under 3 s
// on this machine; the ratio to the <pre> is printed so a loaded machine shows as a slow reference too.

const LOG_MIB = Number(process.env.BENCH_PAGE_LOG_MIB ?? 10);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 15);
const BROWSER_ROUNDS = Number(process.env.BENCH_BROWSER_ROUNDS ?? 7);
const RENDER_TARGET_MS = 3000;

/** Milliseconds from sending the request to the first body bytes; the rest is read and dropped. */
async function firstByte(url: string, accept: string): Promise<{ ms: number; bytes: number }> {
  const started = performance.now();
  const res = await fetch(url, { headers: { accept } });
  const reader = (res.body as ReadableStream<Uint8Array>).getReader();
  const first = await reader.read();
  const ms = performance.now() - started;
  let bytes = first.value?.byteLength ?? 0;
  for (let r = await reader.read(); !r.done; r = await reader.read()) bytes += r.value.byteLength;
  if (res.status !== 200) throw new Error(`${url} answered ${res.status}`);
  return { ms, bytes };
}

/** The first byte of the page against the plain text's, for a finished build with a LOG_MIB log. */
async function firstBytes(petrel: PagesPetrel): Promise<boolean> {
  process.stdout.write(`\npages: first byte of a finished build's page (${LOG_MIB} MiB log) vs the log as plain text\n`);
  const id = await petrel.dispatch(`mib-${LOG_MIB}`);
  const build = await petrel.final(id);
  if (build.state !== "success") throw new Error(`the ${LOG_MIB} MiB build ended ${build.state}`);
  const page = `${petrel.url}/builds/${encodeURIComponent(id)}`;
  const text = `${page}/logs?type=all`;
  const html = "text/html,application/xhtml+xml,*/*;q=0.8";
  // One warm-up each: the first read of the log file and the first page render compile and cache.
  const warmPage = await firstByte(page, html);
  const warmText = await firstByte(text, "*/*");
  const pageMs: number[] = [];
  const textMs: number[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    textMs.push((await firstByte(text, "*/*")).ms);
    pageMs.push((await firstByte(page, html)).ms);
  }
  pageMs.sort((a, b) => a - b);
  textMs.sort((a, b) => a - b);
  const p50Page = percentile(pageMs, 50);
  const p50Text = percentile(textMs, 50);
  process.stdout.write(
    `  log ${(warmText.bytes / 2 ** 20).toFixed(1)} MiB, page ${(warmPage.bytes / 2 ** 20).toFixed(1)} MiB of HTML; ${ROUNDS} rounds\n` +
      `  first byte p50: page ${p50Page.toFixed(1)} ms, text ${p50Text.toFixed(1)} ms; p99: page ${percentile(pageMs, 99).toFixed(1)} ms, text ${percentile(textMs, 99).toFixed(1)} ms\n`,
  );
  const ratio = p50Page / p50Text;
  return verdict("page/text first byte (p50)", `${ratio.toFixed(2)}x`, "<= 1.5x", ratio <= 1.5);
}

function escapeHtml(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

/** Milliseconds from the navigation's start to the second animation frame after `load`, in a fresh context (no cache). */
async function renderMs(browser: Browser, url: string, check?: string): Promise<number> {
  const context = await browser.newContext({ viewport: { width: 1000, height: 760 } });
  try {
    const page = await context.newPage();
    await page.goto(url, { waitUntil: "load", timeout: 120_000 });
    const t = await renderTiming(page);
    if (check !== undefined && (await page.locator(check).count()) !== 1) throw new Error(`${url} lacks ${check}`);
    return t.rendered;
  } finally {
    await context.close();
  }
}

/** The 100,000-line page's rendering time in Chromium, against the same text as a plain <pre>. */
async function rendering(petrel: PagesPetrel): Promise<boolean> {
  process.stdout.write(
    `\npages: ${BIG_LINES.toLocaleString("en")}-line coloured log page rendered in Chromium vs the same text in a plain <pre>\n`,
  );
  const id = await petrel.dispatch("big");
  const build = await petrel.final(id);
  if (build.state !== "success") throw new Error(`the ${BIG_LINES}-line build ended ${build.state}`);
  const page = `${petrel.url}/builds/${encodeURIComponent(id)}`;
  const raw = await (await fetch(`${page}/logs?type=all`)).text();
  const pre = `<!doctype html><html lang="en"><meta charset="utf-8"><title>log</title><pre>${escapeHtml(raw.replace(/\x1b\[[0-9;:]*m/g, ""))}</pre></html>`;
  const server = createServer((_req, res) => {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" });
    res.end(pre);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const preUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true });
  try {
    // One warm-up each (chromium's first navigation, the server's first render); the page's warm-up also checks
    // that its last log line is there.
    await renderMs(browser, page, `#L${BIG_LINES + 2}`);
    await renderMs(browser, preUrl);
    const pageMs: number[] = [];
    const preMs: number[] = [];
    for (let i = 0; i < BROWSER_ROUNDS; i++) {
      preMs.push(await renderMs(browser, preUrl));
      pageMs.push(await renderMs(browser, page));
    }
    pageMs.sort((a, b) => a - b);
    preMs.sort((a, b) => a - b);
    const p50Page = percentile(pageMs, 50);
    const p50Pre = percentile(preMs, 50);
    process.stdout.write(
      `  log ${(Buffer.byteLength(raw) / 2 ** 20).toFixed(1)} MiB; ${BROWSER_ROUNDS} rounds, navigation start to the second frame after load\n` +
        `  rendered p50: page ${p50Page.toFixed(0)} ms, <pre> ${p50Pre.toFixed(0)} ms; p99: page ${percentile(pageMs, 99).toFixed(0)} ms, <pre> ${percentile(preMs, 99).toFixed(0)} ms\n` +
        `  page/<pre> (p50) ${(p50Page / p50Pre).toFixed(2)}x\n`,
    );
    return verdict("100k-line page rendered (p50)", `${p50Page.toFixed(0)} ms`, `< ${RENDER_TARGET_MS} ms`, p50Page < RENDER_TARGET_MS);
  } finally {
    await browser.close();
    await new Promise((resolve) => server.close(resolve));
  }
}

/** Runs the benchmark and prints the figures; true when every target is met. */
export async function main(): Promise<boolean> {
  let petrel: PagesPetrel | undefined;
  try {
    petrel = await startPagesPetrel();
    const first = await firstBytes(petrel);
    const rendered = await rendering(petrel);
    return first && rendered;
  } finally {
    await petrel?.close();
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const met = await main();
  process.exit(met ? 0 : 1);
}
