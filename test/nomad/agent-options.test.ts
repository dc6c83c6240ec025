import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Agent } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type TlsOptions, tlsAgentOptions } from "../../src/http/tls.js";
import { createNomadClient } from "../../src/nomad/client.js";

// NOMAD_CACERT / NOMAD_CAPATH / NOMAD_CLIENT_CERT / NOMAD_CLIENT_KEY / NOMAD_TLS_SERVER_NAME / NOMAD_SKIP_VERIFY
// against a real mutual-TLS server whose certificates openssl makes for the run.

const hasOpenssl = (() => {
  try {
    execFileSync("openssl", ["version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
})();

describe.skipIf(!hasOpenssl)("tlsAgentOptions for Nomad", () => {
  let dir: string;
  let server: Server;
  let addr: string;
  const agents: Agent[] = [];

  function openssl(...args: string[]): void {
    execFileSync("openssl", args, { cwd: dir, stdio: "ignore" });
  }

  function issue(name: string, san: string): void {
    openssl(
      "req",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:prime256v1",
      "-nodes",
      "-keyout",
      `${name}.key`,
      "-out",
      `${name}.csr`,
      "-subj",
      `/CN=${name}`,
    );
    writeFileSync(join(dir, `${name}.ext`), `subjectAltName=${san}\n`);
    openssl(
      "x509",
      "-req",
      "-in",
      `${name}.csr`,
      "-CA",
      "ca.crt",
      "-CAkey",
      "ca.key",
      "-CAcreateserial",
      "-out",
      `${name}.crt`,
      "-days",
      "1",
      "-extfile",
      `${name}.ext`,
    );
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "petrel-nomad-tls-"));
    openssl(
      "req",
      "-x509",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:prime256v1",
      "-nodes",
      "-keyout",
      "ca.key",
      "-out",
      "ca.crt",
      "-subj",
      "/CN=petrel-test-ca",
      "-days",
      "1",
    );
    // Nomad's own convention for server certificates: server.<region>.nomad.
    issue("server", "DNS:server.global.nomad");
    issue("client", "DNS:client.global.nomad");
    mkdirSync(join(dir, "cas"));
    writeFileSync(join(dir, "cas", "ca.pem"), readFileSync(join(dir, "ca.crt")));
    server = createServer(
      {
        key: readFileSync(join(dir, "server.key")),
        cert: readFileSync(join(dir, "server.crt")),
        ca: readFileSync(join(dir, "ca.crt")),
        requestCert: true,
        rejectUnauthorized: true,
      },
      (_req, res) => {
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify("127.0.0.1:4647"));
      },
    );
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    addr = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    await Promise.all(agents.map((a) => a.close()));
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    rmSync(dir, { recursive: true, force: true });
  });

  function leader(tls: TlsOptions): Promise<string> {
    const agent = new Agent(tlsAgentOptions("Nomad", tls));
    agents.push(agent);
    return createNomadClient({ addr, dispatcher: agent, retryBudgetMs: 2000 }).leader();
  }

  const clientPair = () => ({ clientCert: join(dir, "client.crt"), clientKey: join(dir, "client.key") });

  it("talks mutual TLS with the CA file, the client pair and the server name", async () => {
    const tls = { cacert: join(dir, "ca.crt"), ...clientPair(), serverName: "server.global.nomad", verify: true };
    expect(await leader(tls)).toBe("127.0.0.1:4647");
  });

  it("reads every file of the CA directory", async () => {
    const tls = { capath: join(dir, "cas"), ...clientPair(), serverName: "server.global.nomad", verify: true };
    expect(await leader(tls)).toBe("127.0.0.1:4647");
  });

  it("refuses a server whose certificate does not name the address when no server name is given", async () => {
    await expect(leader({ cacert: join(dir, "ca.crt"), ...clientPair(), verify: true })).rejects.toMatchObject({
      upstreamStatus: 0,
      code: "nomad_unavailable",
    });
  });

  it("refuses a server signed by an unknown CA unless verification is skipped", async () => {
    await expect(leader({ ...clientPair(), serverName: "server.global.nomad", verify: true })).rejects.toMatchObject({
      upstreamStatus: 0,
    });
    expect(await leader({ ...clientPair(), verify: false })).toBe("127.0.0.1:4647");
  });

  it("fails at once on a certificate path that does not exist", () => {
    expect(() => tlsAgentOptions("Nomad", { cacert: join(dir, "missing.crt"), verify: true })).toThrow(/ENOENT/);
  });
});
