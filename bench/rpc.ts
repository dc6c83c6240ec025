import type { ChildProcess } from "node:child_process";

/** Calls into a bench child over its IPC channel: each command gets an id, and the child answers with it. */
export function rpc<C extends object>(child: ChildProcess): (command: C) => Promise<unknown> {
  let next = 1;
  const waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  child.on("message", (msg: { id: number; result?: unknown; error?: string }) => {
    const w = waiting.get(msg.id);
    waiting.delete(msg.id);
    if (msg.error !== undefined) w?.reject(new Error(msg.error));
    else w?.resolve(msg.result);
  });
  child.on("exit", (code) => {
    for (const w of waiting.values()) w.reject(new Error(`bench child exited with ${code}`));
  });
  return (command) =>
    new Promise((resolve, reject) => {
      const id = next++;
      waiting.set(id, { resolve, reject });
      child.send({ ...command, id });
    });
}
