// Compression at rest, as a filter between the catalog's plain bytes and a storage driver. Every
// stored object says how it is stored by the suffix of its key (`.zst`, `.lz4`, `.gz`, none for
// plain), so a catalog whose compression setting changed reads correctly, and a DBA can open any
// stored file with the standard tools (`zstd -d`, `lz4 -d`, `gunzip`) on a bad day.
//
// gzip streams through Node's zlib. The zstd and lz4 bindings (@mongodb-js/zstd, lz4-napi) only
// compress whole buffers, so a stream is cut into blocks of BLOCK_SIZE plain bytes and each block
// becomes one standard, independent frame; the frames are concatenated, which both formats define
// as one valid stream. Reading walks the frame headers to find each frame's end and decompresses
// frame by frame. Memory stays bounded by a few blocks whatever the object's size, and the native
// work runs on libuv's thread pool, PIPELINE blocks at a time, off the event loop.

import { Transform, type TransformCallback, type TransformOptions } from 'node:stream';
import { promisify } from 'node:util';
import { createGunzip, createGzip, gunzip, gzip } from 'node:zlib';
import type { Compression } from '../../shared/config/receiver';
import { requireExternal, requireZstdBinding } from '../../shared/checksum';
import { BarmanError, ErrorCode } from '../../shared/errors';
import { frameCollector } from '../../shared/protocol/chunks';
import { checkZstdFrame } from '../../shared/protocol/zstd-frame';

export { COMPRESSIONS, type Compression } from '../../shared/config/receiver';

/** plain bytes per zstd / lz4 frame */
export const BLOCK_SIZE = 1024 * 1024;
/** frames compressed or decompressed at the same time by one stream */
const PIPELINE = 2;
/** decompressed frames a reader may leave waiting before the decompressor stops taking input */
const READ_AHEAD = 2;
/** zstd level: 1 is as fast as copying on WAL and within a few percent of level 3's ratio */
export const ZSTD_LEVEL = 1;
const GZIP_LEVEL = 1;
/** a frame longer than this was not written by us; refuse rather than buffer it */
const MAX_FRAME_BYTES = 4 * BLOCK_SIZE;

const SUFFIX: Record<Compression, string> = { none: '', gzip: '.gz', lz4: '.lz4', zstd: '.zst' };

/** The key an object is stored under: the catalog's key plus the compression's suffix. */
export function storedKey(key: string, compression: Compression): string {
  return key + SUFFIX[compression];
}

/** How a stored object is compressed, and the catalog key it holds, read from its stored key. */
export function parseStoredKey(stored: string): { key: string; compression: Compression } {
  for (const compression of ['gzip', 'lz4', 'zstd'] as const) {
    const suffix = SUFFIX[compression];
    if (stored.endsWith(suffix)) return { key: stored.slice(0, -suffix.length), compression };
  }
  return { key: stored, compression: 'none' };
}

interface Codec {
  compress(block: Buffer): Promise<Buffer>;
  decompress(frame: Buffer): Promise<Buffer>;
  /** length of the complete frame at the start of `buf`, or undefined when more bytes are needed */
  frameLength(buf: Buffer): number | undefined;
}

// the native modules load on first use, so a receiver that stores plain never needs them
type Zstd = typeof import('@mongodb-js/zstd');
type Lz4 = typeof import('lz4-napi');
let zstdModule: Promise<Zstd> | undefined;
let lz4Module: Promise<Lz4> | undefined;

async function loadNative<T>(name: string, load: () => Promise<T & { default?: T }>): Promise<T> {
  try {
    const m = await load();
    return m.default ?? m;
  } catch (err) {
    throw new BarmanError(ErrorCode.STORAGE, `cannot load the ${name} module: ${(err as Error).message}`, `Install barman-ts with its dependencies (npm ci), and keep node_modules/${name} next to the bundle when copying it.`, { cause: err });
  }
}

// (the binding itself, which takes the level: the package's entry point dropped it, and every frame
// came out at zstd's default, level 3, about half as fast as level 1 here)
const zstd = (): Promise<Zstd> => (zstdModule ??= loadNative<Zstd>('@mongodb-js/zstd', async () => requireZstdBinding<Zstd>()));
const lz4 = (): Promise<Lz4> => (lz4Module ??= loadNative<Lz4>('lz4-napi', async () => requireExternal<Lz4>('lz4-napi')));

const zstdCodec: Codec = {
  compress: async (block) => (await zstd()).compress(block, ZSTD_LEVEL),
  decompress: async (frame) => (await zstd()).decompress(frame),
  frameLength: zstdFrameLength,
};

// lz4-napi's frame decoder ran at a fifth of the speed of its block decoder here (132 vs 669 MiB/s
// on 1 MiB blocks) and made the process grow more, so frames are built and taken apart here around
// its block functions: one standard LZ4 frame per block, independent blocks, 1 MB maximum block
// size, no checksums (the catalog's SHA-256 of the plain bytes covers them). Frames from elsewhere
// with linked blocks go through lz4-napi's frame decoder. (Either way, a process that used lz4 keeps
// about 270 MiB more resident memory from the C allocator; it does not grow with the data.)
/** magic, FLG 0x60 (version 1, independent blocks), BD 0x60 (1 MB blocks), header checksum */
const LZ4_FRAME_HEADER = Buffer.from([0x04, 0x22, 0x4d, 0x18, 0x60, 0x60, 0x51]);
const LZ4_END_MARK = Buffer.alloc(4);
const LZ4_UNCOMPRESSED = 0x80000000;
/** block maximum sizes by the BD byte's 3-bit code (4..7) */
const LZ4_BLOCK_MAX: Record<number, number> = { 4: 64 * 1024, 5: 256 * 1024, 6: 1024 * 1024, 7: 4 * 1024 * 1024 };

async function lz4CompressFrame(block: Buffer): Promise<Buffer> {
  // lz4-napi's compress() prepends the plain length (4 bytes, little-endian) to a raw LZ4 block
  const raw = block.length === 0 ? undefined : (await (await lz4()).compress(block)).subarray(4);
  const size = Buffer.alloc(4);
  if (!raw) return Buffer.concat([LZ4_FRAME_HEADER, LZ4_END_MARK]);
  if (raw.length >= block.length) {
    size.writeUInt32LE((block.length | LZ4_UNCOMPRESSED) >>> 0);
    return Buffer.concat([LZ4_FRAME_HEADER, size, block, LZ4_END_MARK]);
  }
  size.writeUInt32LE(raw.length);
  return Buffer.concat([LZ4_FRAME_HEADER, size, raw, LZ4_END_MARK]);
}

async function lz4DecompressFrame(frame: Buffer): Promise<Buffer> {
  const flags = frame[4]!;
  if (frame.readUInt32LE(0) !== LZ4_MAGIC) return Buffer.alloc(0); // a skippable frame
  if (!((flags >> 5) & 1)) return (await lz4()).decompressFrame(frame);
  const blockMax = LZ4_BLOCK_MAX[(frame[5]! >> 4) & 7];
  if (!blockMax) throw new Error(`invalid lz4 block maximum size code ${(frame[5]! >> 4) & 7}`);
  const blockChecksum = (flags >> 4) & 1;
  const declared = Buffer.alloc(4);
  declared.writeUInt32LE(blockMax);
  const out: Buffer[] = [];
  let pos = 7 + ((flags >> 3) & 1 ? 8 : 0) + (flags & 1 ? 4 : 0);
  for (;;) {
    const word = frame.readUInt32LE(pos);
    pos += 4;
    if (word === 0) break;
    const length = word & 0x7fffffff;
    const data = frame.subarray(pos, pos + length);
    pos += length + (blockChecksum ? 4 : 0);
    if (word & LZ4_UNCOMPRESSED) out.push(data);
    // uncompress() reads the size prefix as an upper bound and returns what the block holds
    else out.push(await (await lz4()).uncompress(Buffer.concat([declared, data])));
  }
  return out.length === 1 ? out[0]! : Buffer.concat(out);
}

/** The plain bytes of one zstd frame (checked by checkZstdBlockFrame first when it comes from elsewhere). */
export function zstdDecompressFrame(frame: Buffer): Promise<Buffer> {
  return zstdCodec.decompress(frame);
}

/**
 * Every 16 frames an agent sent, a collection of V8's young generation (frameCollector). Every 4,
 * as on the agent, a backup of 6 GB (pgbench -s 200 and 3 GB more) cost the receiver 4.8-6.5 s of
 * CPU (median 5.5) and peaked at 120-149 MiB; every 16, 4.4-5.2 s (median 4.9) and 102-117 MiB
 * (eight backups each, interleaved); every 64, or never, 4.3-5.7 s and 113-137 MiB (four each).
 */
const receivedFrameDone = frameCollector(16);

/**
 * The plain bytes of a frame an agent sent (a chunk): checked by checkZstdBlockFrame before it
 * is decompressed. Throws a plain Error saying what is wrong with it; the caller names the file.
 */
export async function decompressWireFrame(chunk: Uint8Array): Promise<Buffer> {
  const frame = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  checkZstdBlockFrame(frame);
  const plain = await zstdDecompressFrame(frame);
  receivedFrameDone();
  return plain;
}

const lz4Codec: Codec = {
  compress: lz4CompressFrame,
  decompress: lz4DecompressFrame,
  frameLength: lz4FrameLength,
};

/**
 * Plain bytes in, stored bytes out; undefined for `none`. `ownsChunks`: the writer hands each
 * chunk over and never changes it afterwards, so a whole block of it is compressed where it is
 * instead of being copied first.
 */
export function compressor(compression: Compression, ownsChunks = false): Transform | undefined {
  switch (compression) {
    case 'none':
      return undefined;
    case 'gzip':
      return createGzip({ level: GZIP_LEVEL });
    case 'zstd':
      return new BlockCompressor(zstdCodec, ownsChunks);
    case 'lz4':
      return new BlockCompressor(lz4Codec, ownsChunks);
  }
}

const gzipWhole = promisify(gzip);

/**
 * A whole small object (a bundle member) compressed at once: the same frames the streaming
 * compressor makes (one per BLOCK_SIZE plain bytes; one gzip member), so decompressor() reads it,
 * alone or as part of a bundle cut at its boundaries. Nothing for an empty one.
 */
export async function compressWhole(compression: Compression, plain: Buffer): Promise<Buffer> {
  if (plain.length === 0 || compression === 'none') return plain;
  if (compression === 'gzip') return gzipWhole(plain, { level: GZIP_LEVEL });
  const codec = compression === 'zstd' ? zstdCodec : lz4Codec;
  if (plain.length <= BLOCK_SIZE) return codec.compress(plain);
  const frames: Promise<Buffer>[] = [];
  for (let at = 0; at < plain.length; at += BLOCK_SIZE) frames.push(codec.compress(plain.subarray(at, at + BLOCK_SIZE)));
  return Buffer.concat(await Promise.all(frames));
}

const gunzipWhole = promisify(gunzip);

/**
 * The plain bytes of stored bytes held whole in memory (a bundle member, read with its bundle):
 * its frames decompressed side by side on the thread pool, each frame's bytes one buffer, in
 * order. `what` names the object in errors (STORAGE_CORRUPT, like decompressor()).
 */
export async function decompressWhole(compression: Compression, stored: Buffer, what: string): Promise<Buffer[]> {
  if (stored.length === 0 || compression === 'none') return stored.length === 0 ? [] : [stored];
  if (compression === 'gzip') {
    try {
      return [await gunzipWhole(stored)];
    } catch (err) {
      throw corrupt(what, 'gzip', err);
    }
  }
  const codec = compression === 'zstd' ? zstdCodec : lz4Codec;
  const work: Promise<Buffer>[] = [];
  try {
    for (let at = 0; at < stored.length; ) {
      const length = codec.frameLength(stored.subarray(at));
      if (length === undefined) throw new Error(`${stored.length - at} bytes at the end are not a whole frame (truncated?)`);
      if (length > MAX_FRAME_BYTES) throw new Error(`a frame is longer than ${MAX_FRAME_BYTES} bytes`);
      const frame = codec.decompress(stored.subarray(at, at + length));
      frame.catch(() => undefined); // awaited below, all of them
      work.push(frame);
      at += length;
    }
    return (await Promise.all(work)).filter((b) => b.length > 0);
  } catch (err) {
    throw corrupt(what, compression, err);
  }
}

/** Stored bytes in, plain bytes out; undefined for `none`. `what` names the object in errors. */
export function decompressor(compression: Compression, what: string): Transform | undefined {
  switch (compression) {
    case 'none':
      return undefined;
    case 'gzip': {
      const gunzip = createGunzip();
      return mapErrors(gunzip, (err) => corrupt(what, 'gzip', err));
    }
    case 'zstd':
      return new FrameDecompressor(zstdCodec, 'zstd', what);
    case 'lz4':
      return new FrameDecompressor(lz4Codec, 'lz4', what);
  }
}

function corrupt(what: string, format: string, cause: unknown): BarmanError {
  const detail = cause instanceof Error ? cause.message : String(cause);
  return new BarmanError(ErrorCode.STORAGE_CORRUPT, `${what} is not valid ${format} data (${detail})`, 'The stored copy is damaged; restore it from another copy of the catalog, or take a new backup.', { cause });
}

function mapErrors(stream: Transform, map: (err: Error) => Error): Transform {
  const destroy = stream.destroy.bind(stream);
  stream.destroy = (err?: Error) => destroy(err && !(err instanceof BarmanError) ? map(err) : err);
  return stream;
}

/**
 * Runs async work on chunks with at most PIPELINE in flight, pushing results in order. The
 * callback of `_transform` waits while the window is full, which is the backpressure upstream.
 */
abstract class Pipelined extends Transform {
  private readonly inFlight: Promise<Buffer>[] = [];
  /** resolves the wait of pushOldest once the reader asks for more */
  private wakeWriter: (() => void) | undefined;

  constructor(options: TransformOptions = { highWaterMark: BLOCK_SIZE }) {
    super(options);
  }

  protected async enqueue(work: Promise<Buffer>): Promise<void> {
    work.catch(() => undefined); // awaited in order below; avoid an unhandled rejection meanwhile
    this.inFlight.push(work);
    while (this.inFlight.length >= PIPELINE) await this.pushOldest();
  }

  protected async drainAll(): Promise<void> {
    while (this.inFlight.length > 0) await this.pushOldest();
  }

  /**
   * Pushes the oldest result, then waits while the reader has as much as it wants (push() says
   * so) before more work starts: one input chunk may hold many frames (1 MiB of stored pgbench
   * data holds ten or more), and pushing them all whatever the reader takes had a recover hold
   * 50-160 MiB of decompressed frames at once.
   */
  private async pushOldest(): Promise<void> {
    const out = await this.inFlight.shift()!;
    if (out.length > 0 && !this.push(out)) await new Promise<void>((resolve) => (this.wakeWriter = resolve));
  }

  override _read(size: number): void {
    const wake = this.wakeWriter;
    this.wakeWriter = undefined;
    wake?.();
    super._read(size);
  }
}

class BlockCompressor extends Pipelined {
  private pending: Buffer[] = [];
  private pendingBytes = 0;

  constructor(private readonly codec: Codec, private readonly ownsChunks = false) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.addPlain(chunk).then(() => done(), done);
  }

  override _flush(done: TransformCallback): void {
    const rest = this.pendingBytes > 0 ? Buffer.concat(this.pending, this.pendingBytes) : undefined;
    this.pending = [];
    this.pendingBytes = 0;
    (async () => {
      if (rest) await this.enqueue(this.codec.compress(rest));
      await this.drainAll();
    })().then(() => done(), done);
  }

  private async addPlain(chunk: Buffer): Promise<void> {
    let offset = 0;
    while (offset < chunk.length) {
      if (this.ownsChunks && this.pendingBytes === 0 && chunk.length - offset >= BLOCK_SIZE) {
        // a whole block of a chunk nobody changes any more: compressed in place, no copy
        await this.enqueue(this.codec.compress(chunk.subarray(offset, offset + BLOCK_SIZE)));
        offset += BLOCK_SIZE;
        continue;
      }
      const n = Math.min(BLOCK_SIZE - this.pendingBytes, chunk.length - offset);
      this.pending.push(chunk.subarray(offset, offset + n));
      this.pendingBytes += n;
      offset += n;
      if (this.pendingBytes === BLOCK_SIZE) {
        // a copy: the caller may reuse its buffer once we return
        const block = Buffer.concat(this.pending, this.pendingBytes);
        this.pending = [];
        this.pendingBytes = 0;
        await this.enqueue(this.codec.compress(block));
      }
    }
  }
}

class FrameDecompressor extends Pipelined {
  private buffered: Buffer = Buffer.alloc(0);

  constructor(private readonly codec: Codec, private readonly format: string, private readonly what: string) {
    // each frame's plain bytes leave as one chunk, never concatenated with the next (a byte-mode
    // readable joins whatever is buffered into one new buffer on every read: a copy of every byte);
    // at most READ_AHEAD frames wait for the reader, so memory stays a few blocks
    super({ writableHighWaterMark: BLOCK_SIZE, readableObjectMode: true, readableHighWaterMark: READ_AHEAD });
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.buffered = this.buffered.length === 0 ? chunk : Buffer.concat([this.buffered, chunk]);
    this.frames().then(() => done(), (err: unknown) => done(corrupt(this.what, this.format, err)));
  }

  override _flush(done: TransformCallback): void {
    (async () => {
      if (this.buffered.length > 0) throw new Error(`${this.buffered.length} bytes at the end are not a whole frame (truncated?)`);
      await this.drainAll();
    })().then(() => done(), (err: unknown) => done(corrupt(this.what, this.format, err)));
  }

  private async frames(): Promise<void> {
    for (;;) {
      const length = this.codec.frameLength(this.buffered);
      if (length === undefined) {
        if (this.buffered.length > MAX_FRAME_BYTES) throw new Error(`a frame is longer than ${MAX_FRAME_BYTES} bytes`);
        return;
      }
      const frame = this.buffered.subarray(0, length);
      this.buffered = this.buffered.subarray(length);
      await this.enqueue(this.codec.decompress(frame));
    }
  }
}

// ---- frame boundaries (RFC 8878 for zstd; the LZ4 Frame Format Description 1.6 for lz4) ----

const ZSTD_MAGIC = 0xfd2fb528;
const LZ4_MAGIC = 0x184d2204;
/** both formats: 0x184D2A50..0x184D2A5F, 4-byte length, then that many bytes to skip */
const isSkippable = (magic: number): boolean => (magic & 0xfffffff0) === 0x184d2a50;

/** A frame's length, or how many bytes telling it needs at least (more than the buffer holds). */
type FrameWalk = { length: number } | { need: number };

/** A frame that ends at `end`: whole in `buf`, or needing `end` bytes. */
const walkTo = (buf: Buffer, end: number): FrameWalk => (buf.length >= end ? { length: end } : { need: end });

/** The length of the skippable frame at the start of `buf`, or how many bytes telling it needs (see zstdFrameWalk). */
function skippableWalk(buf: Buffer): FrameWalk {
  if (buf.length < 8) return { need: 8 };
  return walkTo(buf, 8 + buf.readUInt32LE(4));
}

/** A walk's length, or undefined when `buf` ends inside the frame. */
function walkedLength(walked: FrameWalk): number | undefined {
  return 'length' in walked ? walked.length : undefined;
}

/**
 * How long the frame at the start of `buf` is (`length`), or, when `buf` ends before its end is
 * known, how many bytes the walk of its headers needs at least to go on (`need`, more than `buf`
 * holds). Throws on what is not a zstd (or skippable) frame.
 */
function zstdFrameWalk(buf: Buffer): FrameWalk {
  if (buf.length < 4) return { need: 4 };
  const magic = buf.readUInt32LE(0);
  if (isSkippable(magic)) return skippableWalk(buf);
  if (magic !== ZSTD_MAGIC) throw new Error(`no zstd frame magic (found 0x${magic.toString(16)})`);
  if (buf.length < 5) return { need: 5 };
  const descriptor = buf[4]!;
  const fcsFlag = descriptor >> 6;
  const singleSegment = (descriptor >> 5) & 1;
  const checksum = (descriptor >> 2) & 1;
  const dictIdFlag = descriptor & 3;
  if (descriptor & 0x08) throw new Error('reserved bit set in the zstd frame header');
  let pos = 5 + (singleSegment ? 0 : 1) + [0, 1, 2, 4][dictIdFlag]! + [singleSegment, 2, 4, 8][fcsFlag]!;
  for (;;) {
    if (buf.length < pos + 3) return { need: pos + 3 };
    const header = buf[pos]! | (buf[pos + 1]! << 8) | (buf[pos + 2]! << 16);
    const last = header & 1;
    const type = (header >> 1) & 3;
    const size = header >>> 3;
    if (type === 3) throw new Error('reserved zstd block type');
    pos += 3 + (type === 1 ? 1 : size);
    if (last) break;
  }
  return walkTo(buf, pos + (checksum ? 4 : 0));
}

/** The length of the frame at the start of `buf`, or undefined when `buf` ends inside it. */
export function zstdFrameLength(buf: Buffer): number | undefined {
  return walkedLength(zstdFrameWalk(buf));
}

/** blocks one frame an agent sends may have: at most 128 KiB of plain bytes each, 8 MiB in all */
const MAX_WIRE_BLOCKS = 64;

/**
 * Checks that `buf` is exactly one zstd frame of a shape the streaming compressor makes (what an
 * agent sends compressed must be that too), by its headers alone, before anything decompresses
 * it: a frame of another shape, or of so many blocks that it could decompress to more than a few
 * MiB (a compression bomb), is refused. zstd blocks hold at most 128 KiB of plain bytes.
 */
export function checkZstdBlockFrame(buf: Buffer): void {
  // a BLOCK_SIZE frame is 8 or 9 blocks; the bound keeps what one frame can decompress to small
  checkZstdFrame(buf, MAX_WIRE_BLOCKS);
}

/**
 * The frames of a stored zstd object as they are, one buffer each (skippable frames left out), for
 * a reader that decompresses them itself. What is not whole frames is refused (STORAGE_CORRUPT,
 * `what` naming the object). Frames are handed out as views of the reads; only a frame that
 * straddles reads is copied, joined to as little of the next read as the walk of its headers
 * needs, where the rest of each read was copied with it (a MiB of fresh memory per read).
 */
export async function* zstdStoredFrames(stored: AsyncIterable<Buffer> | Iterable<Buffer>, what: string): AsyncGenerator<Buffer> {
  /** the start of a frame the reads so far end inside, its byte count, and what its walk needs */
  let begun: Buffer[] = [];
  let held = 0;
  let need = 0;
  try {
    for await (const chunk of stored) {
      let rest = chunk;
      while (held > 0) {
        if (held + rest.length < need) {
          // not enough yet for the next step of the walk: kept as read, no copy
          begun.push(rest);
          held += rest.length;
          rest = rest.subarray(rest.length);
          break;
        }
        // at least doubles what is held, so a frame cut into many small reads is copied a few times, not once per read
        const take = Math.min(rest.length, Math.max(need - held, held));
        const joined = Buffer.concat([...begun, rest.subarray(0, take)]);
        const walked = zstdFrameWalk(joined);
        if ('need' in walked) {
          begun = [joined];
          held = joined.length;
          need = walked.need;
          rest = rest.subarray(take);
          continue;
        }
        if (joined.readUInt32LE(0) === ZSTD_MAGIC) yield joined.subarray(0, walked.length);
        rest = rest.subarray(walked.length - held);
        begun = [];
        held = 0;
      }
      while (rest.length > 0) {
        const walked = zstdFrameWalk(rest);
        if ('need' in walked) {
          begun = [rest];
          held = rest.length;
          need = walked.need;
          break;
        }
        const frame = rest.subarray(0, walked.length);
        rest = rest.subarray(walked.length);
        if (frame.readUInt32LE(0) === ZSTD_MAGIC) yield frame;
      }
      if (held > MAX_FRAME_BYTES) throw new Error(`a frame is longer than ${MAX_FRAME_BYTES} bytes`);
    }
    if (held > 0) throw new Error(`${held} bytes at the end are not a whole frame (truncated?)`);
  } catch (err) {
    throw corrupt(what, 'zstd', err);
  }
}

export function lz4FrameLength(buf: Buffer): number | undefined {
  if (buf.length < 4) return undefined;
  const magic = buf.readUInt32LE(0);
  if (isSkippable(magic)) return walkedLength(skippableWalk(buf));
  if (magic !== LZ4_MAGIC) throw new Error(`no lz4 frame magic (found 0x${magic.toString(16)})`);
  if (buf.length < 6) return undefined;
  const flags = buf[4]!;
  if (flags >> 6 !== 1) throw new Error(`unsupported lz4 frame version ${flags >> 6}`);
  const blockChecksum = (flags >> 4) & 1;
  const contentSize = (flags >> 3) & 1;
  const contentChecksum = (flags >> 2) & 1;
  const dictId = flags & 1;
  let pos = 6 + (contentSize ? 8 : 0) + (dictId ? 4 : 0) + 1;
  for (;;) {
    if (buf.length < pos + 4) return undefined;
    const word = buf.readUInt32LE(pos);
    pos += 4;
    if (word === 0) break; // EndMark
    pos += (word & 0x7fffffff) + (blockChecksum ? 4 : 0);
  }
  pos += contentChecksum ? 4 : 0;
  return buf.length >= pos ? pos : undefined;
}
