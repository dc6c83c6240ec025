import { spawn } from "node:child_process";
import { closeSync, constants, fstatSync, openSync, statSync } from "node:fs";

/** A held flock(2) lock; released when `release()` is called or when the process dies, whichever comes first. */
export interface FileLock {
  readonly path: string;
  release(): void;
}

export interface LockOptions {
  /** Shared (many holders) instead of exclusive. */
  shared?: boolean;
  /** false: give up at once when the lock is held elsewhere (resolves undefined). Default: wait. */
  wait?: boolean;
  signal?: AbortSignal;
}

/**
 * Locks `path` (created when missing) with flock(2). Node has no flock, so a short-lived `flock` child locks the
 * open file description it inherits from us: the lock then belongs to our descriptor, outlives the child and is
 * dropped by the kernel when we close it or die — no stale lock survives a killed executor, and it works across
 * containers and PID namespaces sharing the cache volume.
 */
export async function lockFile(path: string, opts: LockOptions = {}): Promise<FileLock | undefined> {
  for (;;) {
    const fd = openSync(path, constants.O_RDWR | constants.O_CREAT, 0o644);
    let held: boolean;
    try {
      held = await flock(fd, path, opts);
    } catch (err) {
      closeSync(fd);
      throw err;
    }
    if (!held) {
      closeSync(fd);
      return undefined;
    }
    // Whoever deletes a lock file does so while holding it; if that happened between our open and our lock, we
    // hold a lock on an orphaned inode that nobody else checks, so start over on the current file.
    if (isSameFile(fd, path)) {
      let released = false;
      return {
        path,
        release() {
          if (released) return;
          released = true;
          closeSync(fd);
        },
      };
    }
    closeSync(fd);
  }
}

function isSameFile(fd: number, path: string): boolean {
  try {
    const a = fstatSync(fd);
    const b = statSync(path);
    return a.ino === b.ino && a.dev === b.dev;
  } catch {
    return false;
  }
}

function flock(fd: number, path: string, opts: LockOptions): Promise<boolean> {
  const args = [opts.shared ? "-s" : "-x"];
  if (opts.wait === false) args.push("-n");
  args.push("3");
  return new Promise((resolve, reject) => {
    const child = spawn("flock", args, {
      stdio: ["ignore", "ignore", "pipe", fd],
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
    let stderr = "";
    child.stderr?.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    child.on("error", reject);
    child.on("close", (code) => {
      if (code === 0) resolve(true);
      else if (code === 1 && opts.wait === false) resolve(false);
      else reject(new Error(`cannot lock ${path}: ${stderr.trim() || `flock exited ${String(code)}`}`));
    });
  });
}
