import { chmod, mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { shellQuote } from "./proc.js";

const NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * The secrets file format: a POSIX-shell script of `export NAME='value'` lines, so a build script reads them
 * with `. "$PETREL_SECRETS"`. Values are single-quoted verbatim (newlines included); names that are not shell
 * variable names cannot be exported and are listed in `skipped`.
 */
export function formatSecrets(secrets: Record<string, string>): { text: string; skipped: string[] } {
  const lines = ['# petrel build secrets: load with  . "$PETREL_SECRETS"'];
  const skipped: string[] = [];
  for (const [name, value] of Object.entries(secrets).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    if (!NAME.test(name)) {
      skipped.push(name);
      continue;
    }
    lines.push(`export ${name}=${shellQuote(value)}`);
  }
  return { text: `${lines.join("\n")}\n`, skipped };
}

/** Where and how the secrets of a build were written. */
export interface SecretsFile {
  path: string;
  /** A directory the executor created for the file and must delete afterwards. */
  ownDir?: string;
  count: number;
  skipped: string[];
  /** Whether shell text followed the secrets (an Albatros entry's `inject`). */
  inject: boolean;
}

/**
 * Writes the secrets as a 0600 file: in Nomad's per-task secrets directory when there is one (tmpfs, private
 * to the task), otherwise in a fresh 0700 temporary directory. `inject` (shell text) follows the exports, so
 * sourcing the file runs it as Albatros builds did.
 */
export async function writeSecretsFile(
  secrets: Record<string, string>,
  secretsDir: string | undefined,
  buildSlug: string,
  inject?: string,
): Promise<SecretsFile> {
  const formatted = formatSecrets(secrets);
  const { skipped } = formatted;
  const hasInject = inject !== undefined && inject !== "";
  const text = hasInject ? `${formatted.text}${inject.endsWith("\n") ? inject : `${inject}\n`}` : formatted.text;
  const ownDir = secretsDir ? undefined : await mkdtemp(join(tmpdir(), "petrel-secrets-"));
  const path = join(secretsDir ?? (ownDir as string), `petrel-secrets-${buildSlug}.sh`);
  await writeFile(path, text, { mode: 0o600, flag: "w" });
  // A file left over from an earlier run keeps its old mode on overwrite.
  await chmod(path, 0o600);
  const count = Object.keys(secrets).length - skipped.length;
  return ownDir ? { path, ownDir, count, skipped, inject: hasInject } : { path, count, skipped, inject: hasInject };
}
