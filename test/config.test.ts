import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ConfigError, readConfig } from "../src/config.js";

function fail(env: Record<string, string>): ConfigError {
  try {
    readConfig(env);
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error("readConfig accepted the environment");
}

describe("readConfig", () => {
  it("defaults to single-machine mode with documented defaults", () => {
    const c = readConfig({});
    expect(c.mode).toBe("local");
    expect(c.listen).toEqual({ host: "127.0.0.1", port: 8080 });
    expect(c.publicUrl).toBe("http://127.0.0.1:8080");
    expect(c.consulPrefix).toBe("petrel");
    expect(c.builderJob).toBe("builder");
    expect(c.configPath).toBe(join(process.cwd(), "petrel.yaml"));
    expect(c.dataDir).toBe(join(process.cwd(), ".petrel"));
    expect(c.requestTimeoutSeconds).toBe(10);
    expect(c.maxConnections).toBe(1024);
    expect(c.consul.addr).toBe("http://127.0.0.1:8500");
    expect(c.consul.tls.verify).toBe(true);
    expect(c.nomad).toBeUndefined();
    expect(c.adminToken).toBeUndefined();
  });

  it("reads the leader lock's path, TTL and lock-delay, and names a bad one", () => {
    expect(readConfig({}).leader).toEqual({ path: "petrel/leader", ttlMs: 15_000, lockDelayMs: 15_000 });
    expect(
      readConfig({ PETREL_LEADER_PATH: "ci/petrel-lock", PETREL_LEADER_TTL: "1m30s", PETREL_LEADER_LOCK_DELAY: "500ms" }).leader,
    ).toEqual({
      path: "ci/petrel-lock",
      ttlMs: 90_000,
      lockDelayMs: 500,
    });
    expect(fail({ PETREL_LEADER_PATH: "nomad/jobs/x" }).variable).toBe("PETREL_LEADER_PATH");
    expect(fail({ PETREL_LEADER_PATH: "a//b" }).variable).toBe("PETREL_LEADER_PATH");
    expect(fail({ PETREL_LEADER_TTL: "15" }).message).toMatch(/^PETREL_LEADER_TTL: expected a duration/);
    expect(fail({ PETREL_LEADER_TTL: "200ms" }).variable).toBe("PETREL_LEADER_TTL");
    expect(fail({ PETREL_LEADER_LOCK_DELAY: "soon" }).variable).toBe("PETREL_LEADER_LOCK_DELAY");
  });

  it("treats an empty NOMAD_ADDR as unset", () => {
    expect(readConfig({ NOMAD_ADDR: "" }).mode).toBe("local");
    expect(readConfig({ NOMAD_ADDR: "   " }).mode).toBe("local");
  });

  it("enters cluster mode with HashiCorp's variables", () => {
    const c = readConfig({
      NOMAD_ADDR: "https://nomad.example.test:4646/",
      NOMAD_TOKEN: "n-token",
      NOMAD_REGION: "eu",
      NOMAD_NAMESPACE: "ci",
      CONSUL_HTTP_ADDR: "consul.example.test:8501",
      CONSUL_HTTP_SSL: "true",
      CONSUL_HTTP_TOKEN: "c-token",
    });
    expect(c.mode).toBe("cluster");
    expect(c.nomad).toMatchObject({ addr: "https://nomad.example.test:4646", token: "n-token", region: "eu", namespace: "ci" });
    expect(c.consul).toMatchObject({ addr: "https://consul.example.test:8501", token: "c-token" });
  });

  it("reads opposite verify polarities the HashiCorp way", () => {
    const c = readConfig({ NOMAD_ADDR: "127.0.0.1:4646", NOMAD_SKIP_VERIFY: "true", CONSUL_HTTP_SSL_VERIFY: "false" });
    expect(c.nomad?.tls.verify).toBe(false);
    expect(c.consul.tls.verify).toBe(false);
    const d = readConfig({ NOMAD_ADDR: "127.0.0.1:4646", NOMAD_SKIP_VERIFY: "0", CONSUL_HTTP_SSL_VERIFY: "1" });
    expect(d.nomad?.tls.verify).toBe(true);
    expect(d.consul.tls.verify).toBe(true);
  });

  it("prefers CONSUL_HTTP_TOKEN_FILE over CONSUL_HTTP_TOKEN and trims it", () => {
    const dir = mkdtempSync(join(tmpdir(), "petrel-config-"));
    writeFileSync(join(dir, "token"), "from-file\n");
    expect(readConfig({ CONSUL_HTTP_TOKEN: "from-env", CONSUL_HTTP_TOKEN_FILE: join(dir, "token") }).consul.token).toBe("from-file");
  });

  it("names the variable for a bad boolean", () => {
    const err = fail({ NOMAD_ADDR: "x:1", NOMAD_SKIP_VERIFY: "yes" });
    expect(err.variable).toBe("NOMAD_SKIP_VERIFY");
    expect(err.message).toMatch(/^NOMAD_SKIP_VERIFY: expected true or false, got "yes"$/);
  });

  it("names the variable for an unreadable token file", () => {
    const err = fail({ CONSUL_HTTP_TOKEN_FILE: "/nonexistent/token" });
    expect(err.variable).toBe("CONSUL_HTTP_TOKEN_FILE");
    expect(err.message).toContain("ENOENT");
  });

  it("requires a client certificate and key together", () => {
    const dir = mkdtempSync(join(tmpdir(), "petrel-config-"));
    writeFileSync(join(dir, "cert.pem"), "x");
    expect(fail({ NOMAD_ADDR: "x:1", NOMAD_CLIENT_CERT: join(dir, "cert.pem") }).variable).toBe("NOMAD_CLIENT_KEY");
  });

  it.each([
    ["PETREL_LISTEN", "8080"],
    ["PETREL_LISTEN", "host:99999"],
    ["LOG_LEVEL", "verbose"],
    ["PETREL_URL", "ftp://example.test"],
    ["NOMAD_ADDR", "unix:///var/run/nomad.sock"],
    ["PETREL_BUILDER_JOB", "has space"],
    ["PETREL_CONSUL_PREFIX", "/leading"],
    ["PETREL_ALBATROS_PREFIX", "bad prefix"],
    ["PETREL_ALBATROS_PREFIX", "petrel"],
    ["PETREL_ALBATROS_PREFIX", "petrel/albatros"],
    ["PETREL_ADMIN_TOKEN", "short"],
    ["PETREL_LOCAL_CONCURRENCY", "0"],
    ["PETREL_REQUEST_TIMEOUT", "0"],
    ["PETREL_REQUEST_TIMEOUT", "1.5"],
    ["PETREL_MAX_CONNECTIONS", "0"],
    ["PETREL_MAX_CONNECTIONS", "many"],
    ["PETREL_ARCHIVE_KEEP", "0"],
    ["PETREL_ARCHIVE_KEEP", "lots"],
    ["PETREL_ARCHIVE_MAX_AGE_DAYS", "0"],
    ["PETREL_ARCHIVE_MAX_AGE_DAYS", "7.5"],
    ["PETREL_LOCAL_KEEP", "-1"],
  ])("rejects %s=%s with one line naming it", (name, value) => {
    const err = fail({ [name]: value });
    expect(err.variable).toBe(name);
    expect(err.message.startsWith(`${name}: `)).toBe(true);
    expect(err.message).not.toContain("\n");
  });

  it("listens on IPv6 literals and derives PETREL_URL from PETREL_LISTEN", () => {
    const c = readConfig({ PETREL_LISTEN: "[::1]:9000" });
    expect(c.listen).toEqual({ host: "::1", port: 9000 });
    expect(c.publicUrl).toBe("http://[::1]:9000");
  });

  it("resolves relative PETREL_CONFIG and PETREL_DATA_DIR against the working directory it is given", () => {
    const c = readConfig({ PETREL_CONFIG: "conf/petrel.yaml", PETREL_DATA_DIR: "./state/../data" }, "/srv/petrel");
    expect(c.configPath).toBe("/srv/petrel/conf/petrel.yaml");
    expect(c.dataDir).toBe("/srv/petrel/data");
    const defaults = readConfig({}, "/srv/petrel");
    expect(defaults.configPath).toBe("/srv/petrel/petrel.yaml");
    expect(defaults.dataDir).toBe("/srv/petrel/.petrel");
  });

  it("keeps absolute PETREL_CONFIG and PETREL_DATA_DIR as they are", () => {
    const c = readConfig({ PETREL_CONFIG: "/etc/petrel.yaml", PETREL_DATA_DIR: "/var/lib/petrel" }, "/srv/petrel");
    expect(c.configPath).toBe("/etc/petrel.yaml");
    expect(c.dataDir).toBe("/var/lib/petrel");
  });

  it("reads PETREL_REQUEST_TIMEOUT in seconds and PETREL_MAX_CONNECTIONS", () => {
    const c = readConfig({ PETREL_REQUEST_TIMEOUT: "3", PETREL_MAX_CONNECTIONS: "64" });
    expect(c.requestTimeoutSeconds).toBe(3);
    expect(c.maxConnections).toBe(64);
  });

  it("archives under PETREL_DATA_DIR in single-machine mode and nowhere by default in cluster mode", () => {
    expect(readConfig({ PETREL_DATA_DIR: "/var/lib/petrel" }).archiveDir).toBe("/var/lib/petrel/archive");
    expect(readConfig({ NOMAD_ADDR: "127.0.0.1:4646" }).archiveDir).toBeUndefined();
    expect(readConfig({ NOMAD_ADDR: "127.0.0.1:4646", PETREL_ARCHIVE_DIR: "history" }, "/srv/petrel").archiveDir).toBe(
      "/srv/petrel/history",
    );
    expect(readConfig({ PETREL_ARCHIVE_DIR: "/mnt/archive" }).archiveDir).toBe("/mnt/archive");
  });

  it("refuses a PETREL_ARCHIVE_DIR that is a file, in one line naming the variable", () => {
    const file = join(mkdtempSync(join(tmpdir(), "petrel-config-")), "not-a-dir");
    writeFileSync(file, "");
    expect(() => readConfig({ PETREL_ARCHIVE_DIR: file })).toThrow(
      new RegExp(`^PETREL_ARCHIVE_DIR: ${file} is not a directory; point it at a directory or a path to create$`),
    );
  });

  it("archive retention: defaults 1000 per repository and 90 days; the single-machine names still work, deprecated", () => {
    expect(readConfig({})).toMatchObject({ archiveKeep: 1000, archiveMaxAgeDays: 90, deprecated: [] });
    expect(readConfig({ PETREL_ARCHIVE_KEEP: "20", PETREL_ARCHIVE_MAX_AGE_DAYS: "7" })).toMatchObject({
      archiveKeep: 20,
      archiveMaxAgeDays: 7,
      deprecated: [],
    });
    expect(readConfig({ PETREL_LOCAL_KEEP: "5", PETREL_LOCAL_MAX_AGE_DAYS: "3" })).toMatchObject({
      archiveKeep: 5,
      archiveMaxAgeDays: 3,
      deprecated: ["PETREL_LOCAL_KEEP (use PETREL_ARCHIVE_KEEP)", "PETREL_LOCAL_MAX_AGE_DAYS (use PETREL_ARCHIVE_MAX_AGE_DAYS)"],
    });
    // The new name wins, and then the old one is not reported.
    expect(readConfig({ PETREL_LOCAL_KEEP: "5", PETREL_ARCHIVE_KEEP: "8" })).toMatchObject({ archiveKeep: 8, deprecated: [] });
  });
});

describe("PETREL_ALBATROS_PREFIX", () => {
  it("defaults to albatros, is turned off by an empty value, and takes another prefix", () => {
    expect(readConfig({}).albatrosPrefix).toBe("albatros");
    expect(readConfig({ PETREL_ALBATROS_PREFIX: "" }).albatrosPrefix).toBeUndefined();
    expect(readConfig({ PETREL_ALBATROS_PREFIX: "ci/albatros" }).albatrosPrefix).toBe("ci/albatros");
  });
});
