// The recovery writer on a real filesystem (temp dirs), with plans as a compromised database
// host could shape them: it writes only inside the destination and the tablespace locations it
// was given, refuses before writing anything, and recreates the backup's symlinks as links.

import { createHash, randomBytes } from 'node:crypto';
import { constants, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { fileChecksum } from '../../../../shared/backup/manifest';
import { BarmanError, ErrorCode } from '../../../../shared/errors';
import type { RecoveryPlan } from '../../../../shared/recovery/plan';
import { type RecoverySource, writeRecovery } from '../../../../shared/recovery/writer';

const root = mkdtempSync(join(tmpdir(), 'barman-unit-writer-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let n = 0;
/** a fresh folder below the test root */
const fresh = (label: string): string => {
  const dir = join(root, `${label}-${++n}`);
  mkdirSync(dir);
  return dir;
};

const sha = (text: string) => createHash('sha256').update(text).digest('hex');
/** the CRC-32C a manifest records for `bytes` */
const crc32c = (bytes: Buffer) => {
  const c = fileChecksum('CRC32C');
  c.update(bytes);
  return c.digest();
};
const CONTENT = new Map([
  ['backup_label', 'START WAL LOCATION: 0/2000028\n'],
  ['PG_VERSION', '15\n'],
  ['base/1/1259', 'a relation'],
  ['pg_tblspc/16385/PG_15_202209061/1/16390', 'a relation in a tablespace'],
  ['global/pg_control', 'control'],
]);
const file = (path: string, text = CONTENT.get(path) ?? '') => ({ path, size: Buffer.byteLength(text), mtime: 0, checksumAlgorithm: 'SHA256' as const, checksum: sha(text) });

function planOf(over: Partial<RecoveryPlan> = {}): RecoveryPlan {
  return {
    server: 'main',
    backupId: '20260101T000000',
    pgVersion: 150018,
    files: ['backup_label', 'PG_VERSION', 'base/1/1259', 'global/pg_control'].map((p) => file(p)),
    directories: ['base', 'base/1', 'global', 'pg_tblspc', 'pg_wal', 'pg_wal/archive_status'],
    tablespaces: [],
    symlinks: [],
    wals: ['000000010000000000000002'],
    settings: "restore_command = 'cp barman_wal/%f %p'\n",
    manifest: '{ "PostgreSQL-Backup-Manifest-Version": 1 }\n',
    targetDescription: 'end of WAL',
    ...over,
  };
}

function sourceOf(content: Map<string, string> = CONTENT, before?: (path: string) => void): RecoverySource {
  return {
    async *dataFile(path) {
      before?.(path);
      yield Buffer.from(content.get(path) ?? '');
    },
    async *walFile() {
      yield Buffer.from('wal bytes');
    },
  };
}

async function refusal(write: Promise<unknown>, code: ErrorCode, message: RegExp): Promise<BarmanError> {
  const err = await write.then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(BarmanError);
  expect((err as BarmanError).code).toBe(code);
  expect((err as BarmanError).message).toMatch(message);
  return err as BarmanError;
}

describe('writeRecovery', () => {
  it('writes the data directory and its tablespace, then recreates the backup symlinks as links, writing through none of them', async () => {
    const dest = join(fresh('dest'), 'pgdata');
    const location = join(fresh('tblspc'), 'fast');
    const outside = fresh('outside');
    writeFileSync(join(outside, 'target.txt'), 'must stay as it is');
    const plan = planOf({
      files: [...planOf().files, file('pg_tblspc/16385/PG_15_202209061/1/16390')],
      directories: [...planOf().directories, 'pg_tblspc/16385', 'pg_tblspc/16385/PG_15_202209061', 'pg_tblspc/16385/PG_15_202209061/1'],
      tablespaces: [{ oid: '16385', name: 'fast', location }],
      symlinks: [
        { path: 'evil_link', target: join(outside, 'target.txt') },
        { path: 'outside_dir', target: outside },
        { path: 'loop_a', target: 'loop_b' },
        { path: 'loop_b', target: 'loop_a' },
        { path: 'global/up', target: '..' },
        { path: 'pg_tblspc/16385/PG_15_202209061/evil', target: join(outside, 'target.txt') },
      ],
    });
    await writeRecovery(plan, dest, sourceOf());

    expect(readFileSync(join(dest, 'base/1/1259'), 'utf8')).toBe('a relation');
    expect(statSync(join(dest, 'base/1/1259')).mode & 0o777).toBe(0o600);
    expect(statSync(dest).mode & 0o777).toBe(0o700);
    expect(readlinkSync(join(dest, 'pg_tblspc/16385'))).toBe(location);
    expect(readFileSync(join(location, 'PG_15_202209061/1/16390'), 'utf8')).toBe('a relation in a tablespace');
    expect(readFileSync(join(dest, 'barman_wal/000000010000000000000002'), 'utf8')).toBe('wal bytes');
    expect(readFileSync(join(dest, 'postgresql.auto.conf'), 'utf8')).toContain('restore_command');
    for (const link of plan.symlinks) {
      const at = link.path.startsWith('pg_tblspc/16385/') ? join(location, link.path.slice('pg_tblspc/16385/'.length)) : join(dest, link.path);
      expect(lstatSync(at).isSymbolicLink(), link.path).toBe(true);
      expect(readlinkSync(at)).toBe(link.target);
    }
    expect(readdirSync(outside)).toEqual(['target.txt']);
    expect(readFileSync(join(outside, 'target.txt'), 'utf8')).toBe('must stay as it is');
  });

  it.each<[string, Partial<RecoveryPlan>, RegExp]>([
    ['a manifest path that leaves the destination', { files: [file('../../etc/cron.d/evil', 'x')] }, /"\.\.\/\.\.\/etc\/cron\.d\/evil" is not a valid path/],
    ['an absolute manifest path', { files: [file('/root/.ssh/authorized_keys', 'x')] }, /is not a valid path/],
    ['a directory that leaves the destination', { directories: ['base', '../outside'] }, /"\.\.\/outside" is not a valid path/],
    ['a WAL name that is a path', { wals: ['../../../etc/passwd'] }, /is not a WAL file name/],
    ['a symlink that leaves the destination', { symlinks: [{ path: '../escape', target: '/' }] }, /is not a valid path/],
    ['a symlink above the files of the backup', { symlinks: [{ path: 'base', target: '/root' }] }, /"base" is not a valid symlink/],
    ['a symlink where the recovery settings go', { symlinks: [{ path: 'postgresql.auto.conf', target: '/etc/passwd' }] }, /"postgresql.auto.conf" is not a valid symlink/],
    ['a tablespace OID that is a path', { tablespaces: [{ oid: '../../x', name: 't', location: '/srv/t' }] }, /OID/],
    ['a tablespace given twice', { tablespaces: [{ oid: '1', name: 't', location: '/srv/a' }, { oid: '1', name: 'u', location: '/srv/b' }] }, /OID/],
  ])('refuses %s before writing anything', async (_what, over, message) => {
    const dest = join(fresh('dest'), 'pgdata');
    await refusal(writeRecovery(planOf(over), dest, sourceOf()), ErrorCode.INVALID_NAME, message);
    expect(existsSync(dest)).toBe(false);
  });

  describe('refuses a tablespace location, before writing anything, that', () => {
    const check = async (location: (dest: string) => string, message: RegExp, protectedPaths?: (dest: string) => Array<{ path: string; what: string }>) => {
      const dest = join(fresh('dest'), 'pgdata');
      const where = location(dest);
      const before = existsSync(where) ? readdirSync(where) : undefined;
      await refusal(writeRecovery(planOf({ tablespaces: [{ oid: '16385', name: 'fast', location: where }] }), dest, sourceOf(), { protectedPaths: protectedPaths?.(dest) }), ErrorCode.DESTINATION, message);
      expect(existsSync(dest)).toBe(false);
      expect(existsSync(where) ? readdirSync(where) : undefined).toEqual(before);
    };

    it('is not absolute', () => check(() => 'relative/fast', /tablespace fast location relative\/fast is not an absolute path/));
    it('is inside the destination', () => check((dest) => join(dest, 'ts'), /tablespace fast location .* overlaps destination/));
    it('is the destination', () => check((dest) => dest, /overlaps destination/));
    it('contains the destination', () => check((dest) => join(dest, '..'), /overlaps destination/));
    it('reaches into the destination through a symlinked parent', () =>
      check((dest) => {
        const hop = fresh('hop');
        symlinkSync(join(dest, '..'), join(hop, 'via'));
        return join(hop, 'via', 'pgdata', 'ts');
      }, /overlaps destination/));
    it('is inside a protected path (the catalog)', () => {
      const catalog = fresh('barman_home');
      return check(() => join(catalog, 'main', 'ts'), /overlaps the catalog \(barman_home\)/, () => [{ path: catalog, what: 'the catalog (barman_home)' }]);
    });
    it('contains a protected path', () => {
      const srv = fresh('srv');
      const catalog = join(srv, 'barman_home');
      mkdirSync(catalog);
      return check(() => srv, /overlaps the catalog/, () => [{ path: catalog, what: 'the catalog (barman_home)' }]);
    });
    it('overlaps another tablespace', async () => {
      const dest = join(fresh('dest'), 'pgdata');
      const a = join(fresh('ts'), 'a');
      const plan = planOf({ tablespaces: [{ oid: '16385', name: 'a', location: a }, { oid: '16386', name: 'b', location: join(a, 'b') }] });
      await refusal(writeRecovery(plan, dest, sourceOf()), ErrorCode.DESTINATION, /tablespace b location .* overlaps tablespace a location/);
      expect(existsSync(dest) || existsSync(a)).toBe(false);
    });
  });

  it('refuses the destination itself inside a protected path', async () => {
    const catalog = fresh('barman_home');
    const dest = join(catalog, 'main', 'pgdata');
    await refusal(writeRecovery(planOf(), dest, sourceOf(), { protectedPaths: [{ path: catalog, what: 'the catalog (barman_home)' }] }), ErrorCode.DESTINATION, /destination .* overlaps the catalog/);
    expect(readdirSync(catalog)).toEqual([]);
  });

  it('never writes through a directory that turned into a symlink while it ran, and removes what it wrote', async () => {
    const dest = join(fresh('dest'), 'pgdata');
    const outside = fresh('outside');
    // base/2 is not among the directories made first: the writer makes it for the file below it,
    // after the first file was written, when the link is already there
    const plan = planOf({ files: [file('PG_VERSION'), file('base/2/16390', 'x')] });
    const plant = (path: string) => {
      if (path === 'PG_VERSION') symlinkSync(outside, join(dest, 'base', '2'));
    };
    await refusal(writeRecovery(plan, dest, sourceOf(new Map([['PG_VERSION', '15\n'], ['base/2/16390', 'x']]), plant), { parallel: 1 }), ErrorCode.DESTINATION, /base\/2 is a symbolic link/);
    expect(readdirSync(outside)).toEqual([]);
    expect(existsSync(dest)).toBe(false);
  });
});

describe('writeRecovery into an existing directory (delta) and its safety rules', () => {
  /** every entry below `root`: files with content, links with target, directories */
  const tree = (root: string): Record<string, string> => {
    const out: Record<string, string> = {};
    const walk = (rel: string) => {
      for (const name of readdirSync(join(root, rel))) {
        const r = rel ? `${rel}/${name}` : name;
        const st = lstatSync(join(root, r));
        if (st.isSymbolicLink()) out[r] = `-> ${readlinkSync(join(root, r))}`;
        else if (st.isDirectory()) {
          out[r] = 'dir';
          walk(r);
        } else out[r] = `${st.mode & 0o777}:${readFileSync(join(root, r), 'utf8')}`;
      }
    };
    walk('');
    return out;
  };
  const settingsFree = (t: Record<string, string>) => ({ ...t, 'postgresql.auto.conf': 'settings' });

  it('brings a drifted directory to what a full restore writes, through none of the links planted in it', async () => {
    const full = join(fresh('full'), 'pgdata');
    const plan = planOf({ symlinks: [{ path: 'pg_logical_link', target: '/nowhere' }] });
    await writeRecovery(plan, full, sourceOf());
    const dest = join(fresh('delta'), 'pgdata');
    await writeRecovery(plan, dest, sourceOf());
    const outside = fresh('outside');
    writeFileSync(join(outside, 'keep.txt'), 'must stay as it is');
    // drift: a changed file, a deleted one, an added one, a link where a file goes, a link where a directory goes
    writeFileSync(join(dest, 'PG_VERSION'), '14\n');
    rmSync(join(dest, 'backup_label'));
    writeFileSync(join(dest, 'base', 'extra'), 'not in the backup');
    rmSync(join(dest, 'base/1/1259'));
    symlinkSync(join(outside, 'keep.txt'), join(dest, 'base/1/1259'));
    rmSync(join(dest, 'global'), { recursive: true });
    symlinkSync(outside, join(dest, 'global'));

    const summary = await writeRecovery(plan, dest, sourceOf(), { delta: true });
    expect(settingsFree(tree(dest))).toEqual(settingsFree(tree(full)));
    expect(readdirSync(outside)).toEqual(['keep.txt']);
    expect(readFileSync(join(outside, 'keep.txt'), 'utf8')).toBe('must stay as it is');
    // PG_VERSION, backup_label, base/1/1259, global/pg_control; nothing else was fetched
    expect(summary).toMatchObject({ written: 4, unchanged: 0 });
    expect(summary.removed).toBeGreaterThanOrEqual(3);
  });

  it('writes global/pg_control last, after the WAL and the settings, and removes the marker only then', async () => {
    const dest = join(fresh('order'), 'pgdata');
    const seen: string[] = [];
    const source = sourceOf(CONTENT, (path) => {
      seen.push(path);
      if (path === 'global/pg_control') {
        expect(existsSync(join(dest, 'recovery.signal'))).toBe(true);
        expect(existsSync(join(dest, 'barman_restore.incomplete'))).toBe(true);
      }
    });
    await writeRecovery(planOf(), dest, source, { parallel: 1 });
    expect(seen[seen.length - 1]).toBe('global/pg_control');
    expect(existsSync(join(dest, 'barman_restore.incomplete'))).toBe(false);
  });

  it('a delta that fails leaves the directory marked incomplete and without pg_control; the next delta completes it', async () => {
    const dest = join(fresh('resume'), 'pgdata');
    await writeRecovery(planOf(), dest, sourceOf());
    writeFileSync(join(dest, 'base/1/1259'), 'drifted');
    const failing = sourceOf(CONTENT, (path) => {
      if (path === 'base/1/1259') throw new Error('the connection dropped');
    });
    await expect(writeRecovery(planOf(), dest, failing, { delta: true })).rejects.toThrow(/connection dropped/);
    expect(existsSync(join(dest, 'barman_restore.incomplete'))).toBe(true);
    expect(existsSync(join(dest, 'global/pg_control'))).toBe(false);
    await refusal(writeRecovery(planOf(), dest, sourceOf()), ErrorCode.DESTINATION, /holds a restore that did not finish/);
    await writeRecovery(planOf(), dest, sourceOf(), { delta: true });
    expect(readFileSync(join(dest, 'global/pg_control'), 'utf8')).toBe('control');
    expect(readFileSync(join(dest, 'base/1/1259'), 'utf8')).toBe('a relation');
    expect(existsSync(join(dest, 'barman_restore.incomplete'))).toBe(false);
  });

  it('refuses a directory whose postmaster.pid names a live process, with or without delta, and touches nothing', async () => {
    const dest = join(fresh('live'), 'pgdata');
    await writeRecovery(planOf(), dest, sourceOf());
    writeFileSync(join(dest, 'postmaster.pid'), `${process.ppid}\n${dest}\n`);
    const before = tree(dest);
    for (const delta of [false, true]) {
      await refusal(writeRecovery(planOf(), dest, sourceOf(), { delta }), ErrorCode.DESTINATION, new RegExp(`running PostgreSQL \\(postmaster.pid names process ${process.ppid}`));
    }
    expect(tree(dest)).toEqual(before);
    // a stale postmaster.pid (no such process) is no obstacle to a delta
    writeFileSync(join(dest, 'postmaster.pid'), '999999999\n');
    await writeRecovery(planOf(), dest, sourceOf(), { delta: true });
    expect(existsSync(join(dest, 'postmaster.pid'))).toBe(false);
  });

  it('writes standby.signal for a standby plan and appends primary_conninfo quoted as ALTER SYSTEM does', async () => {
    const dest = join(fresh('standby'), 'pgdata');
    await writeRecovery(planOf({ standby: true, wals: [] }), dest, sourceOf(), { primaryConninfo: "host=p password=it's\\x" });
    expect(existsSync(join(dest, 'standby.signal'))).toBe(true);
    expect(existsSync(join(dest, 'recovery.signal'))).toBe(false);
    expect(existsSync(join(dest, 'barman_wal'))).toBe(false);
    expect(readFileSync(join(dest, 'postgresql.auto.conf'), 'utf8')).toContain("primary_conninfo = 'host=p password=it''s\\\\x'\n");
    await refusal(writeRecovery(planOf({ standby: true }), join(fresh('standby'), 'pgdata'), sourceOf(), { primaryConninfo: 'host=p\nrestore_command=evil' }), ErrorCode.USAGE, /line break/);
  });
});

describe('writeRecovery, many files at once', () => {
  /** a backup of `count` files of assorted sizes (some of several chunks), plus pg_control */
  const many = (count: number) => {
    const content = new Map<string, Buffer>();
    for (let i = 0; i < count; i++) {
      const size = [0, 1, 100, 8192, 300_000, 1_100_000][i % 6]!;
      content.set(`base/1/${16384 + i}`, Buffer.alloc(size, i + 1));
    }
    content.set('global/pg_control', Buffer.from('control'));
    const files = [...content].map(([path, bytes]) => ({ path, size: bytes.length, mtime: 0, checksumAlgorithm: 'SHA256' as const, checksum: createHash('sha256').update(bytes).digest('hex') }));
    return { content, plan: planOf({ files: [...files.filter((f) => f.path !== 'global/pg_control'), files.find((f) => f.path === 'global/pg_control')!], wals: [] }) };
  };
  /** yields a file in chunks of `chunk` bytes, all through ONE buffer it reuses (as readChunks does) */
  const chunked = (content: Map<string, Buffer>, chunk = 64 * 1024, damage?: { path: string; at: number }): RecoverySource => ({
    async *dataFile(path) {
      const bytes = Buffer.from(content.get(path)!);
      if (damage?.path === path) bytes[damage.at] = bytes[damage.at]! ^ 0x01;
      const buf = Buffer.alloc(chunk);
      for (let off = 0; off < bytes.length; off += chunk) {
        const n = bytes.copy(buf, 0, off, off + chunk);
        yield buf.subarray(0, n);
      }
    },
    async *walFile() {},
  });

  it('writes every file byte for byte, whatever the order the workers take them in, from a source that reuses its buffer', async () => {
    const { content, plan } = many(30);
    const dest = join(fresh('many'), 'pgdata');
    const summary = await writeRecovery(plan, dest, chunked(content), { parallel: 4 });
    expect(summary.written).toBe(31);
    for (const [path, bytes] of content) expect(readFileSync(join(dest, path)).equals(bytes), path).toBe(true);
    expect(existsSync(join(dest, 'barman_restore.incomplete'))).toBe(false);
  });

  it('refuses a file with one flipped byte among many written at once, names it, and leaves nothing behind', async () => {
    const { content, plan } = many(30);
    const damaged = 'base/1/16388'; // 300 000 bytes: several chunks
    const dest = fresh('flipped');
    await refusal(writeRecovery(plan, dest, chunked(content, 64 * 1024, { path: damaged, at: 200_000 }), { parallel: 4 }), ErrorCode.CHECKSUM_MISMATCH, new RegExp(`${damaged} in the catalog does not match its manifest`));
    // the destination stays, empty: no half-written cluster, and pg_control was never written
    expect(readdirSync(dest)).toEqual([]);
  });

  it('a delta that meets a damaged file leaves the marker and no pg_control, however many workers were writing', async () => {
    const { content, plan } = many(30);
    const dest = join(fresh('flipped-delta'), 'pgdata');
    await writeRecovery(plan, dest, chunked(content), { parallel: 4 });
    rmSync(join(dest, 'base/1/16394'));
    await refusal(writeRecovery(plan, dest, chunked(content, 64 * 1024, { path: 'base/1/16394', at: 5 }), { parallel: 4, delta: true }), ErrorCode.CHECKSUM_MISMATCH, /base\/1\/16394 in the catalog does not match its manifest/);
    expect(existsSync(join(dest, 'barman_restore.incomplete'))).toBe(true);
    expect(existsSync(join(dest, 'global/pg_control'))).toBe(false);
  });

  it('fetches the big files first, largest first, then the small ones in the backup\'s order (how a catalog bundles them), byte for byte', async () => {
    const { content } = many(12);
    const big = new Map(content);
    big.set('base/1/big-a', Buffer.alloc(3 * 1024 * 1024 + 5, 9));
    big.set('base/1/big-b', Buffer.alloc(5 * 1024 * 1024, 8));
    const files = [...big].map(([path, bytes]) => ({ path, size: bytes.length, mtime: 0, checksumAlgorithm: 'SHA256' as const, checksum: createHash('sha256').update(bytes).digest('hex') }));
    const order = [...files.filter((f) => f.path !== 'global/pg_control'), files.find((f) => f.path === 'global/pg_control')!];
    const asked: string[] = [];
    const source = chunked(big, 1024 * 1024);
    const dataFile = source.dataFile.bind(source);
    source.dataFile = (path, hashed) => (asked.push(path), dataFile(path, hashed));
    const dest = join(fresh('big-and-small'), 'pgdata');
    await writeRecovery(planOf({ files: order, wals: [] }), dest, source, { parallel: 1 });
    expect(asked).toEqual(['base/1/big-b', 'base/1/big-a', ...order.map((f) => f.path).filter((p) => !p.startsWith('base/1/big') && p !== 'global/pg_control'), 'global/pg_control']);
    for (const [path, bytes] of big) expect(readFileSync(join(dest, path)).equals(bytes), path).toBe(true);
  });

  it('checks a small file whole before writing it: a damaged one is never written, not even by a delta that stops there', async () => {
    const { content, plan } = many(12);
    const dest = join(fresh('small-checked-first'), 'pgdata');
    await writeRecovery(plan, dest, chunked(content), { parallel: 2 });
    rmSync(join(dest, 'base/1/16387'));
    await refusal(writeRecovery(plan, dest, chunked(content, 64 * 1024, { path: 'base/1/16387', at: 7 }), { parallel: 2, delta: true }), ErrorCode.CHECKSUM_MISMATCH, /base\/1\/16387 in the catalog does not match its manifest/);
    expect(existsSync(join(dest, 'base/1/16387'))).toBe(false);
    expect(existsSync(join(dest, 'barman_restore.incomplete'))).toBe(true);
  });

  it('checks each file with the algorithm its manifest entry names: CRC-32C entries write, keep identical files on a delta, and refuse a flipped byte', async () => {
    const { content, plan: shaPlan } = many(12);
    // every other file in CRC-32C, the rest in SHA-256: one manifest may hold both
    const plan = { ...shaPlan, files: shaPlan.files.map((f, i) => (i % 2 === 0 ? { ...f, checksumAlgorithm: 'CRC32C' as const, checksum: crc32c(content.get(f.path)!) } : f)) };
    const dest = join(fresh('crc'), 'pgdata');
    expect((await writeRecovery(plan, dest, chunked(content), { parallel: 3 })).written).toBe(13);
    for (const [path, bytes] of content) expect(readFileSync(join(dest, path)).equals(bytes), path).toBe(true);
    const again = await writeRecovery(plan, dest, chunked(content), { parallel: 3, delta: true });
    expect(again.written).toBe(1); // pg_control, always written last
    expect(again.unchanged).toBe(12);
    const crcFile = plan.files.find((f) => f.checksumAlgorithm === 'CRC32C' && f.size > 100_000)!;
    await refusal(writeRecovery(plan, fresh('crc-flipped'), chunked(content, 64 * 1024, { path: crcFile.path, at: 50_000 }), { parallel: 3 }), ErrorCode.CHECKSUM_MISMATCH, new RegExp(`${crcFile.path} in the catalog does not match its manifest \\(\\d+ bytes, CRC-32C [0-9a-f]{8}; manifest: \\d+ bytes, CRC-32C ${crcFile.checksum}\\)`));
  });

  it('refuses a file that runs longer than its manifest says, before writing past its size', async () => {
    const { content, plan } = many(6);
    const longer = new Map(content);
    longer.set('base/1/16386', Buffer.alloc(100 + 1, 3));
    const dest = fresh('longer');
    await refusal(writeRecovery(plan, dest, chunked(longer), { parallel: 2 }), ErrorCode.CHECKSUM_MISMATCH, /base\/1\/16386 in the catalog does not match its manifest \(more than its 100 bytes/);
    expect(readdirSync(dest)).toEqual([]);
  });

  describe('a source that hashes what it yields itself (the agent, whose fetch checks the receiver\'s checksum)', () => {
    const hashing = (content: Map<string, Buffer>, report: (path: string, actual: string) => string | undefined): RecoverySource => ({
      hashes: true,
      async *dataFile(path, hashed) {
        const bytes = content.get(path)!;
        const sha = report(path, createHash('sha256').update(bytes).digest('hex'));
        if (sha !== undefined) hashed?.(sha, 'SHA256');
        yield bytes;
      },
      async *walFile() {},
    });

    it('has its checksum compared with the manifest: the right one writes the file', async () => {
      const { content, plan } = many(6);
      const dest = join(fresh('hashes-ok'), 'pgdata');
      await writeRecovery(plan, dest, hashing(content, (_p, actual) => actual));
      for (const [path, bytes] of content) expect(readFileSync(join(dest, path)).equals(bytes), path).toBe(true);
    });

    it('a checksum other than the manifest\'s is refused, naming the file', async () => {
      const { content, plan } = many(6);
      const dest = fresh('hashes-wrong');
      await refusal(writeRecovery(plan, dest, hashing(content, (p, actual) => (p === 'base/1/16387' ? sha('other bytes') : actual))), ErrorCode.CHECKSUM_MISMATCH, /base\/1\/16387 in the catalog does not match its manifest/);
      expect(readdirSync(dest)).toEqual([]);
    });

    it('no checksum at all is refused: nothing is written unchecked', async () => {
      const { content, plan } = many(6);
      const dest = fresh('hashes-none');
      await refusal(writeRecovery(plan, dest, hashing(content, (p, actual) => (p === 'base/1/16385' ? undefined : actual))), ErrorCode.INTERNAL, /base\/1\/16385: the restore's source gave no checksum/);
      expect(readdirSync(dest)).toEqual([]);
    });
  });
});

describe('writeRecovery, big files written around the page cache (O_DIRECT)', () => {
  const MiB = 1024 * 1024;
  /** whether this process holds `path` open with O_DIRECT now (the flags /proc shows for its descriptor) */
  const openDirect = (path: string): boolean | undefined => {
    for (const fd of readdirSync('/proc/self/fd')) {
      let target: string;
      try {
        target = readlinkSync(`/proc/self/fd/${fd}`);
      } catch {
        continue;
      }
      if (target !== path) continue;
      const flags = Number.parseInt(/^flags:\s+([0-7]+)/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))![1]!, 8);
      return (flags & constants.O_DIRECT) !== 0;
    }
    return undefined;
  };
  /**
   * A backup of the big files `sizes` names (random bytes) and two small ones, and a source that
   * yields each in chunks of an odd length through one buffer it reuses, noting for each file
   * whether it is open with O_DIRECT while its bytes are asked for.
   */
  const backup = (dest: string, sizes: Record<string, number>, damage?: { path: string; at: number }) => {
    const content = new Map<string, Buffer>(Object.entries(sizes).map(([path, size]) => [path, randomBytes(size)]));
    content.set('base/1/small', randomBytes(8192));
    content.set('global/pg_control', Buffer.from('control'));
    const files = [...content].map(([path, bytes]) => ({ path, size: bytes.length, mtime: 0, checksumAlgorithm: 'CRC32C' as const, checksum: crc32c(bytes) }));
    const direct = new Map<string, boolean | undefined>();
    const source: RecoverySource = {
      async *dataFile(path) {
        const bytes = Buffer.from(content.get(path)!);
        if (damage?.path === path) bytes[damage.at] = bytes[damage.at]! ^ 0x01;
        const buf = Buffer.alloc(100_003);
        for (let off = 0; off < bytes.length; off += buf.length) {
          const n = bytes.copy(buf, 0, off, off + buf.length);
          yield buf.subarray(0, n);
          if (off === 0) direct.set(path, openDirect(join(dest, path)));
        }
      },
      async *walFile() {},
    };
    return { content, plan: planOf({ files, wals: [] }), source, direct };
  };

  it('writes a big file whose size is a multiple of 4 KiB with O_DIRECT, byte for byte from chunks of any length; any other through the page cache', async () => {
    const dest = join(fresh('direct'), 'pgdata');
    const { content, plan, source, direct } = backup(dest, { 'base/1/aligned': 3 * MiB, 'base/1/aligned-odd': 5 * MiB + 3 * 4096, 'base/1/unaligned': 3 * MiB + 5 });
    expect((await writeRecovery(plan, dest, source, { parallel: 2 })).written).toBe(5);
    expect(Object.fromEntries(direct)).toEqual({ 'base/1/aligned': true, 'base/1/aligned-odd': true, 'base/1/unaligned': false, 'base/1/small': undefined, 'global/pg_control': false });
    for (const [path, bytes] of content) expect(readFileSync(join(dest, path)).equals(bytes), path).toBe(true);
  });

  it('writes more big files at once than it has aligned memory for: four with O_DIRECT, the others through the page cache, all byte for byte', async () => {
    const dest = join(fresh('direct-many'), 'pgdata');
    const sizes = Object.fromEntries(Array.from({ length: 6 }, (_, i) => [`base/1/big-${i}`, 3 * MiB + i * 4096]));
    const { content, plan, source, direct } = backup(dest, sizes);
    await writeRecovery(plan, dest, source, { parallel: 6 });
    expect(Object.keys(sizes).filter((p) => direct.get(p) === true)).toHaveLength(4);
    expect(Object.keys(sizes).filter((p) => direct.get(p) === false)).toHaveLength(2);
    for (const [path, bytes] of content) expect(readFileSync(join(dest, path)).equals(bytes), path).toBe(true);
  });

  it('refuses a file written with O_DIRECT whose bytes end short of its manifest size, before its unaligned tail is written', async () => {
    const dest = fresh('direct-short');
    const { content, plan, source, direct } = backup(dest, { 'base/1/aligned': 3 * MiB });
    content.set('base/1/aligned', content.get('base/1/aligned')!.subarray(0, 3 * MiB - 100));
    await refusal(writeRecovery(plan, dest, source, { parallel: 2 }), ErrorCode.CHECKSUM_MISMATCH, /base\/1\/aligned in the catalog does not match its manifest \(3145628 bytes, CRC-32C [0-9a-f]{8}; manifest: 3145728 bytes/);
    expect(direct.get('base/1/aligned')).toBe(true);
    expect(readdirSync(dest)).toEqual([]);
  });

  it('refuses a flipped byte in a file written with O_DIRECT, names it, leaves nothing behind, and the next recovery writes directly again', async () => {
    const dest = fresh('direct-flipped');
    const damaged = backup(dest, { 'base/1/aligned': 4 * MiB, 'base/1/other': 3 * MiB }, { path: 'base/1/aligned', at: 3 * MiB + 17 });
    await refusal(writeRecovery(damaged.plan, dest, damaged.source, { parallel: 2 }), ErrorCode.CHECKSUM_MISMATCH, /base\/1\/aligned in the catalog does not match its manifest \(4194304 bytes, CRC-32C [0-9a-f]{8}; manifest: 4194304 bytes, CRC-32C [0-9a-f]{8}\)/);
    expect(damaged.direct.get('base/1/aligned')).toBe(true);
    expect(readdirSync(dest)).toEqual([]);
    // the failed run gave its aligned memory back: all of it serves the next one
    const again = backup(dest, Object.fromEntries(Array.from({ length: 4 }, (_, i) => [`base/1/big-${i}`, 3 * MiB])));
    await writeRecovery(again.plan, dest, again.source, { parallel: 4 });
    expect([...again.direct].filter(([p, d]) => p.startsWith('base/1/big-') && d === true)).toHaveLength(4);
  });
});

describe('writeRecovery, the WAL files of a plan', () => {
  const walNames = (count: number) => Array.from({ length: count }, (_, i) => `0000000100000000000000${(16 + i).toString(16).toUpperCase().padStart(2, '0')}`);
  /** each segment's bytes: its name repeated, `chunks` chunks of it */
  const walBytes = (name: string, chunk: number) => Buffer.from(`${name}:${chunk};`.repeat(500));
  /**
   * A source whose WAL files each come in `chunks` chunks, a macrotask apart (as a read from disk
   * or the network would), counting how many are being read at once; `failOn` fails that one
   * after its first chunk, as a checksum that does not match fails a catalog's WAL at its end.
   */
  const walSource = (chunks: number, failOn?: string) => {
    const seen = { open: 0, most: 0, startedAfterFailure: 0, failed: false };
    const source: RecoverySource = {
      ...sourceOf(),
      async *walFile(name) {
        if (seen.failed) seen.startedAfterFailure++;
        seen.most = Math.max(seen.most, ++seen.open);
        try {
          for (let c = 0; c < chunks; c++) {
            await new Promise((resolve) => setTimeout(resolve, 2));
            if (name === failOn && c === 1) {
              seen.failed = true;
              throw new BarmanError(ErrorCode.CHECKSUM_MISMATCH, `${name}: the catalog's copy does not match its checksum`, 'Check the catalog.');
            }
            yield walBytes(name, c);
          }
        } finally {
          seen.open--;
        }
      },
    };
    return { source, seen };
  };

  it('copies many segments several at once into barman_wal/, each byte for byte, and counts them all', async () => {
    const wals = walNames(24);
    const { source, seen } = walSource(3);
    const dest = join(fresh('wals'), 'pgdata');
    const progress: number[] = [];
    await writeRecovery(planOf({ wals }), dest, source, { progress: (e) => e.phase === 'wal' && progress.push(e.done) });
    expect(seen.most, 'segments read at the same time').toBeGreaterThan(1);
    for (const name of wals) {
      expect(readFileSync(join(dest, 'barman_wal', name)).equals(Buffer.concat([0, 1, 2].map((c) => walBytes(name, c)))), name).toBe(true);
    }
    expect(readdirSync(join(dest, 'barman_wal')).sort()).toEqual(wals);
    expect(progress.at(-1)).toBe(wals.length);
    expect(existsSync(join(dest, 'global/pg_control'))).toBe(true);
  });

  it('a segment that fails among those being copied stops the copy: none starts after it, and the clean-up leaves nothing behind', async () => {
    const wals = walNames(24);
    const { source, seen } = walSource(3, wals[5]);
    const dest = fresh('wals-failed');
    await refusal(writeRecovery(planOf({ wals }), dest, source), ErrorCode.CHECKSUM_MISMATCH, new RegExp(`${wals[5]}: the catalog's copy does not match`));
    expect(seen.startedAfterFailure, 'segments started after the failure').toBe(0);
    expect(seen.open, 'segments still being read').toBe(0);
    // the copies that were under way ended before the clean-up: nothing of them is left, and pg_control was never written
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(readdirSync(dest)).toEqual([]);
  });
});
