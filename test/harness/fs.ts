// File helpers the tests compare catalogs with: hashes, byte-equality, tree snapshots.

import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { existsSync, promises as fs, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { crc32cHex, crc32cJs } from '../../shared/checksum';
import { wireCompressor } from '../../shared/protocol/chunks';
import { CHUNK_SIZE } from '../../shared/protocol/frames';

export function removeTree(path: string): void {
  rmSync(path, { recursive: true, force: true, maxRetries: 3 });
}

export async function sha256Of(path: string): Promise<string> {
  return createHash('sha256').update(await fs.readFile(path)).digest('hex');
}

/**
 * The plain bytes of a file stored compressed, as its suffix says (.zst, .lz4, .gz; none: as it
 * is), decompressed by the standard command-line tools a DBA would use on a bad day.
 */
export function plainBytesOf(path: string): Buffer {
  const tool = path.endsWith('.zst') ? 'zstd' : path.endsWith('.lz4') ? 'lz4' : path.endsWith('.gz') ? 'gzip' : undefined;
  if (!tool) return readFileSync(path);
  return execFileSync(tool, ['-dc', path], { maxBuffer: 2 * 1024 * 1024 * 1024 });
}

/** SHA-256 of a stored file's plain bytes (plainBytesOf). */
export function plainSha256Of(path: string): string {
  return createHash('sha256').update(plainBytesOf(path)).digest('hex');
}

export function sha256OfBytes(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/**
 * The bytes of a WAL segment's chunks as the agent sends it to a receiver whose catalog stores
 * zstd (the default): each CHUNK_SIZE block compressed on its own (protocol 5).
 */
export async function wireBytesOf(path: string): Promise<number> {
  const compress = wireCompressor('zstd');
  if (!compress) throw new Error('the zstd binding does not load here');
  const bytes = await fs.readFile(path);
  let total = 0;
  for (let at = 0; at < bytes.length; at += CHUNK_SIZE) total += (await compress(bytes.subarray(at, at + CHUNK_SIZE))).length;
  return total;
}

/** CRC-32C of `bytes` as a backup file's end frame carries it (8 hex digits). */
export function crc32cOfBytes(bytes: Uint8Array): string {
  return crc32cHex(crc32cJs(bytes));
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

/** Files below `root` whose name starts with '.' (a storage driver's temporary files), relative. */
export function hiddenFiles(root: string): string[] {
  const out: string[] = [];
  const walk = (dir: string): void => {
    for (const entry of existsSync(dir) ? readdirSync(dir, { withFileTypes: true }) : []) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) walk(path);
      else if (entry.name.startsWith('.')) out.push(relative(root, path));
    }
  };
  walk(root);
  return out.sort();
}
