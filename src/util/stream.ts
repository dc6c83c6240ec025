import type { Readable } from "node:stream";

const MAX_QUEUED_CHUNKS = 16;

/**
 * A readable's chunks as they arrive. The stream's own async iterator joins everything buffered into one new
 * Buffer on each read, a copy of every byte as soon as the consumer lags; this hands the chunks over as they
 * are and pauses the stream while `MAX_QUEUED_CHUNKS` wait. Returning early destroys the stream.
 */
export async function* chunksOf(stream: Readable): AsyncGenerator<Uint8Array> {
  const queue: Buffer[] = [];
  let ended = false;
  let failure: unknown;
  let wake: (() => void) | undefined;
  const notify = () => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  const onData = (chunk: Buffer) => {
    queue.push(chunk);
    if (queue.length >= MAX_QUEUED_CHUNKS) stream.pause();
    notify();
  };
  const onEnd = () => {
    ended = true;
    notify();
  };
  const onError = (err: unknown) => {
    failure ??= err;
    notify();
  };
  const onClose = () => {
    if (!ended) failure ??= new Error("the connection closed before the answer ended");
    notify();
  };
  stream.on("data", onData);
  stream.on("end", onEnd);
  stream.on("error", onError);
  stream.on("close", onClose);
  try {
    for (;;) {
      const chunk = queue.shift();
      if (chunk !== undefined) {
        if (queue.length <= MAX_QUEUED_CHUNKS / 2 && stream.isPaused()) stream.resume();
        yield chunk;
        continue;
      }
      if (failure !== undefined) throw failure;
      if (ended) return;
      await new Promise<void>((resolve) => (wake = resolve));
    }
  } finally {
    stream.off("data", onData);
    stream.off("end", onEnd);
    stream.off("error", onError);
    stream.off("close", onClose);
    if (!ended) stream.destroy();
  }
}
