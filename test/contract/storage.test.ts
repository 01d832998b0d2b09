// The storage contract, written once and run against every driver (posix in a temp folder, s3 on
// a real Ceph RADOS Gateway), each with every compression: what the catalog may rely on whatever
// it is stored on. A new driver passes this file before the catalog may use it.

import { createHash, randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { beforeAll, describe, expect, it } from 'vitest';
import { COMPRESSIONS, type Compression, storedKey } from '../../receiver/storage/compression';
import { ownerOfThisProcess } from '../../receiver/storage/lease';
import { openStorage } from '../../receiver/storage/open';
import { PosixDriver } from '../../receiver/storage/posix-driver';
import type { S3Driver } from '../../receiver/storage/s3';
import { Storage } from '../../receiver/storage/storage';
import { BarmanError, ErrorCode } from '../../shared/errors';
import { type CephGateway, cephInstalled, startCeph } from '../harness/ceph';
import { freePort, makeTempDir } from '../harness/env';
import { waitFor } from '../harness/wait';

const MiB = 1024 * 1024;
/** the s3 driver's smallest part size, so multipart starts at 5 MiB here */
const PART = 5 * MiB;

interface Target {
  storage: Storage;
  /** what interrupted writes left behind: temp files, incomplete multipart uploads */
  leftovers(): Promise<string[]>;
}

interface DriverUnderTest {
  name: 'posix' | 's3';
  setUp(): Promise<void>;
  /** a fresh, empty storage for one test */
  fresh(): Promise<Target>;
}

function posixTempFiles(root: string): string[] {
  const out: string[] = [];
  const walk = (dir: string) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      if (e.isDirectory()) walk(join(dir, e.name));
      else if (e.name.startsWith('.')) out.push(join(dir, e.name));
    }
  };
  walk(root);
  return out;
}

const posix: DriverUnderTest = {
  name: 'posix',
  setUp: async () => undefined,
  fresh: async () => {
    const root = makeTempDir('storage');
    return { storage: new Storage(new PosixDriver(root)), leftovers: async () => posixTempFiles(root) };
  },
};

let gateway: CephGateway | undefined;
const BUCKET = 'barman-contract';
let prefixes = 0;
const s3: DriverUnderTest = {
  name: 's3',
  setUp: async () => {
    gateway = await startCeph();
    await gateway.createBucket(BUCKET);
  },
  fresh: async () => {
    const storage = await openStorage(gateway!.storageConfig(BUCKET, `t${++prefixes}/`), '/nonexistent', { s3: { partSize: PART } });
    const driver = storage.driver as S3Driver;
    return { storage, leftovers: async () => (await driver.incompleteUploads()).map((u) => `multipart upload of ${u.key}`) };
  },
};

const drivers = cephInstalled() ? [posix, s3] : [posix];
if (!cephInstalled()) {
  // CI must test every driver; a developer without Ceph still gets the posix half
  if (process.env.CI) throw new Error('Ceph (ceph-mon, ceph-osd, radosgw) is not installed; .ci/run installs it');
  console.warn('Ceph (ceph-mon, ceph-osd, radosgw) is not installed: the s3 driver is not tested; .ci/run installs it');
}

/** `size` bytes of which `random` is noise and the rest zeros, made and hashed chunk by chunk. */
async function* payload(size: number, hash?: ReturnType<typeof createHash>, random = 0.5, chunk = MiB): AsyncGenerator<Buffer> {
  for (let off = 0; off < size; off += chunk) {
    const n = Math.min(chunk, size - off);
    const buf = Buffer.alloc(n);
    randomBytes(Math.floor(n * random)).copy(buf);
    hash?.update(buf);
    yield buf;
  }
}

async function bytesOf(storage: Storage, key: string, range?: { start: number; end?: number }): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of await storage.read(key, range)) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

/** Byte equality by length and digest (toEqual walks big buffers byte by byte, slowly). */
function expectBytes(actual: Buffer, expected: Uint8Array): void {
  const digest = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
  expect({ length: actual.length, sha256: digest(actual) }).toEqual({ length: expected.length, sha256: digest(expected) });
}

async function keysOf(storage: Storage, prefix: string): Promise<string[]> {
  const out: string[] = [];
  for await (const o of storage.list(prefix)) out.push(o.key);
  return out;
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(BarmanError);
    expect((err as BarmanError).hint.length).toBeGreaterThan(0);
    return (err as BarmanError).code;
  }
  return 'no error';
}

// V8's collector, callable from the test (vitest's workers do not run with --expose-gc)
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/**
 * Peak growth of the memory this process holds while `work` runs: JS heap plus buffers, sampled
 * right after a collection, so garbage not yet collected does not count and what the code keeps
 * does. (RSS is reported too; it also moves with when the collector happens to run.)
 */
async function memoryGrowth(work: () => Promise<void>): Promise<{ held: number; rss: number }> {
  const held = () => {
    gc();
    const m = process.memoryUsage();
    return m.heapUsed + m.external;
  };
  const base = held();
  const baseRss = process.memoryUsage.rss();
  let peak = base;
  let peakRss = baseRss;
  const timer = setInterval(() => {
    peak = Math.max(peak, held());
    peakRss = Math.max(peakRss, process.memoryUsage.rss());
  }, 200);
  try {
    await work();
  } finally {
    clearInterval(timer);
  }
  return { held: Math.max(0, peak - base), rss: Math.max(0, peakRss - baseRss) };
}

describe.each(drivers)('$name driver', (driver) => {
  beforeAll(() => driver.setUp(), 120_000);

  describe.each(COMPRESSIONS.map((c) => ({ c })))('compression $c', ({ c }: { c: Compression }) => {
    it('stores and reads back the plain bytes under a key that says how they are stored', async () => {
      const { storage } = await driver.fresh();
      const data = Buffer.concat([randomBytes(300_000), Buffer.alloc(2 * MiB + 17, 7)]);
      const result = await storage.put('main/wals/0000000100000000/000000010000000000000001', data, { compression: c });
      expect(result.key).toBe(storedKey('main/wals/0000000100000000/000000010000000000000001', c));
      expect(result.size).toBe(data.length);
      expectBytes(await bytesOf(storage, result.key), data);
      const listed = [];
      for await (const o of storage.list('main/wals/')) listed.push(o);
      expect(listed.map((o) => [o.key, o.plainKey, o.compression, o.size])).toEqual([[result.key, 'main/wals/0000000100000000/000000010000000000000001', c, result.storedSize]]);
      expect((await storage.stat(result.key))?.size).toBe(result.storedSize);
      if (c !== 'none') expect(result.storedSize).toBeLessThan(data.length);
      // an empty object is an object
      const empty = await storage.put('main/empty', new Uint8Array(0), { compression: c });
      expectBytes(await bytesOf(storage, empty.key), Buffer.alloc(0));
    });

    it('shows nothing under the key before commit, and nothing at all after abort', async () => {
      const { storage, leftovers } = await driver.fresh();
      const key = 'main/base/20260101T000000/data.tar';
      const stored = storedKey(key, c);
      const writer = await storage.openWrite(key, { compression: c });
      expect(writer.key).toBe(stored);
      const hash = createHash('sha256');
      let n = 0;
      for await (const chunk of payload(12 * MiB, hash)) {
        await writer.write(chunk);
        // a reader at any point in the write sees no object, partial or whole
        if (++n % 4 === 0) {
          expect(await storage.exists(stored)).toBe(false);
          expect(await keysOf(storage, 'main/')).toEqual([]);
          expect(await codeOf(storage.read(stored))).toBe(ErrorCode.STORAGE_NOT_FOUND);
        }
      }
      await writer.commit();
      expect(await keysOf(storage, 'main/')).toEqual([stored]);
      expect(createHash('sha256').update(await bytesOf(storage, stored)).digest('hex')).toBe(hash.digest('hex'));

      // an aborted write of another version of the same key leaves the committed one alone
      const second = await storage.openWrite(key, { compression: c });
      for await (const chunk of payload(12 * MiB)) await second.write(chunk);
      await second.abort();
      await second.abort(); // twice is harmless
      expect(await keysOf(storage, 'main/')).toEqual([stored]);

      const third = await storage.openWrite('main/other', { compression: c });
      for await (const chunk of payload(7 * MiB)) await third.write(chunk);
      await third.abort();
      expect(await storage.exists(storedKey('main/other', c))).toBe(false);
      expect(await keysOf(storage, 'main/')).toEqual([stored]);
      expect(await leftovers()).toEqual([]);
    });

    it('reads a range of the plain bytes', async () => {
      const { storage } = await driver.fresh();
      const data = randomBytes(3 * MiB + 100);
      const { key } = await storage.put('main/ranged', data, { compression: c });
      for (const [start, end] of [[0, 10], [MiB - 5, MiB + 5], [2 * MiB, undefined], [3 * MiB + 99, 3 * MiB + 100], [5, 5]] as const) {
        expectBytes(await bytesOf(storage, key, { start, end }), data.subarray(start, end));
      }
      expectBytes(await bytesOf(storage, key, { start: data.length + 10 }), Buffer.alloc(0));
    });

    it('streams an object over 100 MiB with bounded memory, multipart on s3', async () => {
      const { storage, leftovers } = await driver.fresh();
      // mostly noise, so even compressed the object is far larger than the memory allowed below
      const size = 200 * MiB;
      const written = createHash('sha256');
      let stored = '';
      let storedSize = 0;
      const writeGrowth = await memoryGrowth(async () => {
        ({ key: stored, storedSize } = await storage.put('main/large', payload(size, written, 0.75), { compression: c }));
      });
      const read = createHash('sha256');
      let readBytes = 0;
      const readGrowth = await memoryGrowth(async () => {
        for await (const chunk of await storage.read(stored)) {
          read.update(chunk as Buffer);
          readBytes += (chunk as Buffer).length;
        }
      });
      expect(readBytes).toBe(size);
      expect(read.digest('hex')).toBe(written.digest('hex'));
      const mib = (n: number) => `${(n / MiB).toFixed(0)} MiB`;
      console.log(`${driver.name}/${c}: 200 MiB object (${mib(storedSize)} stored), memory held at most: write +${mib(writeGrowth.held)} (RSS +${mib(writeGrowth.rss)}), read +${mib(readGrowth.held)} (RSS +${mib(readGrowth.rss)})`);
      // far less than the object takes, plain or stored: nothing holds it whole
      expect(storedSize).toBeGreaterThan(140 * MiB);
      expect(writeGrowth.held).toBeLessThan(80 * MiB);
      expect(readGrowth.held).toBeLessThan(80 * MiB);
      expect(await leftovers()).toEqual([]);
    });

    it('takes many writes of different keys at once', async () => {
      const { storage } = await driver.fresh();
      const writers = await Promise.all(Array.from({ length: 16 }, (_, i) => storage.openWrite(`main/base/b1/file-${String(i).padStart(2, '0')}`, { compression: c })));
      const contents = writers.map(() => [] as Buffer[]);
      // interleaved: every writer has a chunk in flight at the same time
      for (let round = 0; round < 4; round++) {
        await Promise.all(writers.map((w, i) => {
          const chunk = Buffer.concat([randomBytes(128 * 1024), Buffer.alloc(200_000, i)]);
          contents[i]!.push(chunk);
          return w.write(chunk);
        }));
      }
      const results = await Promise.all(writers.map((w) => w.commit()));
      expect(results.map((r) => r.key)).toEqual(writers.map((w) => w.key));
      for (const [i, r] of results.entries()) expectBytes(await bytesOf(storage, r.key), Buffer.concat(contents[i]!));
      expect((await keysOf(storage, 'main/base/b1/')).length).toBe(16);
    });
  });

  it('lists by prefix in key order, stats, removes', async () => {
    const { storage } = await driver.fresh();
    const keys = ['main/wals/0000000100000000/000000010000000000000002', 'main/wals/0000000100000000/000000010000000000000001', 'main/wals/00000002.history', 'main/wals-old/x', 'main/base/20260101T000000/backup.info', 'main/base/20260101T000000/data/base/1/1249', 'main/base/20260101T000000/data-x', 'other/wals/00000002.history'];
    for (const k of keys) await storage.put(k, Buffer.from(k));
    expect(await keysOf(storage, 'main/wals/')).toEqual(['main/wals/0000000100000000/000000010000000000000001', 'main/wals/0000000100000000/000000010000000000000002', 'main/wals/00000002.history']);
    // byte order of whole keys: "data-x" before "data/..." ('-' < '/')
    expect(await keysOf(storage, 'main/base/20260101T000000/')).toEqual(['main/base/20260101T000000/backup.info', 'main/base/20260101T000000/data-x', 'main/base/20260101T000000/data/base/1/1249']);
    // a prefix may end in the middle of a name
    expect(await keysOf(storage, 'main/wals')).toEqual(['main/wals-old/x', ...(await keysOf(storage, 'main/wals/'))]);
    expect(await keysOf(storage, 'main/wals/0000000100000000/00000001000000000000000')).toHaveLength(2);
    expect(await keysOf(storage, 'nothing/')).toEqual([]);
    expect((await keysOf(storage, '')).length).toBe(keys.length);

    const st = await storage.stat('main/wals/00000002.history');
    expect(st?.size).toBe('main/wals/00000002.history'.length);
    expect(st!.mtime.getTime()).toBeGreaterThan(Date.now() - 3_600_000);
    expect(await storage.stat('main/wals/00000003.history')).toBeUndefined();
    expect(await storage.stat('main/wals')).toBeUndefined(); // a "directory" is not an object
    expect(await storage.exists('main/wals-old/x')).toBe(true);

    await storage.remove('main/wals-old/x');
    await storage.remove('main/wals-old/x'); // removing what is gone is fine
    expect(await storage.exists('main/wals-old/x')).toBe(false);
    expect(await storage.removePrefix('main/base/20260101T000000/')).toBe(3);
    expect(await keysOf(storage, 'main/')).toEqual(['main/wals/0000000100000000/000000010000000000000001', 'main/wals/0000000100000000/000000010000000000000002', 'main/wals/00000002.history']);
    expect(await keysOf(storage, 'other/')).toEqual(['other/wals/00000002.history']);
  });

  it('removes with a "directory" prefix what interrupted writes left below it too', async () => {
    const { storage, leftovers } = await driver.fresh();
    await storage.put('main/base/20260101T000000/backup.info', Buffer.from('status=FAILED\n'));
    await storage.put('main/base/20260101T000000/data/global/pg_control', randomBytes(8192));
    // a write cut off by a crash: never committed nor aborted (past one part on s3: a multipart upload)
    const cut = await storage.openWrite('main/base/20260101T000000/data/base/1/1259', { sync: false });
    for await (const chunk of payload(PART + MiB)) await cut.write(chunk);
    await waitFor('the interrupted write to leave something behind', async () => (await leftovers()).length > 0);
    const other = await storage.openWrite('main/base/20260102T000000/data/base/1/1259');
    await other.write(randomBytes(1000));
    expect(await storage.removePrefix('main/base/20260101T000000/data/')).toBe(1);
    expect(await keysOf(storage, 'main/base/')).toEqual(['main/base/20260101T000000/backup.info']);
    const left = await leftovers();
    expect(left.filter((l) => l.includes('20260101T000000'))).toEqual([]);
    // another prefix's write in progress is not touched
    await other.commit();
    expect(await keysOf(storage, 'main/base/20260102T000000/')).toEqual(['main/base/20260102T000000/data/base/1/1259']);
    await cut.abort().catch(() => undefined);
  });

  it('names the "directories" one level below a prefix, and none that holds nothing any more', async () => {
    const { storage } = await driver.fresh();
    for (const k of ['main/base/20260102T000000/backup.info', 'main/base/20260101T000000/data/base/1/1249', 'main/base/x-file', 'main/base/20260103T000000/backup.info', 'main/wals/00000002.history']) await storage.put(k, Buffer.from(k));
    const dirsOf = async (prefix: string) => {
      const out: string[] = [];
      for await (const d of storage.listDirs(prefix)) out.push(d);
      return out;
    };
    expect(await dirsOf('main/base/')).toEqual(['20260101T000000', '20260102T000000', '20260103T000000']);
    expect(await dirsOf('main/')).toEqual(['base', 'wals']);
    expect(await dirsOf('')).toEqual(['main']);
    expect(await dirsOf('nothing/')).toEqual([]);
    await storage.removePrefix('main/base/20260102T000000/');
    await storage.remove('main/base/20260103T000000/backup.info');
    expect(await dirsOf('main/base/')).toEqual(['20260101T000000']);
  });

  it('copies an object as it is stored, compressed and all, to a new key', async () => {
    const { storage } = await driver.fresh();
    const plain = randomBytes(3 * MiB);
    const { key } = await storage.put('main/wals/0000000100000000/000000010000000000000001', plain, { compression: 'zstd' });
    const copied = await storage.copy(key, 'main/errors/000000010000000000000001.20260101T000000.damaged');
    expect(copied).toBe('main/errors/000000010000000000000001.20260101T000000.damaged.zst');
    expectBytes(await bytesOf(storage, copied), plain);
    expect(await storage.exists(key)).toBe(true);
  });

  it('finds a key whatever compression stored it, and makes deferred writes durable on sync', async () => {
    const { storage } = await driver.fresh();
    const gz = await storage.put('main/wals/0000000100000000/000000010000000000000001', Buffer.alloc(1000, 1), { compression: 'gzip' });
    const zst = await storage.put('main/wals/0000000100000000/000000010000000000000002', Buffer.alloc(1000, 2), { compression: 'zstd' });
    expect((await storage.find('main/wals/0000000100000000/000000010000000000000001'))?.key).toBe(gz.key);
    expect((await storage.find('main/wals/0000000100000000/000000010000000000000002'))?.compression).toBe('zstd');
    expect(await storage.find('main/wals/0000000100000000/000000010000000000000003')).toBeUndefined();
    expectBytes(await bytesOf(storage, zst.key), Buffer.alloc(1000, 2));

    const deferred = await Promise.all(['a', 'b', 'c'].map((n) => storage.put(`main/base/b2/${n}`, Buffer.from(n), { sync: false, compression: 'lz4' })));
    await storage.sync(deferred.map((d) => d.key));
    expectBytes(await bytesOf(storage, deferred[1]!.key), Buffer.from('b'));
  });

  it('refuses a plain object whose key would read back as compressed', async () => {
    const { storage } = await driver.fresh();
    expect(await codeOf(storage.put('main/base/b3/data/log.gz', Buffer.from('plain')))).toBe(ErrorCode.INTERNAL);
    // compressed, the same name is unambiguous
    const { key } = await storage.put('main/base/b3/data/log.gz', Buffer.from('plain'), { compression: 'zstd' });
    expect(key).toBe('main/base/b3/data/log.gz.zst');
    expect((await storage.find('main/base/b3/data/log.gz'))?.compression).toBe('zstd');
    expect(await keysOf(storage, 'main/')).toEqual([key]);
  });

  it('creates an object only when absent', async () => {
    const { storage } = await driver.fresh();
    const results = await Promise.all(Array.from({ length: 6 }, (_, i) => storage.driver.putIfAbsent('main/once', Buffer.from(`claimant ${i}`))));
    expect(results.filter(Boolean)).toHaveLength(1);
    const winner = results.indexOf(true);
    expect((await bytesOf(storage, 'main/once')).toString()).toBe(`claimant ${winner}`);
    expect(await storage.driver.putIfAbsent('main/once', Buffer.from('again'))).toBe(false);
  });

  it('gives a lease to one holder at a time; a stale one is taken over and its holder learns it', async () => {
    const { storage } = await driver.fresh();
    const a = ownerOfThisProcess('receiver-a');
    const b = ownerOfThisProcess('receiver-b');
    const lease = await storage.acquireLease('main/lock', a, 60_000);
    expect(lease.record.owner.id).toBe('receiver-a');
    const held = await storage.acquireLease('main/lock', b, 60_000).catch((e: BarmanError) => e);
    expect(held).toBeInstanceOf(BarmanError);
    expect((held as BarmanError).code).toBe(ErrorCode.LEASE_HELD);
    expect((held as BarmanError).message).toContain('receiver-a');
    await lease.renew();
    await lease.renew();
    expect((await storage.readLease('main/lock'))?.owner.id).toBe('receiver-a');
    await lease.release();
    expect((await storage.readLease('main/lock'))?.released).toBe(true);

    // b takes the released lease at once, with a short TTL, then stops renewing (it "dies")
    const bLease = await storage.acquireLease('main/lock', b, 300);
    await waitFor('the lease of b to expire', async () => Date.parse((await storage.readLease('main/lock'))!.expiresAt) < Date.now());
    const aAgain = await storage.acquireLease('main/lock', a, 60_000);
    expect(await codeOf(bLease.renew())).toBe(ErrorCode.LEASE_LOST);
    expect((await storage.readLease('main/lock'))?.owner.id).toBe('receiver-a');
    await aAgain.release();

    // claimants racing for a free lease: exactly one gets it
    const racers = await Promise.allSettled(Array.from({ length: 5 }, (_, i) => storage.acquireLease('main/race', ownerOfThisProcess(`racer-${i}`), 60_000)));
    expect(racers.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    for (const r of racers) if (r.status === 'rejected') expect((r.reason as BarmanError).code).toBe(ErrorCode.LEASE_HELD);
    // old generations do not pile up
    expect((await keysOf(storage, 'main/lock/')).length).toBeLessThanOrEqual(2);
  });

  it('keeps a lease alive past its TTL while the holder runs, and tells the holder when it is lost', async () => {
    const { storage } = await driver.fresh();
    const lease = await storage.acquireLease('main/lock', ownerOfThisProcess('holder'), 900);
    const lost: BarmanError[] = [];
    lease.keepAlive((err) => lost.push(err));
    // several TTLs later the holder still holds it, renewed by the timer
    await waitFor('four renewals', async () => ((await storage.readLease('main/lock'))?.generation ?? 0) >= 5, { timeoutMs: 30_000 });
    expect(await codeOf(storage.acquireLease('main/lock', ownerOfThisProcess('other'), 900))).toBe(ErrorCode.LEASE_HELD);
    expect(lost).toEqual([]);
    // the holder stalls past its TTL, another takes over, the holder's next renewal reports it
    lease.stopKeepAlive();
    await waitFor('the lease to expire', async () => Date.parse((await storage.readLease('main/lock'))!.expiresAt) < Date.now());
    const other = await storage.acquireLease('main/lock', ownerOfThisProcess('other'), 60_000);
    lease.keepAlive((err) => lost.push(err), 50);
    await waitFor('the holder to learn it lost the lease', () => lost.length > 0);
    expect(lost.map((e) => e.code)).toEqual([ErrorCode.LEASE_LOST]);
    expect(lost[0]!.message).toContain('other');
    await other.release();
  });

  it('releases a kept-alive lease even while a renewal is on its way: the next holder gets it at once', async () => {
    const { storage } = await driver.fresh();
    for (let round = 0; round < 10; round++) {
      const lease = await storage.acquireLease('main/lock', ownerOfThisProcess(`serve-${round}`), 60_000);
      // renewing all the time: the release lands while a renewal is in flight
      lease.keepAlive(() => undefined, 1);
      await new Promise((r) => setTimeout(r, 5 + round * 3));
      await lease.release();
      expect((await storage.readLease('main/lock'))?.released, `round ${round}`).toBe(true);
    }
    await (await storage.acquireLease('main/lock', ownerOfThisProcess('next'), 60_000)).release();
  });

  it('releases a lease whose newest generation is its own, written by a renewal it never heard back from', async () => {
    const { storage } = await driver.fresh();
    const owner = ownerOfThisProcess('serve-1');
    const lease = await storage.acquireLease('main/lock', owner, 60_000);
    // the same owner writes the next generation behind this lease's back (what a renewal whose
    // answer was lost leaves: the store has it, the holder does not know)
    await storage.acquireLease('main/lock', owner, 60_000);
    expect((await storage.readLease('main/lock'))?.generation).toBe(lease.record.generation + 1);
    await lease.release();
    expect((await storage.readLease('main/lock'))?.released).toBe(true);
    // so the next receiver takes it at once
    await (await storage.acquireLease('main/lock', ownerOfThisProcess('serve-2'), 60_000)).release();
  });

  it('says STORAGE_NOT_FOUND for a missing object', async () => {
    const { storage } = await driver.fresh();
    expect(await codeOf(storage.read('main/missing'))).toBe(ErrorCode.STORAGE_NOT_FOUND);
    expect(await codeOf(storage.read('main/missing.zst'))).toBe(ErrorCode.STORAGE_NOT_FOUND);
    expect(await codeOf(storage.read('main/missing', { start: 0, end: 0 }))).toBe(ErrorCode.STORAGE_NOT_FOUND);
  });
});

describe('posix driver errors', () => {
  it('maps a missing root, permissions and a full disk to stable codes', async () => {
    const root = makeTempDir('storage');
    expect(await codeOf(new PosixDriver(join(root, 'absent')).check())).toBe(ErrorCode.STORAGE_NOT_FOUND);
    // root bypasses permission bits, so these two are mapped from the errno the kernel gives
    const d = new PosixDriver(root);
    const errno = (code: string) => Object.assign(new Error(`${code}: failed`), { code });
    expect(d.mapError(errno('EACCES'), 'writing', 'k').code).toBe(ErrorCode.STORAGE_PERMISSION);
    expect(d.mapError(errno('EROFS'), 'writing', 'k').code).toBe(ErrorCode.STORAGE_PERMISSION);
    expect(d.mapError(errno('ENOSPC'), 'writing', 'k').code).toBe(ErrorCode.STORAGE_NO_SPACE);
    expect(d.mapError(errno('EDQUOT'), 'writing', 'k').code).toBe(ErrorCode.STORAGE_NO_SPACE);
  });
});

describe.runIf(cephInstalled())('s3 driver errors and faults', () => {
  beforeAll(async () => {
    if (!gateway) await s3.setUp();
  }, 120_000);

  it('maps a missing bucket, wrong credentials and an endpoint that is down to stable codes', async () => {
    const gw = gateway!;
    const noBucket = await openStorage(gw.storageConfig('no-such-bucket'), '/nonexistent');
    expect(await codeOf(noBucket.check())).toBe(ErrorCode.STORAGE_BUCKET_MISSING);
    expect(await codeOf(noBucket.put('main/x', Buffer.from('x')))).toBe(ErrorCode.STORAGE_BUCKET_MISSING);
    expect(await codeOf(noBucket.stat('main/x'))).toBe(ErrorCode.STORAGE_BUCKET_MISSING);
    expect(await codeOf(noBucket.read('main/x'))).toBe(ErrorCode.STORAGE_BUCKET_MISSING);
    expect(await codeOf(keysOf(noBucket, 'main/'))).toBe(ErrorCode.STORAGE_BUCKET_MISSING);

    const secret = 'not-the-secret-key-0123456789';
    const wrongKeys = await openStorage(gw.storageConfig(BUCKET, '', { accessKeyId: gw.credentials.accessKeyId, secretAccessKey: secret }), '/nonexistent');
    const wrong = await wrongKeys.check().catch((e: BarmanError) => e);
    expect((wrong as BarmanError).code).toBe(ErrorCode.STORAGE_CREDENTIALS);
    expect(`${(wrong as BarmanError).message} ${(wrong as BarmanError).hint}`).not.toContain(secret);
    expect(await codeOf(wrongKeys.put('main/x', Buffer.from('x')))).toBe(ErrorCode.STORAGE_CREDENTIALS);
    const unknownKey = await openStorage(gw.storageConfig(BUCKET, '', { accessKeyId: 'NOSUCHKEY0000', secretAccessKey: secret }), '/nonexistent');
    expect(await codeOf(unknownKey.read('main/x'))).toBe(ErrorCode.STORAGE_CREDENTIALS);

    const down = await openStorage({ ...gw.storageConfig(BUCKET), endpoint: `http://127.0.0.1:${await freePort()}` }, '/nonexistent', { s3: { maxAttempts: 1 } });
    expect(await codeOf(down.check())).toBe(ErrorCode.STORAGE_UNREACHABLE);
    expect(await codeOf(down.put('main/x', Buffer.from('x')))).toBe(ErrorCode.STORAGE_UNREACHABLE);
    expect(await codeOf(down.read('main/x'))).toBe(ErrorCode.STORAGE_UNREACHABLE);
    for (const s of [noBucket, wrongKeys, unknownKey, down]) await s.close();
  });

  it('refuses an upload damaged on the way (Content-MD5), leaving nothing under the key', async () => {
    const gw = gateway!;
    // a proxy that flips one byte in the body of the first PUT it forwards
    const port = await freePort();
    let flipped = false;
    const sockets = new Set<Socket>();
    const proxy = createServer((client) => {
      const upstream = connect(gw.port, '127.0.0.1');
      sockets.add(client).add(upstream);
      let seen = Buffer.alloc(0);
      client.on('data', (chunk: Buffer) => {
        if (!flipped) {
          const before = seen.length;
          seen = Buffer.concat([seen, chunk]);
          const put = seen.indexOf('PUT ');
          const body = put >= 0 ? seen.indexOf('\r\n\r\n', put) : -1;
          const target = body + 4 + 1000;
          if (body >= 0 && target >= before && target < seen.length) {
            chunk = Buffer.from(chunk);
            chunk[target - before]! ^= 0x01;
            flipped = true;
          }
        }
        upstream.write(chunk);
      });
      upstream.on('data', (chunk) => client.write(chunk));
      for (const [a, b] of [[client, upstream], [upstream, client]] as const) {
        a.on('error', () => b.destroy());
        a.on('close', () => b.destroy());
      }
    });
    await new Promise<void>((resolve) => proxy.listen(port, '127.0.0.1', resolve));
    try {
      const storage = await openStorage({ ...gw.storageConfig(BUCKET, `t${++prefixes}/`), endpoint: `http://127.0.0.1:${port}` }, '/nonexistent', { s3: { partSize: PART } });
      const err = await storage.put('main/wals/0000000100000000/00000001000000000000000A', randomBytes(100_000)).catch((e: unknown) => e);
      expect(flipped).toBe(true);
      expect(err).toBeInstanceOf(BarmanError);
      expect((err as BarmanError).message).toMatch(/received other bytes than were sent/);
      expect(await keysOf(storage, 'main/')).toEqual([]);
      // the next attempt goes through unharmed
      const data = randomBytes(100_000);
      const { key } = await storage.put('main/wals/0000000100000000/00000001000000000000000A', data);
      expectBytes(await bytesOf(storage, key), data);
      await storage.close();
    } finally {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => proxy.close(resolve));
    }
  });

  it('a gateway killed mid-upload fails the write and leaves nothing under the key; the retry succeeds', async () => {
    const gw = gateway!;
    const { storage, leftovers } = await s3.fresh();
    const writer = await storage.openWrite('main/wals/0000000100000000/000000010000000000000009', { compression: 'none' });
    // several parts uploaded, then the gateway dies
    for await (const chunk of payload(3 * PART)) await writer.write(chunk);
    await gw.killGateway();
    let failure: unknown;
    try {
      for await (const chunk of payload(3 * PART)) await writer.write(chunk);
      await writer.commit();
    } catch (err) {
      failure = err;
    }
    await writer.abort();
    expect(failure).toBeInstanceOf(BarmanError);
    expect((failure as BarmanError).code, (failure as BarmanError).message).toBe(ErrorCode.STORAGE_UNREACHABLE);

    await gw.startGateway();
    expect(await storage.exists(writer.key)).toBe(false);
    expect(await keysOf(storage, 'main/')).toEqual([]);
    // the multipart upload the dead gateway could not abort is found and aborted by cleanup
    await storage.cleanup(new Date(Date.now() + 1000));
    expect(await leftovers()).toEqual([]);

    const data = createHash('sha256');
    const { key } = await storage.put('main/wals/0000000100000000/000000010000000000000009', payload(6 * PART, data));
    expect(createHash('sha256').update(await bytesOf(storage, key)).digest('hex')).toBe(data.digest('hex'));
  });
});
