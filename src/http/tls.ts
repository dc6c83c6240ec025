import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import type { Agent } from "undici";
import { AppError, errorMessage } from "../errors.js";

/** TLS material for one HashiCorp client, in HashiCorp's own terms (`NOMAD_CACERT`, `CONSUL_CAPATH`, ...). */
export interface TlsOptions {
  cacert?: string;
  capath?: string;
  clientCert?: string;
  clientKey?: string;
  /** SNI and the name the certificate must carry; a `:port` suffix (as Consul's variable allows) is dropped. */
  serverName?: string;
  /** false skips server certificate verification (NOMAD_SKIP_VERIFY=true, CONSUL_HTTP_SSL_VERIFY=false). */
  verify: boolean;
}

/**
 * undici `Agent` options for `tls`; reads the certificate files now, so a bad path fails at start with a
 * `config_invalid` error naming the service and the file.
 */
export function tlsAgentOptions(service: string, tls: TlsOptions): Agent.Options {
  if ((tls.clientCert === undefined) !== (tls.clientKey === undefined)) {
    throw new AppError("config_invalid", `${service} client certificate and key must be given together`);
  }
  const read = (path: string, what: string): string => {
    try {
      return readFileSync(path, "utf8");
    } catch (err) {
      throw new AppError("config_invalid", `cannot read ${service} ${what} ${path}: ${errorMessage(err)}`, { cause: err });
    }
  };
  const ca: string[] = [];
  if (tls.cacert !== undefined) ca.push(read(tls.cacert, "CA certificate"));
  if (tls.capath !== undefined) {
    let names: string[];
    try {
      names = readdirSync(tls.capath).sort();
    } catch (err) {
      throw new AppError("config_invalid", `cannot read ${service} CA directory ${tls.capath}: ${errorMessage(err)}`, {
        cause: err,
      });
    }
    for (const name of names) {
      const file = join(tls.capath, name);
      if (statSync(file).isFile()) ca.push(read(file, "CA certificate"));
    }
  }
  const connect: NonNullable<Agent.Options["connect"]> & Record<string, unknown> = { rejectUnauthorized: tls.verify };
  if (ca.length > 0) connect.ca = ca;
  if (tls.clientCert !== undefined && tls.clientKey !== undefined) {
    connect.cert = read(tls.clientCert, "client certificate");
    connect.key = read(tls.clientKey, "client key");
  }
  if (tls.serverName !== undefined) connect.servername = tls.serverName.replace(/:\d+$/, "");
  return { connect };
}
