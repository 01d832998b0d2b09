// Sending a file's bytes as chunk frames. Chunk buffers come from a small pool and are reused
// once the socket has taken them: memory stays at a few chunks whatever the file size, and the
// pages are touched once (first-touch page faults dominated the cost of a push on this machine).

import type { FileHandle } from 'node:fs/promises';
import { crc32c, crc32cHex, newHash } from '../checksum';
import { CHUNK_HEADER_ROOM, encodeChunkInPlace } from './codec';
import type { FrameConnection } from './connection';
import { CHUNK_SIZE } from './frames';

export class ChunkPool {
  private readonly free: Buffer[] = [];
  private readonly waiters: Array<(b: Buffer) => void> = [];

  constructor(count = 4) {
    for (let i = 0; i < count; i++) this.free.push(Buffer.allocUnsafeSlow(CHUNK_HEADER_ROOM + CHUNK_SIZE));
  }

  acquire(): Promise<Buffer> {
    const buf = this.free.pop();
    return buf ? Promise.resolve(buf) : new Promise((resolve) => this.waiters.push(resolve));
  }

  release(buf: Buffer): void {
    const waiter = this.waiters.shift();
    if (waiter) waiter(buf);
    else this.free.push(buf);
  }
}

let sharedPool: ChunkPool | undefined;
/** One pool per process is enough: sends are bounded by the connection's high-water mark. */
export function chunkPool(): ChunkPool {
  return (sharedPool ??= new ChunkPool());
}

export interface SentFile {
  sha256: string;
  /** CRC-32C of the same bytes, when asked for */
  crc32c?: string;
  size: number;
}

/** A source of bytes: fills `target` from its start, returns how many bytes (0 at the end). */
export type ChunkSource = (target: Buffer) => Promise<number>;

export function fileSource(fh: FileHandle): ChunkSource {
  return async (target) => {
    let filled = 0;
    while (filled < target.length) {
      const { bytesRead } = await fh.read(target, filled, target.length - filled, null);
      if (bytesRead === 0) break;
      filled += bytesRead;
    }
    return filled;
  };
}

export function streamSource(stream: AsyncIterable<Buffer>): ChunkSource {
  const it = stream[Symbol.asyncIterator]();
  let pending: Buffer | undefined;
  return async (target) => {
    let filled = 0;
    while (filled < target.length) {
      if (!pending || pending.length === 0) {
        const next = await it.next();
        if (next.done) break;
        pending = next.value;
      }
      const n = pending.copy(target, filled);
      filled += n;
      pending = pending.subarray(n);
    }
    return filled;
  };
}

/**
 * Sends everything `source` yields as chunk frames of request `id`, hashing as it goes.
 * `stop()` is asked before each chunk: a peer that already refused the transfer is not fed more.
 */
export async function sendChunks(conn: FrameConnection, id: number, source: ChunkSource, stop: () => boolean = () => false, withCrc = false): Promise<SentFile> {
  const pool = chunkPool();
  const hash = newHash();
  const crc = withCrc ? crc32c() : undefined;
  let crcValue = 0;
  let size = 0;
  for (;;) {
    if (stop()) break;
    const buf = await pool.acquire();
    let n: number;
    try {
      n = await source(buf.subarray(CHUNK_HEADER_ROOM));
    } catch (err) {
      pool.release(buf);
      throw err;
    }
    if (n === 0) {
      pool.release(buf);
      break;
    }
    const data = buf.subarray(CHUNK_HEADER_ROOM, CHUNK_HEADER_ROOM + n);
    hash.update(data);
    if (crc) crcValue = crc(data, crcValue);
    size += n;
    try {
      await conn.sendEncoded(encodeChunkInPlace(buf, id, n), () => pool.release(buf));
    } catch (err) {
      pool.release(buf);
      throw err;
    }
  }
  return { sha256: hash.digest('hex'), size, ...(crc ? { crc32c: crc32cHex(crcValue) } : {}) };
}
