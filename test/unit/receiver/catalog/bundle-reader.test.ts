import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { type BackupContents, BundleReader } from '../../../../receiver/catalog/backups';
import { BLOCK_SIZE, COMPRESSIONS, type Compression, compressWhole } from '../../../../receiver/storage/compression';
import { PosixDriver } from '../../../../receiver/storage/posix-driver';
import { Storage } from '../../../../receiver/storage/storage';
import { BarmanError, ErrorCode } from '../../../../shared/errors';

const dir = mkdtempSync(join(tmpdir(), 'barman-unit-bundles-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** bytes that compress a little: pages with noise at their start */
const sample = (n: number) => {
  const b = Buffer.alloc(n, 7);
  for (let i = 0; i < n; i += 8192) randomBytes(Math.min(300, n - i)).copy(b, i);
  return b;
};

/** `bundles` bundles of the members' plain bytes (one of them empty, one of two frames), stored as a backup stores them */
async function storeBundles(storage: Storage, compression: Compression, bundles: number): Promise<{ contents: BackupContents; plain: Map<string, Buffer> }> {
  const contents: BackupContents = { directories: [], files: {} };
  const plain = new Map<string, Buffer>();
  for (let b = 1; b <= bundles; b++) {
    const writer = await storage.openStoredWrite(`main/base/x/bundles/${String(b).padStart(6, '0')}`, compression);
    let offset = 0;
    for (const [i, size] of [3, 0, 20_000, BLOCK_SIZE + 5000, 8192].entries()) {
      const path = `base/${b}/${i}`;
      const bytes = sample(size);
      const member = await compressWhole(compression, bytes);
      await writer.write(member);
      contents.files[path] = { key: writer.key, size, offset, length: member.length };
      plain.set(path, bytes);
      offset += member.length;
    }
    await writer.commit();
  }
  return { contents, plain };
}

async function bytesOf(reader: BundleReader, contents: BackupContents, path: string): Promise<Buffer> {
  return Buffer.concat(await reader.member(contents.files[path]!));
}

describe('BundleReader: the small files of a restore, each bundle read whole once', () => {
  it.each(COMPRESSIONS.map((c) => [c]))('%s: gives back every member byte for byte, reading each bundle once in the backup\'s order', async (compression) => {
    const storage = new Storage(new PosixDriver(join(dir, `order-${compression}`)));
    const { contents, plain } = await storeBundles(storage, compression, 2);
    const reads: string[] = [];
    const readStored = storage.readStored.bind(storage);
    storage.readStored = (key, limit) => (reads.push(key), readStored(key, limit));
    const reader = new BundleReader(storage, contents);
    // several members asked for at once, as the writer's workers do
    const paths = Object.keys(contents.files);
    const got = await Promise.all(paths.map((p) => bytesOf(reader, contents, p)));
    paths.forEach((p, i) => expect(got[i]!.equals(plain.get(p)!), p).toBe(true));
    expect(reads).toEqual([...new Set(paths.map((p) => contents.files[p]!.key))]);
  });

  it('holds a few bundles at most: members asked for out of order are still right (a bundle let go is read again)', async () => {
    const storage = new Storage(new PosixDriver(join(dir, 'shuffled')));
    const { contents, plain } = await storeBundles(storage, 'zstd', 6);
    let reads = 0;
    const readStored = storage.readStored.bind(storage);
    storage.readStored = (key, limit) => (reads++, readStored(key, limit));
    const reader = new BundleReader(storage, contents);
    // round robin over the six bundles: more than the reader keeps
    const paths = Object.keys(contents.files).sort((a, b) => a.split('/')[2]!.localeCompare(b.split('/')[2]!) || a.localeCompare(b));
    for (const p of paths) expect((await bytesOf(reader, contents, p)).equals(plain.get(p)!), p).toBe(true);
    expect(reads).toBeGreaterThan(6);
  });

  it('a bundle cut short, or a member that is not a frame, is STORAGE_CORRUPT naming the bundle (the catalog names the file)', async () => {
    const storage = new Storage(new PosixDriver(join(dir, 'damaged')));
    const { contents } = await storeBundles(storage, 'zstd', 1);
    const key = contents.files['base/1/0']!.key;
    const file = join(dir, 'damaged', key);
    const whole = readFileSync(file);
    writeFileSync(file, whole.subarray(0, contents.files['base/1/4']!.offset! + 10));
    const err = await new BundleReader(storage, contents).member(contents.files['base/1/4']!).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BarmanError);
    expect((err as BarmanError).code).toBe(ErrorCode.STORAGE_CORRUPT);
    expect((err as BarmanError).message).toContain(key);

    const garbled = Buffer.from(whole);
    garbled.fill(0x41, contents.files['base/1/2']!.offset!, contents.files['base/1/2']!.offset! + 8);
    writeFileSync(file, garbled);
    const reader = new BundleReader(storage, contents);
    const bad = await reader.member(contents.files['base/1/2']!).catch((e: unknown) => e);
    expect((bad as BarmanError).code).toBe(ErrorCode.STORAGE_CORRUPT);
    // the other members of the same bundle are unharmed
    expect((await bytesOf(reader, contents, 'base/1/3')).length).toBe(BLOCK_SIZE + 5000);
  });
});
