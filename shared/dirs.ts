// Creating a directory and its missing parents, the one way every part of barman-ts does it.
// Node's own `mkdir -p` (fs.mkdir with recursive) loops forever where the kernel answers ENOENT
// for a parent that exists, as /proc does (`recover main latest /proc/nope/x` spun at full CPU):
// here each missing level is created once, top-down, and any refusal ends the call with the
// system's error for the caller to put into words.

import { promises as fs } from 'node:fs';
import { dirname, resolve } from 'node:path';

/**
 * mkdir -p: creates `path` and its missing parents with `mode`; returns the directories it
 * created, outermost first (empty when `path` already was a directory). Throws the errno error
 * of the first step that fails (ENOTDIR when a component is a file).
 */
export async function makeDirs(path: string, mode = 0o700): Promise<string[]> {
  const missing: string[] = [];
  // walk up to the nearest existing ancestor: at most one step per path component
  for (let dir = resolve(path); ; ) {
    const st = await fs.stat(dir).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw err;
    });
    if (st) {
      if (!st.isDirectory()) throw Object.assign(new Error(`ENOTDIR: not a directory, mkdir '${dir}'`), { code: 'ENOTDIR', path: dir, syscall: 'mkdir' });
      break;
    }
    missing.push(dir);
    const parent = dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  const created: string[] = [];
  for (const dir of missing.reverse()) {
    try {
      await fs.mkdir(dir, { mode });
      created.push(dir);
    } catch (err) {
      // made meanwhile by someone else: fine if it is a directory now
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || !(await fs.stat(dir)).isDirectory()) throw err;
    }
  }
  return created;
}
