// File helpers the tests compare catalogs with: hashes, byte-equality, tree snapshots.

import { createHash } from 'node:crypto';
import { existsSync, promises as fs, readdirSync, rmSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';

export function removeTree(path: string): void {
  rmSync(path, { recursive: true, force: true, maxRetries: 3 });
}

export async function sha256Of(path: string): Promise<string> {
  return createHash('sha256').update(await fs.readFile(path)).digest('hex');
}

export function sha256OfBytes(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** Every file below `root` (relative path → size and SHA-256); folders are implied by their files. */
export async function snapshotTree(root: string): Promise<Map<string, { size: number; sha256: string }>> {
  const out = new Map<string, { size: number; sha256: string }>();
  const walk = async (dir: string): Promise<void> => {
    for (const entry of await fs.readdir(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) await walk(path);
      else out.set(relative(root, path), { size: statSync(path).size, sha256: await sha256Of(path) });
    }
  };
  if (existsSync(root)) await walk(root);
  return out;
}

/** Names in a folder, sorted; empty when the folder does not exist. */
export function listDir(dir: string): string[] {
  return existsSync(dir) ? readdirSync(dir).sort() : [];
}
