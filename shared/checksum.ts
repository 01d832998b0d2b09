// File checksums. WAL files: SHA-256 (the catalog keys them by it). A backup's file crosses the
// wire with a CRC-32C the agent computes over the bytes it sends and the receiver checks; the
// backup_manifest records that CRC-32C (PostgreSQL's default), or, with backup_checksum = sha256,
// a SHA-256 the agent computes beside it (shared/backup/manifest.ts).

import { createHash, type Hash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { type FileHandle, open } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { join } from 'node:path';

/** CRC-32C (Castagnoli, as iSCSI and PostgreSQL use it) of `data`, continuing from `initial`. */
export type Crc32c = (data: Uint8Array, initial?: number) => number;

let crc32cImpl: Crc32c | undefined;

/**
 * The CRC-32C function: @node-rs/crc32's SIMD one (prebuilt binary), or, where that package
 * cannot load (a bundle copied without its node_modules), a table-driven one in JavaScript.
 */
export function crc32c(): Crc32c {
  if (crc32cImpl) return crc32cImpl;
  crc32cImpl = requireOptional<{ crc32c: Crc32c }>('@node-rs/crc32')?.crc32c ?? crc32cJs;
  return crc32cImpl;
}

/** A package the bundles leave out (native bindings): its exports; throws where it cannot load. */
export function requireExternal<T>(name: string): T {
  // the bundles are CommonJS (require is there, and import() is not: they run from a code cache);
  // the sources run as ESM under tsx and vitest
  const req = typeof require === 'function' ? require : createRequire(join(process.cwd(), 'package.json'));
  return req(name) as T;
}

/**
 * @mongodb-js/zstd's native binding (its entry point drops the compression level; the binding
 * takes it). The package's own loader (bindings.js) asks process.report.getReport() whether the C
 * library is musl, which cost 5-7 ms of every process that loads it (a push among them); on Linux
 * the platform's package is loaded directly instead, musl told by /usr/bin/ldd as newer napi-rs
 * loaders do, and the package's loader decides wherever that does not work.
 */
export function requireZstdBinding<T>(): T {
  if (process.platform === 'linux') {
    let libc: 'gnu' | 'musl' | undefined;
    try {
      libc = readFileSync('/usr/bin/ldd', 'utf8').includes('musl') ? 'musl' : 'gnu';
    } catch {
      libc = undefined;
    }
    if (libc) {
      try {
        return requireExternal<T>(`@mongodb-js/zstd-linux-${process.arch}-${libc}`);
      } catch {
        // not installed for this platform, or does not load here: the package's loader says why
      }
    }
  }
  return requireExternal<T>('@mongodb-js/zstd/bindings.js');
}

/** A native package both programs can do without (by name, or its loader): its exports, or undefined where it cannot load. */
export function requireOptional<T>(name: string | (() => T)): T | undefined {
  try {
    return typeof name === 'string' ? requireExternal<T>(name) : name();
  } catch {
    return undefined;
  }
}

let table: Uint32Array | undefined;
/** The portable CRC-32C (reflected polynomial 0x82F63B78), byte at a time. */
export function crc32cJs(data: Uint8Array, initial = 0): number {
  if (!table) {
    table = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0x82f63b78 ^ (c >>> 1) : c >>> 1;
      table[n] = c >>> 0;
    }
  }
  let crc = ~initial >>> 0;
  for (let i = 0; i < data.length; i++) crc = table[(crc ^ data[i]!) & 0xff]! ^ (crc >>> 8);
  return ~crc >>> 0;
}

/** A CRC-32C as the wire carries it: 8 lowercase hex digits of the value. */
export function crc32cHex(value: number): string {
  return (value >>> 0).toString(16).padStart(8, '0');
}

export function newHash(): Hash {
  return createHash('sha256');
}

/**
 * A file's bytes through one buffer per file, reused for every chunk: fresh 1 MB buffers per read
 * page-fault heavily on small VMs. The consumer must be done with a chunk before asking for the next.
 */
export async function* readChunks(path: string): AsyncGenerator<Buffer> {
  const fh = await open(path, 'r');
  try {
    const { size } = await fh.stat();
    const buf = Buffer.allocUnsafeSlow(Math.max(1, Math.min(1024 * 1024, size)));
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) return;
      yield buf.subarray(0, bytesRead);
    }
  } finally {
    await fh.close();
  }
}

export async function sha256File(path: string): Promise<{ sha256: string; size: number }> {
  const hash = newHash();
  let size = 0;
  for await (const chunk of readChunks(path)) {
    hash.update(chunk);
    size += chunk.length;
  }
  return { sha256: hash.digest('hex'), size };
}

/** SHA-256 of an open file's bytes, by positioned reads (the file position stays where it is). */
export async function sha256Handle(fh: FileHandle): Promise<string> {
  const hash = newHash();
  const buf = Buffer.allocUnsafeSlow(1024 * 1024);
  for (let pos = 0; ;) {
    const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
    if (bytesRead === 0) break;
    hash.update(buf.subarray(0, bytesRead));
    pos += bytesRead;
  }
  return hash.digest('hex');
}
