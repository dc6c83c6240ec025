import { spawnSync } from "node:child_process";
import { readdir, readFile } from "node:fs/promises";
import { basename, dirname, isAbsolute, join, relative } from "node:path";
import { shellQuote } from "../executor/proc.js";

/** What one single-machine build may see of petrel's files inside its own namespaces. */
export interface NamespaceSpec {
  /** PETREL_DATA_DIR, absolute: covered by an empty tmpfs. */
  dataDir: string;
  /** Paths inside `dataDir` the build needs (the cache, its task directory), mounted back over the tmpfs. */
  keep: readonly string[];
  /** Paths inside `dataDir` that get a fresh private tmpfs (the secrets directory: secrets never reach disk). */
  tmpfs: readonly string[];
  /** Files hidden from the build (petrel.yaml); their directory is rebuilt on a tmpfs without them. */
  hideFiles: readonly string[];
  /** Where the command starts (inside `dataDir`, so it must be entered after the mounts). */
  cwd: string;
  command: readonly string[];
}

/** Exit status of the setup script when a mount fails (as the executor's sandbox uses it). */
export const NAMESPACE_SETUP_FAILED = 125;

/**
 * argv that runs `command` as init of a new PID namespace with a private mount namespace in which the data
 * directory and the config are hidden. Killing that init (or its parent, `unshare`, whose death kills it, or
 * petrel, whose death kills `unshare`) kills every process of the build: the kernel ends a PID namespace with
 * its init. https://man7.org/linux/man-pages/man7/pid_namespaces.7.html
 */
export function namespaceArgv(spec: NamespaceSpec): string[] {
  return [...NAMESPACE_PREFIX, "/bin/sh", "-c", namespaceScript(spec), "petrel-build-ns", ...spec.command];
}

/** What every single-machine build (and the start-up probe) runs under: its own PID and mount namespace. */
const NAMESPACE_PREFIX = [
  "setpriv",
  "--pdeathsig",
  "KILL",
  "--",
  "unshare",
  "--kill-child",
  "--pid",
  "--fork",
  "--mount-proc",
  "--mount",
  "--propagation",
  "private",
  "--",
] as const;

/** The shell program that arranges the mounts, then execs the command (which becomes the namespace's init). */
export function namespaceScript(spec: NamespaceSpec): string {
  const q = shellQuote;
  const fail = `|| exit ${NAMESPACE_SETUP_FAILED}`;
  const lines = ["set -u"];
  const data = spec.dataDir;
  // Each directory is first entered, then covered: the shell's working directory still reaches what lies
  // under the tmpfs, so the kept paths can be mounted back from it by relative path.
  for (const file of spec.hideFiles) {
    const dir = dirname(file);
    if (dir === "/" || isInside(data, dir)) {
      // Not a directory that can be rebuilt: cover the file itself (it is inside the hidden data dir or at /).
      if (!isInside(data, dir)) lines.push(`if [ -f ${q(file)} ]; then mount --bind /dev/null ${q(file)} ${fail}; fi`);
      continue;
    }
    const name = basename(file);
    lines.push(
      `if [ -d ${q(dir)} ]; then`,
      `  cd -- ${q(dir)} ${fail}`,
      // No size cap: files a build creates here (say petrel.yaml sits in HOME) land in this tmpfs.
      `  m=$(stat -c %a .) && mount -t tmpfs -o "mode=$m" petrel-hidden ${q(dir)} ${fail}`,
      `  for e in .[!.]* ..?* *; do`,
      `    { [ -e "$e" ] || [ -L "$e" ]; } && [ "$e" != ${q(name)} ] || continue`,
      `    t=${q(dir)}/"$e"`,
      `    if [ -L "$e" ]; then ln -s -- "$(readlink -- "$e")" "$t" ${fail}`,
      `    elif [ -d "$e" ]; then mkdir -- "$t" && mount --no-canonicalize --rbind -- "$e" "$t" ${fail}`,
      `    else : > "$t" && mount --no-canonicalize --bind -- "$e" "$t" ${fail}; fi`,
      `  done`,
      `fi`,
    );
  }
  lines.push(`cd -- ${q(data)} ${fail}`);
  lines.push(`mount -t tmpfs -o mode=0755,size=1m petrel-hidden ${q(data)} ${fail}`);
  for (const path of spec.keep) {
    const rel = relative(data, path);
    lines.push(`mkdir -p -- ${q(path)} && mount --no-canonicalize --rbind -- ${q(`./${rel}`)} ${q(path)} ${fail}`);
  }
  for (const path of spec.tmpfs) {
    lines.push(`mkdir -p -- ${q(path)} && mount -t tmpfs -o mode=0700,size=4m petrel-secrets ${q(path)} ${fail}`);
  }
  lines.push(`cd -- ${q(spec.cwd)} ${fail}`);
  lines.push('exec "$@"');
  return lines.join("\n");
}

function isInside(parent: string, path: string): boolean {
  const rel = relative(parent, path);
  return rel === "" || (!rel.startsWith("..") && !isAbsolute(rel));
}

/** Why builds cannot get their own namespaces here, or undefined when they can. */
export function namespaceProblem(uid: number | undefined, env: NodeJS.ProcessEnv): string | undefined {
  if (uid !== 0) return "petrel does not run as root";
  const [command, ...args] = NAMESPACE_PREFIX;
  const probe = spawnSync(command, [...args, "/bin/sh", "-c", "mount -t tmpfs none /mnt"], { env, encoding: "utf8", timeout: 10_000 });
  if (probe.error)
    return `${(probe.error as NodeJS.ErrnoException).code === "ENOENT" ? "setpriv or unshare (util-linux) not found" : probe.error.message}`;
  if (probe.status !== 0) return `unshare --pid --mount failed: ${probe.stderr.trim().split("\n").pop() ?? `exit ${probe.status}`}`;
  return undefined;
}

/** PIDs (in petrel's PID namespace) of processes whose environment holds `NAME=value`. */
export async function findByEnv(name: string, value: string, proc = "/proc"): Promise<number[]> {
  const needle = Buffer.from(`\0${name}=${value}\0`);
  const found: number[] = [];
  for (const entry of await readdir(proc)) {
    if (!/^\d+$/.test(entry)) continue;
    let environ: Buffer;
    try {
      environ = await readFile(join(proc, entry, "environ"));
    } catch {
      continue; // gone, or a kernel thread
    }
    if (Buffer.concat([Buffer.from([0]), environ]).includes(needle)) found.push(Number(entry));
  }
  return found;
}

/** SIGKILLs every process whose environment holds `NAME=value`, until none is left; returns how many. */
export async function killByEnv(name: string, value: string): Promise<number> {
  let killed = 0;
  // A process may fork between the scan and the kill: scan again until a pass finds nothing.
  for (let pass = 0; pass < 10; pass++) {
    const pids = (await findByEnv(name, value)).filter((pid) => pid !== process.pid);
    if (pids.length === 0) break;
    for (const pid of pids) {
      try {
        process.kill(pid, "SIGKILL");
        killed++;
      } catch {
        // already gone
      }
    }
  }
  return killed;
}

/** The children of `pid`, from /proc/<n>/stat. */
export async function childrenOf(pid: number, proc = "/proc"): Promise<number[]> {
  const out: number[] = [];
  for (const entry of await readdir(proc)) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = await readFile(join(proc, entry, "stat"), "utf8");
      // The command name (field 2) may hold spaces and parentheses: the fields after it start at the last ")".
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (ppid === pid) out.push(Number(entry));
    } catch {
      // gone
    }
  }
  return out;
}
