import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { capture, type ProcessResult, shellQuote } from "./proc.js";

/** Runs git with prompts disabled and no inherited repository variables. */
export function git(
  args: readonly string[],
  opts: { cwd?: string; env?: Record<string, string>; signal?: AbortSignal } = {},
): Promise<ProcessResult> {
  const env: NodeJS.ProcessEnv = { ...process.env, GIT_TERMINAL_PROMPT: "0", ...opts.env };
  for (const v of ["GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_COMMON_DIR"]) delete env[v];
  return capture("git", args, {
    env,
    ...(opts.cwd ? { cwd: opts.cwd } : {}),
    ...(opts.signal ? { signal: opts.signal } : {}),
  });
}

/**
 * Runs `fn` with the environment git needs to fetch over SSH: `GIT_SSH_COMMAND` never prompts, trusts a host on
 * first use (recorded in `knownHosts`), and, with a deploy key, uses only that key from a 0600 file in a private
 * 0700 temporary directory that is deleted as soon as `fn` settles. The key never reaches the build.
 */
export async function withSshEnv<T>(
  deployKey: string | undefined,
  knownHosts: string,
  fn: (env: Record<string, string>) => Promise<T>,
): Promise<T> {
  const base = ["ssh", "-o BatchMode=yes", "-o StrictHostKeyChecking=accept-new", `-o UserKnownHostsFile=${shellQuote(knownHosts)}`];
  if (deployKey === undefined || deployKey.trim() === "") return fn({ GIT_SSH_COMMAND: base.join(" ") });
  const dir = await mkdtemp(join(tmpdir(), "petrel-key-"));
  try {
    const keyFile = join(dir, "deploy_key");
    // OpenSSH rejects some key files without a final newline.
    await writeFile(keyFile, deployKey.endsWith("\n") ? deployKey : `${deployKey}\n`, { mode: 0o600, flag: "wx" });
    const cmd = [...base, `-i ${shellQuote(keyFile)}`, "-o IdentitiesOnly=yes", "-o IdentityAgent=none"].join(" ");
    return await fn({ GIT_SSH_COMMAND: cmd });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
