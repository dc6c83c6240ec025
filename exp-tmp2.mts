import { createReadStream } from "node:fs";
import { createGunzip } from "node:zlib";
import { execFile } from "node:child_process"; import { promisify } from "node:util"; const ex = promisify(execFile);
import { once } from "node:events";
import { Hono } from "hono";
import { serve } from "@hono/node-server";
import { RESPONSE_ALREADY_SENT } from "@hono/node-server/utils/response";
const CH = Number(process.env.CH ?? 256) * 1024;
const gz = () => createReadStream("/tmp/inf/log.gz", { highWaterMark: 256 * 1024 }).pipe(createGunzip({ chunkSize: CH }));
const app = new Hono<{ Bindings: { outgoing: any } }>();
app.get("/plain", (c) => { const res = c.env.outgoing; res.writeHead(200, { "content-type": "text/plain" }); createReadStream("/tmp/inf/log.bin").pipe(res); return RESPONSE_ALREADY_SENT; });
app.get("/web", (c) => {
  const it = gz()[Symbol.asyncIterator]();
  const stream = new ReadableStream<Uint8Array>({ async pull(ctl) { const r = await it.next(); if (r.done) ctl.close(); else ctl.enqueue(r.value); } });
  return new Response(stream, { headers: { "content-type": "text/plain" } });
});
app.get("/pipe", (c) => { const res = c.env.outgoing; res.writeHead(200, { "content-type": "text/plain" }); gz().pipe(res); return RESPONSE_ALREADY_SENT; });
app.get("/iter", async (c) => { const res = c.env.outgoing; res.writeHead(200, { "content-type": "text/plain" });
  void (async () => { for await (const chunk of gz()) { if (!res.write(chunk)) await once(res, "drain"); } res.end(); })();
  return RESPONSE_ALREADY_SENT; });
const srv = serve({ fetch: app.fetch, port: 0, hostname: "127.0.0.1" });
await once(srv, "listening");
const port = (srv.address() as any).port;
const r: Record<string, { ms: number[]; cpu: number[] }> = {};
const paths = ["/plain", "/web", "/pipe", "/iter"];
for (let i = 0; i < 11; i++) for (const p of paths) {
  const c0 = process.cpuUsage();
  const out = (await ex("curl", ["-s", "-o", "/dev/null", "-w", "%{time_total} %{size_download}", `http://127.0.0.1:${port}${p}`], { encoding: "utf8" })).stdout;
  const c = process.cpuUsage(c0);
  const [t, size] = out.split(" ");
  if (Number(size) !== 50 * 2 ** 20) throw new Error(`${p} short ${size}`);
  (r[p] ??= { ms: [], cpu: [] }).ms.push(Number(t) * 1000); r[p].cpu.push((c.user + c.system) / 1000);
}
for (const [p, v] of Object.entries(r)) { v.ms.sort((a,b)=>a-b); v.cpu.sort((a,b)=>a-b); console.log(p, "wall min", v.ms[0].toFixed(0), "med", v.ms[5].toFixed(0), "cpu med", v.cpu[5].toFixed(0)); }
srv.close();
