// Making what was written survive a crash: fsync of directories (their entries) and of whole
// trees written without per-file fsyncs (a backup's staging, a recovered data directory), where
// one pass at the end lets the kernel write back in bulk meanwhile.

import { constants, promises as fs } from 'node:fs';
import { join } from 'node:path';
import { eachAtOnce } from './each-at-once';

export async function fsyncDir(path: string): Promise<void> {
  const fh = await fs.open(path, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Makes a file's data durable: opened for reading, fsynced, closed. */
export async function fsyncFile(path: string): Promise<void> {
  const fh = await fs.open(path, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * fsyncs every file and directory below `root` (bounded parallelism), then `root` itself; with
 * `files: false` the directories only (the files were made durable one by one, as written).
 */
export async function fsyncTree(root: string, { parallel = 8, files: withFiles = true }: { parallel?: number; files?: boolean } = {}): Promise<void> {
  const dirs: string[] = [];
  const files: string[] = [];
  const walk = async (dir: string): Promise<void> => {
    dirs.push(dir);
    for (const entry of await fs.readdir(dir, { withFileTypes: true })) {
      const p = join(dir, entry.name);
      if (entry.isDirectory()) await walk(p);
      else if (entry.isFile() && withFiles) files.push(p);
    }
  };
  await walk(root);
  await eachAtOnce(files, parallel, fsyncFile);
  for (const d of dirs.reverse()) await fsyncDir(d);
}

/** A small file (JSON state, a key) written whole: temp name, fsync, rename, directory fsync. */
export async function writeFileDurably(path: string, content: string | Uint8Array, mode = 0o640): Promise<void> {
  const tmp = `${path}.${process.pid}.tmp`;
  const fh = await fs.open(tmp, 'w', mode);
  try {
    await fh.writeFile(content);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await fs.rename(tmp, path);
  await fsyncDir(join(path, '..'));
}
