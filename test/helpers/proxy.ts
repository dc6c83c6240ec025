import { connect, createServer, type Socket } from "node:net";

/** A TCP proxy in front of one server, for one client: `partition(true)` makes the server stop answering it. */
export interface TcpProxy {
  url: string;
  /** While on, nothing passes: open connections go silent (no reset, no answer) and new ones are held unanswered. */
  partition(on: boolean): void;
  close(): Promise<void>;
}

export async function startProxy(target: string): Promise<TcpProxy> {
  const to = new URL(target);
  const pairs = new Set<{ client: Socket; upstream?: Socket | undefined }>();
  let partitioned = false;
  const server = createServer((client) => {
    const pair: { client: Socket; upstream?: Socket | undefined } = { client };
    pairs.add(pair);
    client.on("error", () => undefined);
    client.on("close", () => {
      pair.upstream?.destroy();
      pairs.delete(pair);
    });
    if (partitioned) return;
    const upstream = connect(Number(to.port), to.hostname);
    pair.upstream = upstream;
    upstream.on("error", () => client.destroy());
    upstream.on("close", () => {
      if (!partitioned) client.destroy();
    });
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as { port: number }).port;
  return {
    url: `http://127.0.0.1:${port}`,
    partition(on) {
      partitioned = on;
      if (!on) {
        // The silent connections stay silent for good, as after a real partition: the client times them out.
        return;
      }
      for (const pair of pairs) {
        pair.client.unpipe();
        pair.upstream?.unpipe();
        pair.upstream?.destroy();
        pair.upstream = undefined;
      }
    },
    async close() {
      for (const pair of pairs) {
        pair.client.destroy();
        pair.upstream?.destroy();
      }
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
