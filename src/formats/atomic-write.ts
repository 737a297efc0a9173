// Atomic file replacement: write a temp file in the target's directory, fsync
// it, rename it over the target, fsync the directory. A crash or an error at
// any point leaves either the old file or the new one, never a torn mix
// (docs/design.md §3.8). Every writer of checkpoints, manifests and models uses this.
import { randomBytes } from "node:crypto";
import {
  closeSync,
  type Dirent,
  fsyncSync,
  lstatSync,
  openSync,
  readdirSync,
  realpathSync,
  renameSync,
  rmSync,
  statSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import { basename, dirname, join, relative } from "node:path";

export interface AtomicWriteOptions {
  /** Permission bits of a new file (before umask); an existing target keeps its own. */
  mode?: number;
}

// fs calls take at most 2 GiB − 1 bytes at once; stay well under.
const CHUNK = 1 << 30;

/** Writes every byte of `data` to `fd` (at `position`, or the current position), looping over short writes. */
export function writeAll(fd: number, data: Uint8Array, position?: number): void {
  let done = 0;
  while (done < data.byteLength) {
    const n = Math.min(CHUNK, data.byteLength - done);
    const pos = position === undefined ? null : position + done;
    const wrote = writeSync(fd, data, done, n, pos);
    if (wrote <= 0) throw new Error(`write returned ${wrote} after ${done} of ${data.byteLength} bytes`);
    done += wrote;
  }
}

/** The file a rename must replace: a symlink's target, so the link keeps pointing at the new data. */
function resolveTarget(path: string): string {
  try {
    if (lstatSync(path).isSymbolicLink()) return realpathSync(path);
  } catch {
    // Not there yet (or a dangling link): write the path itself.
  }
  return path;
}

function existingMode(path: string): number | undefined {
  try {
    return statSync(path).mode & 0o7777;
  } catch {
    return undefined;
  }
}

/** fsync of a directory makes the rename durable; some platforms cannot do it, which is not an error. */
function syncDirectory(dir: string): void {
  let fd: number;
  try {
    fd = openSync(dir, "r");
  } catch {
    return;
  }
  try {
    fsyncSync(fd);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== "EINVAL" && code !== "EISDIR" && code !== "EPERM" && code !== "ENOTSUP" && code !== "EBADF") throw e;
  } finally {
    closeSync(fd);
  }
}

/**
 * Replaces `path` with what `write(fd)` writes, atomically. `write` gets a file
 * descriptor open for writing at offset 0 (use `writeAll`). On any error the
 * temp file is removed, `path` is left as it was, and the error is rethrown.
 */
export function writeFileAtomic(path: string, write: (fd: number) => void, o: AtomicWriteOptions = {}): void {
  const target = resolveTarget(path);
  const dir = dirname(target);
  const tmp = join(dir, `${basename(target)}.tmp-${process.pid}-${randomBytes(6).toString("hex")}`);
  const mode = existingMode(target) ?? o.mode ?? 0o666;
  let fd: number | undefined = openSync(tmp, "wx", mode);
  try {
    write(fd);
    fsyncSync(fd);
    closeSync(fd);
    fd = undefined;
    renameSync(tmp, target);
  } catch (e) {
    if (fd !== undefined) {
      try {
        closeSync(fd);
      } catch {
        // Already failing; the original error is the one to report.
      }
    }
    try {
      unlinkSync(tmp);
    } catch {
      // Gone already (or never renamed away): nothing to clean.
    }
    throw e;
  }
  syncDirectory(dir);
}

/** Replaces `path` with `text` (UTF-8), atomically. */
export function writeTextAtomic(path: string, text: string, o: AtomicWriteOptions = {}): void {
  const bytes = Buffer.from(text, "utf8");
  writeFileAtomic(path, (fd) => writeAll(fd, bytes), o);
}

/** The temporary names of writes in progress: NAME.tmp-PID-HEX (files), .NAME.tmp-PID-N[.old] (folders). */
const TEMPORARY = /\.tmp-(\d+)-[0-9a-f]+(\.old)?$/;

function alive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * Removes what writes killed half-way left in `dir` and its sub-folders (to `depth`):
 * temporary files and folders whose writing process is gone. Returns their paths, relative to `dir`.
 */
export function sweepStaleTemporaries(dir: string, depth = 2): string[] {
  const removed: string[] = [];
  const walk = (d: string, left: number) => {
    let entries: Dirent[];
    try {
      entries = readdirSync(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const p = join(d, e.name);
      const m = TEMPORARY.exec(e.name);
      if (m && !alive(Number(m[1]))) {
        rmSync(p, { recursive: true, force: true });
        removed.push(relative(dir, p));
      } else if (e.isDirectory() && left > 0) walk(p, left - 1);
    }
  };
  walk(dir, depth);
  return removed;
}
