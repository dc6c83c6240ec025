import { fileURLToPath } from "node:url";
import { type PagesPetrel, startPagesPetrel } from "../test/pages/harness.js";
import { percentile, verdict } from "./stats.js";

// Build page benchmark (issue 12): the first byte of a finished build's page, whose log is 10 MiB, against the
// first byte of the same log served as plain text (`/builds/<id>/logs?type=all`). The page streams: its head
// (state, facts, toolbar) goes out before any of the log is read or rendered.
//
// Target: page first byte <= 1.5x the plain text's (medians over ROUNDS alternating requests).

const LOG_MIB = Number(process.env.BENCH_PAGE_LOG_MIB ?? 10);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 15);

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

/** Runs the benchmark and prints the figures; true when the target is met. */
export async function main(): Promise<boolean> {
  process.stdout.write(`\npages: first byte of a finished build's page (${LOG_MIB} MiB log) vs the log as plain text\n`);
  let petrel: PagesPetrel | undefined;
  try {
    petrel = await startPagesPetrel();
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
  } finally {
    await petrel?.close();
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const met = await main();
  process.exit(met ? 0 : 1);
}
