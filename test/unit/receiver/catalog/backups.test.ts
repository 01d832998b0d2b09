import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BackupCatalog, BUNDLE_FILE_LIMIT, checkClockSkew, MAX_CLOCK_SKEW_MS, safeRelativePath } from '../../../../receiver/catalog/backups';
import { ServerCatalog } from '../../../../receiver/catalog/catalog';
import { PosixDriver } from '../../../../receiver/storage/posix-driver';
import { Storage } from '../../../../receiver/storage/storage';
import { BarmanError, ErrorCode } from '../../../../shared/errors';
import { crc32cOfBytes } from '../../../harness/fs';

function errorOf(fn: () => unknown): BarmanError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(BarmanError);
    return err as BarmanError;
  }
  throw new Error('accepted');
}

describe('safeRelativePath', () => {
  it.each(['base/1/1259', 'global/pg_control', 'pg_tblspc/16384/PG_15_202209061/5/16385', `base/1/${'n'.repeat(255)}`])('accepts %s', (path) => {
    expect(safeRelativePath(path)).toBe(path);
  });

  it.each([
    ['a 256-byte name', `base/${'n'.repeat(256)}`],
    ['a 300-character name', 'x'.repeat(300)],
    ['a name of 128 two-byte characters (256 bytes)', 'é'.repeat(128)],
    ['a path over 1024 bytes', Array.from({ length: 5 }, () => 'd'.repeat(250)).join('/')],
  ])('refuses %s as an invalid name that says it is too long', (_what, path) => {
    const e = errorOf(() => safeRelativePath(path));
    expect(e.code).toBe(ErrorCode.INVALID_NAME);
    expect(e.message).toMatch(/too long/);
    expect(e.message.length).toBeLessThan(300);
  });

  it.each(['', '/etc/passwd', '../x', 'a/../../x', 'a//b', './a', 'a\\b', 'backup_label', 'backup_manifest'])('refuses %j', (path) => {
    expect(errorOf(() => safeRelativePath(path)).code).toBe(ErrorCode.INVALID_NAME);
  });
});

describe('checkClockSkew', () => {
  const now = Date.parse('2026-12-01T12:00:00Z');

  it('accepts a start time up to the limit either side of this host\'s clock', () => {
    for (const offset of [0, MAX_CLOCK_SKEW_MS, -MAX_CLOCK_SKEW_MS, 90_000]) expect(() => checkClockSkew(new Date(now + offset).toISOString(), now)).not.toThrow();
  });

  it('refuses a start time in 2099, or ten minutes behind, saying by how much and to synchronise the clocks', () => {
    const future = errorOf(() => checkClockSkew('2099-01-01T00:00:00Z', now));
    expect(future.code).toBe(ErrorCode.CLOCK_SKEW);
    expect(future.message).toMatch(/2099-01-01T00:00:00Z, \d+ minutes ahead of the backup host's clock \(2026-12-01T12:00:00\.000Z\)/);
    expect(future.hint).toMatch(/Synchronise the clocks .*NTP/);
    const behind = errorOf(() => checkClockSkew(new Date(now - 10 * 60_000).toISOString(), now));
    expect(behind.message).toMatch(/10 minutes behind/);
  });
});

describe('BackupCatalog.fail: nothing of a failed backup lands after its files went', () => {
  const home = mkdtempSync(join(tmpdir(), 'barman-unit-backups-'));
  afterAll(() => rmSync(home, { recursive: true, force: true }));
  // a file too big for a bundle: written under data/ through its own writer
  const bytes = Buffer.alloc(BUNDLE_FILE_LIMIT + 4096, 7);
  const crc = crc32cOfBytes(bytes);

  /** A running backup of server `name` on the posix driver (zstd, the default), as serve opens it. */
  const running = async (name: string) => {
    const backups = new BackupCatalog(new ServerCatalog(new Storage(new PosixDriver(home)), home, name, 'zstd'));
    const info = await backups.begin({
      startLsn: '0/2000028', timeline: 1, startTime: new Date().toISOString(), systemIdentifier: '7300000000000000001',
      pgVersion: 150000, segmentSize: 16 * 1024 * 1024, pgdata: '/var/lib/postgresql/15/main', tablespaces: [],
    });
    const dir = join(home, name, 'base', info.backupId);
    /** Every file and directory left below the backup's directory, temporary files included. */
    const left = () => readdirSync(dir, { recursive: true }).map(String).sort();
    return { backups, id: info.backupId, left };
  };

  const failedWith = async (work: Promise<unknown>, code: ErrorCode) => {
    const err = await work.then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(BarmanError);
    expect((err as BarmanError).code).toBe(code);
  };

  it('refuses to commit a file whose whole content arrived before the backup failed (its end came after)', async () => {
    const { backups, id, left } = await running('late-end');
    const upload = await backups.beginFile(id, 'base/5/16384', bytes.length, 0, []);
    await upload.write(bytes);
    await backups.fail(id, 'the agent connection was lost during the backup');
    await failedWith(upload.finish(undefined, crc), ErrorCode.BACKUP_FAILED);
    expect(left()).toEqual(['backup.info']);
    expect((await backups.read(id)).status).toBe('FAILED');
  });

  it('waits for a file being committed, then removes it with the rest', async () => {
    const { backups, id, left } = await running('committing');
    const upload = await backups.beginFile(id, 'base/5/16384', bytes.length, 0, []);
    await upload.write(bytes);
    const finishing = upload.finish(undefined, crc);
    await backups.fail(id, 'the agent connection was lost during the backup');
    await finishing.catch(() => undefined);
    expect(left()).toEqual(['backup.info']);
  });

  it('gives up a file still open, and one being opened, leaving no temporary file; their next chunk is refused', async () => {
    const { backups, id, left } = await running('open');
    const open = await backups.beginFile(id, 'base/5/16384', bytes.length, 0, []);
    await open.write(bytes.subarray(0, 4096));
    const opening = backups.beginFile(id, 'base/5/16385', bytes.length, 0, []);
    await backups.fail(id, 'the agent connection was lost during the backup');
    const late = await opening.catch(() => undefined);
    expect(left()).toEqual(['backup.info']);
    await failedWith(open.write(bytes.subarray(4096, 8192)), ErrorCode.BACKUP_FAILED);
    if (late) await failedWith(late.write(bytes.subarray(0, 4096)), ErrorCode.BACKUP_FAILED);
    await failedWith(backups.beginFile(id, 'base/5/16386', bytes.length, 0, []), ErrorCode.BACKUP_FAILED);
    expect(left()).toEqual(['backup.info']);
  });
});
