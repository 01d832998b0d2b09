import { describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chunkPool, fileSource, packFile, sendCompressedChunks, sendFrames, wireCompressor, wireDecompressor, type ChunkSource } from '../../../../shared/protocol/chunks';
import type { FrameConnection } from '../../../../shared/protocol/connection';
import { CHUNK_SIZE, type Frame } from '../../../../shared/protocol/frames';
import { crc32c, crc32cHex } from '../../../../shared/checksum';

/** a source of `bytes`, handed out CHUNK_SIZE at a time */
function bufferSource(bytes: Buffer): ChunkSource {
  let at = 0;
  return async (target) => {
    const n = bytes.copy(target, 0, at, Math.min(bytes.length, at + target.length));
    at += n;
    return n;
  };
}

/** what the frames sent carry, in the order they went out */
function recorder(): { conn: FrameConnection; frames: Frame[] } {
  const frames: Frame[] = [];
  const conn = { send: async (frame: Frame) => void frames.push(frame) } as unknown as FrameConnection;
  return { conn, frames };
}

/** the pool holds all its buffers again: as many can be taken at once as it was made with */
async function poolIsWhole(): Promise<boolean> {
  const pool = chunkPool();
  const taken: Buffer[] = [];
  const got = await Promise.race([
    (async () => {
      for (let i = 0; i < 4; i++) taken.push(await pool.acquire());
      return true;
    })(),
    new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 200)),
  ]);
  for (const b of taken) pool.release(b);
  return got;
}

describe('sendCompressedChunks', () => {
  it('sends the frames in the order of the blocks even when later blocks finish compressing first', async () => {
    const bytes = Buffer.alloc(Math.floor(4.5 * CHUNK_SIZE));
    for (let i = 0; i < bytes.length; i += 4096) bytes[i] = (i / 4096) & 0xff;
    let calls = 0;
    // the first block is the slowest: a tag of its index comes back as the "frame"
    const compress = (plain: Buffer) => {
      const index = calls++;
      const frame = Buffer.from(`${index}:${plain.length}`);
      return new Promise<Buffer>((resolve) => setTimeout(() => resolve(frame), index === 0 ? 30 : 1));
    };
    const { conn, frames } = recorder();
    const sent = await sendCompressedChunks(conn, 7, bufferSource(bytes), compress, () => false, { hashing: false });
    const tags = frames.map((f) => (f.type === 'chunk' ? Buffer.from(f.data).toString() : f.type));
    expect(tags).toEqual([`0:${CHUNK_SIZE}`, `1:${CHUNK_SIZE}`, `2:${CHUNK_SIZE}`, `3:${CHUNK_SIZE}`, `4:${CHUNK_SIZE / 2}`]);
    expect(sent.size).toBe(bytes.length);
    expect(sent.crc32c).toBe(crc32cHex(crc32c()(bytes, 0)));
    expect(await poolIsWhole()).toBe(true);
  });

  it('gives every pooled buffer back when the peer refuses the transfer halfway, including the block read ahead', async () => {
    const bytes = Buffer.alloc(8 * CHUNK_SIZE, 1);
    const { conn, frames } = recorder();
    const stop = () => frames.length >= 2;
    await sendCompressedChunks(conn, 8, bufferSource(bytes), async (plain) => Buffer.from([plain.length & 0xff]), stop, { hashing: false });
    expect(frames.length).toBeLessThan(8);
    expect(await poolIsWhole()).toBe(true);
  });

  it('gives every pooled buffer back when compressing fails', async () => {
    const bytes = Buffer.alloc(6 * CHUNK_SIZE, 2);
    const { conn } = recorder();
    let calls = 0;
    const compress = async () => {
      if (++calls === 2) throw new Error('no memory');
      return Buffer.from([1]);
    };
    await expect(sendCompressedChunks(conn, 9, bufferSource(bytes), compress, () => false, { hashing: false })).rejects.toThrow('no memory');
    expect(await poolIsWhole()).toBe(true);
  });
});

describe('packFile', () => {
  it('hashes the bytes and compresses them in one read: frames of CHUNK_SIZE blocks that decompress to the file', async () => {
    const compress = wireCompressor('zstd');
    const inflate = wireDecompressor();
    expect(compress && inflate).toBeTruthy();
    const bytes = Buffer.alloc(3 * CHUNK_SIZE + 1000);
    for (let i = 0; i < bytes.length; i += 512) bytes.writeUInt32LE(i * 2654435761 >>> 0, i);
    const dir = await mkdtemp(join(tmpdir(), 'pack-'));
    try {
      await writeFile(join(dir, 'seg'), bytes);
      const fh = await open(join(dir, 'seg'), 'r');
      try {
        const packed = await packFile(fileSource(fh, 0), compress!, 'zstd');
        expect(packed.size).toBe(bytes.length);
        expect(packed.sha256).toBe(createHash('sha256').update(bytes).digest('hex'));
        // the CRC-32C the receiver checks the frames' plain bytes against, of the same bytes
        expect(packed.crc32c).toBe(crc32cHex(crc32c()(bytes)));
        expect(packed.compression).toBe('zstd');
        expect(packed.frames).toHaveLength(4);
        const plain = await Promise.all(packed.frames.map((f) => inflate!(f)));
        expect(plain.map((p) => p.length)).toEqual([CHUNK_SIZE, CHUNK_SIZE, CHUNK_SIZE, 1000]);
        expect(Buffer.concat(plain).equals(bytes)).toBe(true);
        // positioned reads: the descriptor's own position is still at the start (a fallback reads the file again from there)
        const again = Buffer.alloc(16);
        expect((await fh.read(again, 0, 16, null)).bytesRead).toBe(16);
        expect(again.equals(bytes.subarray(0, 16))).toBe(true);
      } finally {
        await fh.close();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
    expect(await poolIsWhole()).toBe(true);
  });

  it('compresses at most two blocks at a time (each one a pooled MiB more touched)', async () => {
    let now = 0;
    let most = 0;
    const compress = async (plain: Buffer) => {
      most = Math.max(most, ++now);
      await new Promise((resolve) => setTimeout(resolve, 2));
      now--;
      return Buffer.from([plain.length & 0xff]);
    };
    const packed = await packFile(bufferSource(Buffer.alloc(8 * CHUNK_SIZE, 5)), compress, 'zstd');
    expect(packed.frames).toHaveLength(8);
    expect(most).toBe(2);
    expect(await poolIsWhole()).toBe(true);
  });

  it('gives every pooled buffer back when compressing or reading fails, and fails with that error', async () => {
    let calls = 0;
    const failing = async () => {
      if (++calls === 3) throw new Error('no memory');
      return Buffer.from([1]);
    };
    await expect(packFile(bufferSource(Buffer.alloc(6 * CHUNK_SIZE, 3)), failing, 'zstd')).rejects.toThrow('no memory');
    expect(await poolIsWhole()).toBe(true);
    let reads = 0;
    const source: ChunkSource = async (target) => {
      if (++reads === 3) throw new Error('EIO');
      target.fill(4);
      return target.length;
    };
    await expect(packFile(source, async () => Buffer.from([1]), 'zstd')).rejects.toThrow('EIO');
    expect(await poolIsWhole()).toBe(true);
  });
});

describe('sendFrames', () => {
  it('sends each frame as a chunk of the request, in order, and stops when asked', async () => {
    const frames = [Buffer.from('a'), Buffer.from('b'), Buffer.from('c')];
    const all = recorder();
    await sendFrames(all.conn, 5, frames);
    expect(all.frames.map((f) => (f.type === 'chunk' ? `${f.id}:${Buffer.from(f.data).toString()}` : f.type))).toEqual(['5:a', '5:b', '5:c']);
    const some = recorder();
    await sendFrames(some.conn, 6, frames, () => some.frames.length >= 1);
    expect(some.frames).toHaveLength(1);
  });
});
