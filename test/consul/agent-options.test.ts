import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { consulAgentOptions, parseGoDuration } from "../../src/consul/client.js";
import { AppError } from "../../src/errors.js";

function connectOf(options: ReturnType<typeof consulAgentOptions>): Record<string, unknown> {
  return options.connect as Record<string, unknown>;
}

describe("consulAgentOptions", () => {
  it("sets header and body timeouts above Consul's longest wait plus its jitter", () => {
    const options = consulAgentOptions({ verify: true });
    const longest = (10 * 60_000 * 17) / 16 + 15_000;
    expect(options.headersTimeout).toBeGreaterThanOrEqual(longest);
    expect(options.bodyTimeout).toBeGreaterThanOrEqual(longest);
  });

  it("sizes the timeouts from a shorter maximum wait when given one", () => {
    const options = consulAgentOptions({ verify: true, maxWait: "1m" });
    expect(options.headersTimeout).toBe((60_000 * 17) / 16 + 15_000);
  });

  it("reads the CA file, every file of the CA directory and the client pair", () => {
    const dir = mkdtempSync(join(tmpdir(), "petrel-tls-"));
    const caDir = join(dir, "cas");
    mkdirSync(caDir);
    writeFileSync(join(dir, "ca.pem"), "CA-FILE");
    writeFileSync(join(caDir, "a.pem"), "CA-A");
    writeFileSync(join(caDir, "b.crt"), "CA-B");
    mkdirSync(join(caDir, "sub"));
    writeFileSync(join(dir, "cert.pem"), "CERT");
    writeFileSync(join(dir, "key.pem"), "KEY");
    const connect = connectOf(
      consulAgentOptions({
        verify: true,
        cacert: join(dir, "ca.pem"),
        capath: caDir,
        clientCert: join(dir, "cert.pem"),
        clientKey: join(dir, "key.pem"),
        serverName: "consul.service.consul:8501",
      }),
    );
    expect(connect).toMatchObject({
      ca: ["CA-FILE", "CA-A", "CA-B"],
      cert: "CERT",
      key: "KEY",
      servername: "consul.service.consul",
      rejectUnauthorized: true,
    });
  });

  it("skips verification only when told to", () => {
    expect(connectOf(consulAgentOptions({ verify: false })).rejectUnauthorized).toBe(false);
  });

  it("refuses a client certificate without its key", () => {
    expect(() => consulAgentOptions({ verify: true, clientCert: "/x.pem" })).toThrow(AppError);
  });

  it("names the file it cannot read", () => {
    expect(() => consulAgentOptions({ verify: true, cacert: "/nonexistent/ca.pem" })).toThrow(/\/nonexistent\/ca\.pem/);
  });
});

describe("parseGoDuration", () => {
  it.each([
    ["10s", 10_000],
    ["5m", 300_000],
    ["1m30s", 90_000],
    ["250ms", 250],
    ["1.5h", 5_400_000],
    ["0", 0],
  ])("reads %s as %d ms", (text, ms) => {
    expect(parseGoDuration(text)).toBe(ms);
  });

  it.each(["300", "", "5 m", "1d", "m"])("rejects %j as Go does", (text) => {
    expect(parseGoDuration(text)).toBeUndefined();
  });
});
