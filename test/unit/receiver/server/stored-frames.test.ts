// What the receiver sends for each stored zstd frame of a file sent as frames (get-backup-file with
// accept: 'zstd'): the frame as it is, or, when it is longer than a chunk may be (a block that did
// not compress, stored raw), its plain bytes flagged so; and the stored frames cut from what is
// stored, refused when they are not whole.

import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { BarmanError, ErrorCode } from '../../../../shared/errors';
import { CHUNK_SIZE } from '../../../../shared/protocol/frames';
import { refuseBackupFrame, storedFrameChunk } from '../../../../receiver/server/session';
import { zstdStoredFrames } from '../../../../receiver/storage/compression';

const zstd = require('@mongodb-js/zstd/bindings.js') as { compress(b: Buffer, level: number): Promise<Buffer> };

async function collect(it: AsyncIterable<Buffer>): Promise<Buffer[]> {
  const out: Buffer[] = [];
  for await (const b of it) out.push(Buffer.from(b));
  return out;
}

describe('storedFrameChunk', () => {
  it('sends a frame that fits a chunk as it is', async () => {
    const frame = await zstd.compress(Buffer.alloc(CHUNK_SIZE, 5), 1);
    const chunk = await storedFrameChunk(frame, refuseBackupFrame('main', '20260101T000000', 'base/1/1'));
    expect(chunk.plain).toBeUndefined();
    expect(chunk.data.equals(frame)).toBe(true);
  });

  it('sends the plain bytes of a frame longer than a chunk (an incompressible block), flagged', async () => {
    const plain = randomBytes(CHUNK_SIZE);
    const frame = await zstd.compress(plain, 1);
    expect(frame.length).toBeGreaterThan(CHUNK_SIZE);
    const chunk = await storedFrameChunk(frame, refuseBackupFrame('main', '20260101T000000', 'base/1/1'));
    expect(chunk.plain).toBe(true);
    expect(chunk.data.equals(plain)).toBe(true);
  });

  it('refuses a long stored frame that decompresses to more than a chunk, naming the file', async () => {
    const frame = await zstd.compress(randomBytes(CHUNK_SIZE + 4096), 1);
    const err = await storedFrameChunk(frame, refuseBackupFrame('main', '20260101T000000', 'base/1/1')).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BarmanError);
    expect((err as BarmanError).code).toBe(ErrorCode.CHECKSUM_MISMATCH);
    expect((err as BarmanError).message).toMatch(/^backup 20260101T000000: base\/1\/1 in the catalog does not match its manifest: a stored zstd frame /);
    expect((err as BarmanError).hint).toBe('Run barman-receiver verify-backup main 20260101T000000 on the backup host; recover or restore from another backup (list-backups).');
  });
});

describe('zstdStoredFrames', () => {
  it('cuts stored bytes into their frames, wherever the reads end, leaving skippable frames out', async () => {
    const a = await zstd.compress(Buffer.alloc(CHUNK_SIZE, 1), 1);
    const b = await zstd.compress(Buffer.from('the last block'), 1);
    const skippable = Buffer.from([0x50, 0x2a, 0x4d, 0x18, 2, 0, 0, 0, 9, 9]);
    const stored = Buffer.concat([a, skippable, b]);
    const reads = [stored.subarray(0, 3), stored.subarray(3, a.length + 4), stored.subarray(a.length + 4)];
    const frames = await collect(zstdStoredFrames(reads, 'x'));
    expect(frames.map((f) => f.toString('hex'))).toEqual([a.toString('hex'), b.toString('hex')]);
  });

  it('gives every frame whole and only once, however the reads cut them: 1-byte reads, reads shorter than a frame, a frame longer than a read', async () => {
    const plains = [Buffer.alloc(CHUNK_SIZE, 7), randomBytes(200_000), Buffer.from('x'), Buffer.alloc(70_000, 3), randomBytes(5000)];
    const frames = await Promise.all(plains.map((p) => zstd.compress(p, 1)));
    const stored = Buffer.concat(frames);
    const want = frames.map((f) => f.toString('hex'));
    for (const sizes of [[1], [3, 5], [4096], [65_535, 17], [150_000], [stored.length]]) {
      const reads: Buffer[] = [];
      for (let at = 0, i = 0; at < stored.length; i++) {
        const n = sizes[i % sizes.length]!;
        reads.push(stored.subarray(at, at + n));
        at += n;
      }
      const got = await collect(zstdStoredFrames(reads, 'x'));
      expect(got.map((f) => f.toString('hex')), `reads of ${sizes.join(', ')} bytes`).toEqual(want);
    }
  });

  it('refuses stored bytes that end inside a frame or are not zstd', async () => {
    const a = await zstd.compress(Buffer.alloc(5000, 1), 1);
    const cut = await collect(zstdStoredFrames([a.subarray(0, a.length - 1)], 'the object')).catch((e: unknown) => e);
    expect((cut as BarmanError).code).toBe(ErrorCode.STORAGE_CORRUPT);
    expect((cut as BarmanError).message).toMatch(/the object is not valid zstd data/);
    const other = await collect(zstdStoredFrames([Buffer.from('not zstd at all')], 'the object')).catch((e: unknown) => e);
    expect((other as BarmanError).code).toBe(ErrorCode.STORAGE_CORRUPT);
  });
});
