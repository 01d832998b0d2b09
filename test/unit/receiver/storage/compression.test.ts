import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterAll, describe, expect, it } from 'vitest';
import { BLOCK_SIZE, checkZstdBlockFrame, COMPRESSIONS, type Compression, compressWhole, compressor, decompressor, decompressWhole, parseStoredKey, storedKey } from '../../../../receiver/storage/compression';
import { PosixDriver } from '../../../../receiver/storage/posix-driver';
import { Storage } from '../../../../receiver/storage/storage';
import { BarmanError, ErrorCode } from '../../../../shared/errors';

async function through(stream: ReturnType<typeof compressor>, input: Buffer, piece = 65_536): Promise<Buffer> {
  if (!stream) return input;
  const out: Buffer[] = [];
  const pieces = function* () {
    for (let i = 0; i < input.length; i += piece) yield input.subarray(i, i + piece);
  };
  await pipeline(Readable.from(pieces()), stream, async (source: AsyncIterable<Buffer>) => {
    for await (const c of source) out.push(c);
  });
  return Buffer.concat(out);
}

const dir = mkdtempSync(join(tmpdir(), 'barman-unit-compression-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** bytes that compress: WAL-like pages with some noise */
const sample = (n: number) => {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i += 8192) randomBytes(Math.min(512, n - i)).copy(b, i);
  return b;
};

describe('stored keys say how an object is stored', () => {
  it.each([
    ['none', 'main/wals/0000000100000000/000000010000000000000001', 'main/wals/0000000100000000/000000010000000000000001'],
    ['gzip', 'main/wals/x', 'main/wals/x.gz'],
    ['lz4', 'main/wals/x', 'main/wals/x.lz4'],
    ['zstd', 'main/wals/00000002.history', 'main/wals/00000002.history.zst'],
  ] as const)('%s', (compression, key, stored) => {
    expect(storedKey(key, compression)).toBe(stored);
    expect(parseStoredKey(stored)).toEqual({ key, compression });
  });
});

describe.each(COMPRESSIONS.filter((c) => c !== 'none').map((c) => ({ c })))('$c', ({ c }: { c: Compression }) => {
  it.each([0, 1, 1000, BLOCK_SIZE - 1, BLOCK_SIZE, BLOCK_SIZE + 1, 3 * BLOCK_SIZE + 12345])('round-trips %i bytes, whatever the piece sizes', async (n) => {
    const plain = sample(n);
    const packed = await through(compressor(c), plain, 100_003);
    // stored bytes arrive in pieces that cut frames anywhere
    for (const piece of [1, 4093, 1 << 20]) {
      if (piece === 1 && packed.length > 50_000) continue;
      expect((await through(decompressor(c, 'test'), packed, piece)).equals(plain)).toBe(true);
    }
  });

  it('writes what the standard tool reads, and reads what it writes', async () => {
    const plain = sample(2 * BLOCK_SIZE + 777);
    const tool = { gzip: ['gzip', '-1'], lz4: ['lz4', '-1'], zstd: ['zstd', '-1'] }[c as 'gzip' | 'lz4' | 'zstd'];
    const packedPath = join(dir, `ours.${c}`);
    writeFileSync(packedPath, await through(compressor(c), plain));
    expect(execFileSync(tool[0]!, ['-d', '-c', packedPath], { maxBuffer: 64 << 20 }).equals(plain)).toBe(true);
    const theirs = execFileSync(tool[0]!, [tool[1]!, '-c'], { input: plain, maxBuffer: 64 << 20 });
    expect((await through(decompressor(c, 'test'), theirs)).equals(plain)).toBe(true);
  });

  it('refuses damaged and truncated data with STORAGE_CORRUPT', async () => {
    const packed = await through(compressor(c), sample(BLOCK_SIZE + 5000));
    const flipped = Buffer.from(packed);
    flipped[0]! ^= 0xff;
    const truncated = packed.subarray(0, packed.length - 7);
    for (const bad of [flipped, truncated]) {
      const err = await through(decompressor(c, 'main/wals/x'), bad).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(BarmanError);
      expect((err as BarmanError).code).toBe(ErrorCode.STORAGE_CORRUPT);
      expect((err as BarmanError).message).toContain('main/wals/x');
    }
  });
});

describe.each((['lz4', 'zstd'] as const).map((c) => ({ c })))('$c frames', ({ c }) => {
  it('decodes no more than a few frames ahead of a slow reader, even from one stored chunk holding many', async () => {
    // 24 frames that compress to a few hundred bytes: one piece of stored bytes holds them all
    const plain = Buffer.alloc(24 * BLOCK_SIZE);
    for (let f = 0; f < 24; f++) plain.fill(f, f * BLOCK_SIZE, (f + 1) * BLOCK_SIZE);
    const packed = await through(compressor(c), plain);
    expect(packed.length).toBeLessThan(BLOCK_SIZE);
    const stream = decompressor(c, 'test')!;
    stream.end(packed);
    const reader: AsyncIterator<Buffer> = stream[Symbol.asyncIterator]();
    const out = [(await reader.next()).value as Buffer];
    // time enough to decode all 24 (a few ms), were it to go on whatever the reader takes
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(stream.readableLength).toBeLessThanOrEqual(2); // READ_AHEAD
    for (let r = await reader.next(); !r.done; r = await reader.next()) out.push(r.value as Buffer);
    expect(Buffer.concat(out).equals(plain)).toBe(true);
  });
});

describe('bundle members: files compressed whole, one after the other in one object', () => {
  const root = mkdtempSync(join(tmpdir(), 'barman-bundle-'));
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  for (const compression of COMPRESSIONS) {
    it(`${compression}: each member reads back alone by its byte range, an empty one too`, async () => {
      const storage = new Storage(new PosixDriver(root));
      const files = [Buffer.alloc(0), Buffer.from('pg_filenode.map'), randomBytes(5000), Buffer.alloc(BLOCK_SIZE * 2 + 17, 3), Buffer.alloc(0)];
      const writer = await storage.openStoredWrite(`b/${compression}`, compression);
      const ranges: Array<{ start: number; end: number }> = [];
      let at = 0;
      for (const f of files) {
        const member = await compressWhole(compression, f);
        if (member.length > 0) await writer.write(member);
        ranges.push({ start: at, end: at + member.length });
        at += member.length;
      }
      const { key } = await writer.commit();
      expect(key).toBe(storedKey(`b/${compression}`, compression));
      for (const [i, f] of files.entries()) {
        const parts: Buffer[] = [];
        for await (const chunk of await storage.readPart(key, ranges[i]!)) parts.push(chunk as Buffer);
        expect(Buffer.concat(parts).equals(f), `member ${i}`).toBe(true);
      }
      // read with the bundle whole (the stored bytes once, each member decompressed from memory): the same bytes
      const stored = await storage.readStored(key, 1 << 30);
      for (const [i, f] of files.entries()) {
        const plain = await decompressWhole(compression, stored.subarray(ranges[i]!.start, ranges[i]!.end), 'member');
        expect(Buffer.concat(plain).equals(f), `member ${i} from memory`).toBe(true);
      }
      // the whole object is a valid stream of its kind: all members, in order
      const whole: Buffer[] = [];
      for await (const chunk of await storage.read(key)) whole.push(chunk as Buffer);
      expect(Buffer.concat(whole).equals(Buffer.concat(files))).toBe(true);
    });
  }
});

describe('decompressWhole: stored bytes held in memory', () => {
  it.each(COMPRESSIONS.filter((c) => c !== 'none').map((c) => [c]))('%s: refuses a member cut short or not of its format with STORAGE_CORRUPT naming it', async (compression) => {
    const member = await compressWhole(compression, sample(3 * BLOCK_SIZE + 99));
    for (const bad of [member.subarray(0, member.length - 3), Buffer.concat([member, Buffer.from('trailing bytes')]), Buffer.from('not compressed at all')]) {
      const err = await decompressWhole(compression, bad, 'bundle 7 (bytes 10-20)').catch((e: unknown) => e);
      expect(err).toBeInstanceOf(BarmanError);
      expect((err as BarmanError).code).toBe(ErrorCode.STORAGE_CORRUPT);
      expect((err as BarmanError).message).toContain('bundle 7 (bytes 10-20)');
    }
  });
});

describe('checkZstdBlockFrame: what an agent may send as one compressed chunk', () => {
  it('takes a frame the compressor makes and refuses two frames, a truncated one, plain bytes and a frame of too many blocks', async () => {
    const plain = randomBytes(BLOCK_SIZE);
    const frame = await compressWhole('zstd', plain);
    expect(() => checkZstdBlockFrame(frame)).not.toThrow();
    expect(() => checkZstdBlockFrame(Buffer.concat([frame, frame]))).toThrow(/not exactly one zstd frame/);
    expect(() => checkZstdBlockFrame(frame.subarray(0, frame.length - 1))).toThrow(/truncated/);
    expect(() => checkZstdBlockFrame(plain)).toThrow(/not a zstd frame/);
    // a bomb: 100 RLE blocks of 128 KiB each (4 bytes apiece on the wire)
    const header = Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x58]);
    const rle = (last: boolean) => {
      const h = ((128 * 1024) << 3) | (1 << 1) | (last ? 1 : 0);
      return Buffer.from([h & 0xff, (h >> 8) & 0xff, (h >> 16) & 0xff, 0x41]);
    };
    const bomb = Buffer.concat([header, ...Array.from({ length: 100 }, (_, i) => rle(i === 99))]);
    expect(() => checkZstdBlockFrame(bomb)).toThrow(/more than 64 blocks/);
  });
});
