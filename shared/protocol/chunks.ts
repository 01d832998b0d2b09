// Sending a file's bytes as chunk frames. Chunk buffers come from a small pool and are reused
// once the socket has taken them: memory stays at a few chunks whatever the file size, and the
// pages are touched once (first-touch page faults dominated the cost of a push on this machine).

import type { FileHandle } from 'node:fs/promises';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { crc32c, crc32cHex, newHash, requireOptional, requireZstdBinding } from '../checksum';
import { CHUNK_HEADER_ROOM, encodeChunkInPlace } from './codec';
import type { FrameConnection } from './connection';
import { CHUNK_SIZE, type WireCompression } from './frames';
import { checkZstdFrame, ZSTD_BLOCK_MAX } from './zstd-frame';

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

/**
 * `fh`'s bytes from its current position, or, `from` given, by positioned reads from that offset,
 * which leave the descriptor's own position where it is.
 */
export function fileSource(fh: FileHandle, from?: number): ChunkSource {
  let pos = from;
  return async (target) => {
    let filled = 0;
    while (filled < target.length) {
      const { bytesRead } = await fh.read(target, filled, target.length - filled, pos ?? null);
      if (bytesRead === 0) break;
      filled += bytesRead;
      if (pos !== undefined) pos += bytesRead;
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

/** A pooled buffer with the next bytes of `source` at CHUNK_HEADER_ROOM, or undefined (and no buffer held) at its end. */
async function nextBlock(pool: ChunkPool, source: ChunkSource): Promise<{ buf: Buffer; n: number } | undefined> {
  const buf = await pool.acquire();
  let n: number;
  try {
    n = await source(buf.subarray(CHUNK_HEADER_ROOM));
  } catch (err) {
    pool.release(buf);
    throw err;
  }
  if (n > 0) return { buf, n };
  pool.release(buf);
  return undefined;
}

/**
 * Sends everything `source` yields as chunk frames of request `id`, hashing as it goes (unless
 * `hashing` is false: the sender already knows the checksum the bytes must have, which the peer
 * checks them against, or nobody asked for a SHA-256, as for a backup file checked by its CRC-32C;
 * `sha256` is then empty).
 * `stop()` is asked before each chunk: a peer that already refused the transfer is not fed more.
 */
export async function sendChunks(conn: FrameConnection, id: number, source: ChunkSource, stop: () => boolean = () => false, options: { hashing?: boolean; withCrc?: boolean } = {}): Promise<SentFile> {
  const pool = chunkPool();
  const hash = options.hashing === false ? undefined : newHash();
  const crc = options.withCrc ? crc32c() : undefined;
  let crcValue = 0;
  let size = 0;
  for (;;) {
    if (stop()) break;
    const block = await nextBlock(pool, source);
    if (!block) break;
    const { buf, n } = block;
    const data = buf.subarray(CHUNK_HEADER_ROOM, CHUNK_HEADER_ROOM + n);
    hash?.update(data);
    if (crc) crcValue = crc(data, crcValue);
    size += n;
    try {
      await conn.sendEncoded(encodeChunkInPlace(buf, id, n), () => pool.release(buf));
    } catch (err) {
      pool.release(buf);
      throw err;
    }
  }
  return { sha256: hash?.digest('hex') ?? '', size, ...(crc ? { crc32c: crc32cHex(crcValue) } : {}) };
}

/** Compresses one block of plain bytes into one frame (on libuv's thread pool). */
export type BlockCompress = (plain: Buffer) => Promise<Buffer>;

/** zstd level of a backup's files compressed by the agent: the receiver's own level for zstd */
const WIRE_ZSTD_LEVEL = 1;
let zstdBinding: { compress(data: Buffer, level?: number): Promise<Buffer>; decompress(data: Buffer): Promise<Buffer> } | null | undefined;

function loadZstd(): NonNullable<typeof zstdBinding> | undefined {
  if (zstdBinding === undefined) zstdBinding = requireOptional(requireZstdBinding<NonNullable<typeof zstdBinding>>) ?? null;
  return zstdBinding ?? undefined;
}

/**
 * The agent's compressor for `compression`, or undefined where it has none (the native zstd
 * binding did not load): its files then go plain and the receiver compresses them.
 */
export function wireCompressor(compression: WireCompression): BlockCompress | undefined {
  if (compression !== 'zstd') return undefined;
  const binding = loadZstd();
  return binding ? (plain) => binding.compress(plain, WIRE_ZSTD_LEVEL) : undefined;
}

/** The plain bytes of one zstd frame a peer sent (on libuv's thread pool); throws a plain Error for a frame refused. */
export type FrameInflate = (frame: Uint8Array) => Promise<Buffer>;

/** blocks a frame of at most CHUNK_SIZE plain bytes is made of at most (whole blocks and a short last one) */
const WIRE_FRAME_BLOCKS = Math.ceil(CHUNK_SIZE / ZSTD_BLOCK_MAX) + 1;

/**
 * The decompressor of the zstd frames a file sent with `encoding: 'zstd'` comes in, or undefined
 * where the native binding did not load (such a host asks for plain bytes). Each frame is bounded
 * before it is decompressed: one whole frame, a plain size it declares of at most CHUNK_SIZE, and
 * so few blocks that, whatever it holds, it cannot decompress to more than CHUNK_SIZE and a block;
 * what it decompresses to must be at most CHUNK_SIZE too, and what it declared.
 */
export function wireDecompressor(): FrameInflate | undefined {
  const binding = loadZstd();
  if (!binding) return undefined;
  return async (data) => {
    const frame = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    const { contentSize } = checkZstdFrame(frame, WIRE_FRAME_BLOCKS);
    if (contentSize !== undefined && contentSize > CHUNK_SIZE) throw new Error(`a zstd frame declares ${contentSize} plain bytes, more than the ${CHUNK_SIZE} of a chunk`);
    // no nativeFrameDone here: each plain buffer is a whole MiB V8 counts as external memory, so it
    // collects on its own; forced collections made a restore slower (2.38 vs 2.20 s) and larger
    // (160 vs 133 MiB peak) on a -s 50 backup
    const plain = await binding.decompress(frame);
    if (plain.length > CHUNK_SIZE) throw new Error(`a zstd frame decompresses to ${plain.length} bytes, more than the ${CHUNK_SIZE} of a chunk`);
    if (contentSize !== undefined && plain.length !== contentSize) throw new Error(`a zstd frame decompresses to ${plain.length} bytes, not the ${contentSize} it declares`);
    return plain;
  };
}

let minorGc: (() => void) | null | undefined;

/**
 * A counter of the buffers the zstd binding returns (frames compressed on the agent, frames an
 * agent sent decompressed on the receiver) that collects V8's young generation every `every` of
 * them. Each such buffer keeps the memory the binding allocated for it until the small Buffer is
 * collected, and V8, which counts only the buffer's bytes, sees no reason to collect soon: a
 * backup made the agent grow by tens of MiB. A young-generation collection costs 0.2-0.6 ms.
 */
export function frameCollector(every: number): () => void {
  let since = 0;
  return () => {
    if (++since < every) return;
    since = 0;
    collectYoung();
  };
}

/** the agent's: a collection every 4 frames it compressed */
export const nativeFrameDone = frameCollector(4);

/** Collects V8's young generation now; where gc cannot be had, nothing happens. */
function collectYoung(): void {
  if (minorGc === undefined) {
    try {
      setFlagsFromString('--expose-gc');
      const gc = runInNewContext('gc') as (options?: { type: 'minor' | 'major' }) => void;
      minorGc = () => gc({ type: 'minor' });
    } catch {
      minorGc = null;
    }
  }
  minorGc?.();
}

/** blocks of one file being compressed at once (the pool's buffers bound all files' together) */
const COMPRESSING = 2;

/**
 * sendChunks for a compressed transfer: each CHUNK_SIZE block of plain bytes (the last one
 * shorter) becomes one compressed frame and one chunk, up to COMPRESSING blocks compressing at a
 * time while the next block is read. The CRC-32C (what the receiver checks the frames'
 * decompressed bytes against) and the SHA-256 (unless `hashing` is false; empty then) are of the
 * plain bytes, as is `size`.
 */
export async function sendCompressedChunks(conn: FrameConnection, id: number, source: ChunkSource, compress: BlockCompress, stop: () => boolean = () => false, options: { hashing?: boolean; withCrc?: boolean } = {}): Promise<SentFile> {
  const pool = chunkPool();
  // (`hashing: false`: a backup file whose SHA-256 the receiver did not ask for; `sha256` is then empty)
  const hash = options.hashing === false ? undefined : newHash();
  const crc = options.withCrc === false ? undefined : crc32c();
  let crcValue = 0;
  let size = 0;
  const inFlight: Promise<Buffer>[] = [];
  const sendOldest = async () => {
    const frame = await inFlight.shift()!;
    await conn.send({ type: 'chunk', id, data: frame });
    nativeFrameDone();
  };
  // the next block is read while the ones before it compress and go out
  let reading: ReturnType<typeof nextBlock> | undefined = stop() ? undefined : nextBlock(pool, source);
  try {
    while (reading) {
      const block = await reading;
      reading = undefined;
      if (!block) break;
      const { buf, n } = block;
      const plain = buf.subarray(CHUNK_HEADER_ROOM, CHUNK_HEADER_ROOM + n);
      hash?.update(plain);
      if (crc) crcValue = crc(plain, crcValue);
      size += n;
      // the buffer goes back to the pool once its block is compressed, whatever becomes of the frame
      const work = compress(plain).finally(() => pool.release(buf));
      work.catch(() => undefined);
      inFlight.push(work);
      if (!stop()) reading = nextBlock(pool, source);
      if (inFlight.length >= COMPRESSING) await sendOldest();
    }
    while (inFlight.length > 0) await sendOldest();
  } finally {
    await Promise.allSettled(inFlight);
    // a block read ahead and never sent goes back to the pool
    const left = reading && (await reading.catch(() => undefined));
    if (left) pool.release(left.buf);
  }
  return { sha256: hash?.digest('hex') ?? '', size, ...(crc ? { crc32c: crc32cHex(crcValue) } : {}) };
}

/**
 * the largest WAL segment packFile() is used for, all of it held compressed in memory until it
 * is sent (16 MiB is PostgreSQL's default; wal_segment_size goes up to 1 GiB, and larger ones are
 * hashed, then read again to send)
 */
export const PACK_MAX = 64 * 1024 * 1024;

/** A file read once: its SHA-256 and CRC-32C, its size, and its bytes as compressed frames, one per CHUNK_SIZE block. */
export interface PackedFile {
  sha256: string;
  /** of the plain bytes, as the wire carries it: what the receiver checks the frames against */
  crc32c: string;
  size: number;
  compression: WireCompression;
  frames: Buffer[];
}

/**
 * Reads `source` once, hashing each block while the blocks before it compress on libuv's thread
 * pool, and keeps every frame: a WAL put must declare its SHA-256 before its first byte, and a
 * push that hashed first and then read again to compress spent the hashing pass on the critical
 * path. The caller bounds the file's size, since all of its frames are held until they are sent.
 * At most COMPRESSING blocks compress at once: each one more is a pooled MiB more touched, and a
 * fresh page costs ~14 µs on the small VMs we measure on (two keep both cores busy).
 */
export async function packFile(source: ChunkSource, compress: BlockCompress, compression: WireCompression): Promise<PackedFile> {
  const pool = chunkPool();
  const hash = newHash();
  const crc = crc32c();
  let crcValue = 0;
  let size = 0;
  const frames: Promise<Buffer>[] = [];
  try {
    for (;;) {
      if (frames.length >= COMPRESSING) await frames[frames.length - COMPRESSING]!.catch(() => undefined);
      const block = await nextBlock(pool, source);
      if (!block) break;
      const { buf, n } = block;
      const plain = buf.subarray(CHUNK_HEADER_ROOM, CHUNK_HEADER_ROOM + n);
      const work = compress(plain).finally(() => pool.release(buf));
      work.catch(() => undefined);
      frames.push(work);
      hash.update(plain);
      crcValue = crc(plain, crcValue);
      size += n;
    }
    return { sha256: hash.digest('hex'), crc32c: crc32cHex(crcValue), size, compression, frames: await Promise.all(frames) };
  } finally {
    // a failed read leaves no block compressing with a pooled buffer
    await Promise.allSettled(frames);
  }
}

/** Sends frames packFile made as chunk frames of request `id`; `stop()` is asked before each. */
export async function sendFrames(conn: FrameConnection, id: number, frames: readonly Buffer[], stop: () => boolean = () => false): Promise<void> {
  for (const data of frames) {
    if (stop()) return;
    await conn.send({ type: 'chunk', id, data });
  }
}
