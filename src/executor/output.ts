import { closeSync, mkdirSync, openSync, writeSync } from "node:fs";
import { dirname, join } from "node:path";
import type { Readable } from "node:stream";

/** Where the merged log lives inside a Nomad allocation (read back with `/v1/client/fs/stream`). */
export const ALLOC_MERGED_LOG = "petrel/all.log";

/**
 * The merged log's path for this executor: `PETREL_MERGED_LOG` (single-machine mode puts it next to the
 * build's stdout and stderr logs), else `${NOMAD_ALLOC_DIR}/petrel/all.log`; none outside a task.
 */
export function mergedLogPath(env: Record<string, string | undefined>): string | undefined {
  if (env.PETREL_MERGED_LOG) return env.PETREL_MERGED_LOG;
  if (env.NOMAD_ALLOC_DIR) return join(env.NOMAD_ALLOC_DIR, ALLOC_MERGED_LOG);
  return undefined;
}

/**
 * Largest merged log: Nomad keeps at most 10 files of 10 MB per stream by default and rotates them, which one
 * file cannot, so it stops instead of filling the allocation directory's disk.
 */
export const MERGED_LOG_MAX_BYTES = 100 * 1024 * 1024;

/** A sink the executor writes to: its own stream plus, when there is one, the merged log. */
interface Sink {
  write(chunk: string | Uint8Array): boolean;
  once(event: "drain", listener: () => void): unknown;
}

/**
 * The executor's output: every chunk of the build's stdout and stderr and every step line goes to the
 * executor's own stdout or stderr (Nomad's separate logs) and, in the order the executor receives them, to
 * one merged file. Two pipes carry no order between them, so bytes written to stdout and stderr at the same
 * instant may swap places in the merged file; each stream's own bytes never do.
 */
export interface BuildOutput {
  /** Step lines (`==> ...`): to stderr and the merged log. */
  stderr: { write(text: string): unknown };
  /** Takes the build's stdout and stderr pipes; undefined when there is no merged log to feed. */
  attach: ((stdout: Readable, stderr: Readable) => void) | undefined;
  /** Resolves once every attached pipe has ended, or after `ms` (a background process may keep one open). */
  drain(ms: number): Promise<void>;
  close(): void;
}

/** Opens the merged log (append, created with its directory) and returns the executor's output. */
export function createBuildOutput(path: string | undefined, out: Sink, err: Sink, maxBytes = MERGED_LOG_MAX_BYTES): BuildOutput {
  let fd: number | undefined;
  let written = 0;
  if (path !== undefined) {
    mkdirSync(dirname(path), { recursive: true });
    fd = openSync(path, "a", 0o644);
  }
  const append = (target: number, bytes: Uint8Array) => {
    let done = 0;
    while (done < bytes.byteLength) done += writeSync(target, bytes, done);
    written += bytes.byteLength;
  };
  const merged = (chunk: string | Uint8Array) => {
    if (fd === undefined || written > maxBytes) return;
    const bytes = typeof chunk === "string" ? Buffer.from(chunk) : chunk;
    if (written + bytes.byteLength <= maxBytes) return append(fd, bytes);
    append(fd, Buffer.from(`\n==> the merged log stops here (${maxBytes} bytes); stdout and stderr go on in their own logs\n`));
    written = maxBytes + 1;
  };
  const open = new Set<Promise<void>>();
  const streams = new Set<Readable>();

  const relay = (from: Readable, to: Sink) => {
    streams.add(from);
    const ended = new Promise<void>((resolve) => {
      from.once("close", resolve);
      from.once("end", resolve);
      from.once("error", () => resolve());
    });
    open.add(ended);
    void ended.then(() => open.delete(ended));
    from.on("data", (chunk: Buffer) => {
      merged(chunk);
      // Back-pressure reaches the build: it blocks on a full pipe while Nomad's logger catches up.
      if (!to.write(chunk)) {
        from.pause();
        to.once("drain", () => from.resume());
      }
    });
  };

  return {
    stderr: {
      write(text: string) {
        merged(text);
        return err.write(text);
      },
    },
    attach:
      fd === undefined
        ? undefined
        : (stdout, stderr) => {
            relay(stdout, out);
            relay(stderr, err);
          },
    async drain(ms) {
      if (open.size === 0) return;
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        Promise.all([...open]),
        new Promise<void>((resolve) => {
          timer = setTimeout(resolve, ms);
        }),
      ]);
      clearTimeout(timer);
      // A process the build left behind (in its own session, say) may hold the pipes open for ever: stop
      // reading them, or their handles keep the executor alive, and with it the allocation or the build's
      // PID namespace.
      for (const stream of streams) stream.destroy();
    },
    close() {
      if (fd !== undefined) closeSync(fd);
      fd = undefined;
    },
  };
}
