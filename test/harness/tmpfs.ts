// A small filesystem of its own for one folder (a server's catalog), so a test can fill it up:
// a tmpfs mounted by the test (it runs as root), unmounted when its scope ends.

import { execFileSync } from 'node:child_process';
import { closeSync, mkdirSync, openSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { track } from './resources';

/** Mounts a tmpfs of `sizeMB` at `dir` (created if missing). */
export function mountTmpfs(dir: string, sizeMB: number): void {
  mkdirSync(dir, { recursive: true });
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${sizeMB}m,mode=0750`, 'tmpfs', dir], { stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    throw new Error(`cannot mount a tmpfs at ${dir} (the test needs root and mount(2)): ${(err as { stderr?: Buffer }).stderr?.toString() ?? String(err)}`);
  }
  // lazily: a process may still hold a file there when the scope ends
  track({ what: `tmpfs at ${dir}`, dispose: () => void execFileSync('umount', ['-l', dir]) });
}

/** Writes a file into `dir` until its filesystem is full (ENOSPC); returns the file, to delete to free the space. */
export function fillUp(dir: string): string {
  const path = join(dir, 'filler');
  const fd = openSync(path, 'w');
  const block = Buffer.alloc(1024 * 1024, 0x5a);
  try {
    for (;;) {
      try {
        writeSync(fd, block);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOSPC') break;
        throw err;
      }
    }
    // the last bytes too: a smaller block where a whole one no longer fits
    for (const size of [65536, 4096, 512]) {
      try {
        for (;;) writeSync(fd, block.subarray(0, size));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
      }
    }
  } finally {
    closeSync(fd);
  }
  return path;
}

/** Frees what fillUp took. */
export function freeUp(filler: string): void {
  rmSync(filler, { force: true });
}
