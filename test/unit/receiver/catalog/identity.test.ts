// The catalog learns its cluster's identity (system identifier, WAL segment size, major version,
// WAL magic) from whichever comes first, a segment, a stream or a backup, and never assumes a
// segment size: a backup of a 64 MB-segment cluster that starts before any WAL arrived is named
// by 64 MB segments. Real files in a temp folder.

import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BackupCatalog } from '../../../../receiver/catalog/backups';
import { ServerCatalog } from '../../../../receiver/catalog/catalog';
import { PosixDriver } from '../../../../receiver/storage/posix-driver';
import { Storage } from '../../../../receiver/storage/storage';
import { emptyInfo } from '../../../../shared/backup/info';
import { BarmanError, ErrorCode } from '../../../../shared/errors';
import type { BackupStart } from '../../../../shared/protocol/frames';

const MB = 1024 * 1024;
const SYSID = '7712075971341596236';

/** Server main's catalog under `home`, on the posix driver, as serve opens it. */
const catalogIn = (home: string) => new ServerCatalog(new Storage(new PosixDriver(home)), home, 'main', 'none');

let home: string;
beforeEach(() => {
  home = mkdtempSync(join(tmpdir(), 'barman-identity-'));
});
afterEach(() => rmSync(home, { recursive: true, force: true }));

async function refusal(p: Promise<unknown>): Promise<BarmanError> {
  const err = await p.then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(BarmanError);
  return err as BarmanError;
}

function start(segmentSize: number, startLsn = '0/2000028', pgVersion = 170010): BackupStart {
  return { startLsn, timeline: 1, startTime: new Date().toISOString(), systemIdentifier: SYSID, pgVersion, segmentSize, pgdata: '/var/lib/postgresql/17/main', tablespaces: [] };
}

describe('the catalog identity', () => {
  it('knows no segment size before anything of the cluster arrived, and says what to do', async () => {
    const e = await refusal(catalogIn(home).segmentSize());
    expect(e.code).toBe(ErrorCode.WAL_NOT_FOUND);
    expect(e.message).toMatch(/server main has received no WAL and no backup yet/);
  });

  it('is learned from a stream or a backup, and a segment fills in the WAL magic', async () => {
    const catalog = catalogIn(home);
    await catalog.learnIdentity({ systemIdentifier: SYSID, segmentSize: 64 * MB, pgVersion: 17 });
    expect(await catalog.segmentSize()).toBe(64 * MB);
    expect((await catalog.identity())?.walMagic).toBeUndefined();
    await catalog.learnIdentity({ systemIdentifier: SYSID, segmentSize: 64 * MB, walMagic: 0xd116, pgVersion: 17 });
    // on disk, as a fresh process reads it
    const saved = JSON.parse(readFileSync(join(home, 'main', 'identity.json'), 'utf8'));
    expect(saved).toMatchObject({ systemIdentifier: SYSID, segmentSize: 64 * MB, walMagic: 0xd116, pgVersion: 17 });
    expect(await catalogIn(home).segmentSize()).toBe(64 * MB);
  });

  it('loses nothing when a backup and a segment arrive at once', async () => {
    const catalog = catalogIn(home);
    await Promise.all([
      catalog.learnIdentity({ systemIdentifier: SYSID, segmentSize: MB, pgVersion: 15 }),
      catalog.learnIdentity({ systemIdentifier: SYSID, segmentSize: MB, walMagic: 0xd110, pgVersion: 15 }),
      catalog.learnIdentity({ systemIdentifier: SYSID, segmentSize: MB }),
    ]);
    expect(JSON.parse(readFileSync(join(home, 'main', 'identity.json'), 'utf8'))).toMatchObject({ segmentSize: MB, walMagic: 0xd110, pgVersion: 15 });
  });

  it.each([
    ['another system identifier', { systemIdentifier: '7712075971341596237', segmentSize: 16 * MB }, /system identifier 7712075971341596237, this server's WAL comes from 7712075971341596236/],
    ['another segment size', { systemIdentifier: SYSID, segmentSize: 64 * MB }, /WAL segment size is 67108864 bytes, this server's is 16777216/],
    ['another major version', { systemIdentifier: SYSID, segmentSize: 16 * MB, pgVersion: 16 }, /runs PostgreSQL 16, this server's WAL comes from PostgreSQL 15/],
  ])('refuses %s (WAL_FOREIGN) and keeps what it knew', async (_what, seen, message) => {
    const catalog = catalogIn(home);
    await catalog.learnIdentity({ systemIdentifier: SYSID, segmentSize: 16 * MB, walMagic: 0xd110, pgVersion: 15 });
    const e = await refusal(catalog.learnIdentity(seen));
    expect(e.code).toBe(ErrorCode.WAL_FOREIGN);
    expect(e.message).toMatch(message);
    expect(e.hint).toMatch(/own server section/);
    expect(await catalogIn(home).identity()).toMatchObject({ systemIdentifier: SYSID, segmentSize: 16 * MB, pgVersion: 15 });
  });
});

describe('a backup before any WAL', () => {
  it.each([
    [1 * MB, '000000010000000000000020'],
    [16 * MB, '000000010000000000000002'],
    [64 * MB, '000000010000000000000000'],
  ])('with %i-byte segments names its first segment by them', async (segmentSize, beginWal) => {
    const catalog = catalogIn(home);
    const info = await new BackupCatalog(catalog).begin(start(segmentSize, '0/2000028'));
    expect(info.beginWal).toBe(beginWal);
    expect(await catalog.segmentSize()).toBe(segmentSize);
    expect((await catalog.identity())?.pgVersion).toBe(17);
  });

  it('is refused for another cluster than the catalog\'s', async () => {
    const catalog = catalogIn(home);
    await catalog.learnIdentity({ systemIdentifier: '7712075971341596237', segmentSize: 16 * MB });
    const e = await refusal(new BackupCatalog(catalog).begin(start(16 * MB)));
    expect(e.code).toBe(ErrorCode.WAL_FOREIGN);
  });
});

describe('a backup waiting for its WAL', () => {
  const info = (beginWal: string, endWal: string) => ({ ...emptyInfo('20261130T120000'), status: 'WAITING_FOR_WALS' as const, timeline: 1, beginWal, endWal });
  const archive = (catalog: ServerCatalog, name: string) => catalog.storage.put(catalog.layout.walKey(name, createHash('sha256').update('').digest('hex')), Buffer.alloc(0));

  it('is complete once every segment of its range at the cluster\'s size is archived, across a log boundary', async () => {
    const catalog = catalogIn(home);
    await catalog.learnIdentity({ systemIdentifier: SYSID, segmentSize: 64 * MB });
    const backups = new BackupCatalog(catalog);
    const range = info('00000001000000000000003F', '000000010000000100000000');
    await archive(catalog, '00000001000000000000003F');
    expect(await backups.walsComplete(range)).toBe(false);
    await archive(catalog, '000000010000000100000000');
    expect(await backups.walsComplete(range)).toBe(true);
  });

  it('is never complete when its range ends before it begins', async () => {
    const catalog = catalogIn(home);
    await catalog.learnIdentity({ systemIdentifier: SYSID, segmentSize: 64 * MB });
    for (const name of ['000000010000000000000000', '000000010000000000000001', '000000010000000000000002']) await archive(catalog, name);
    expect(await new BackupCatalog(catalog).walsComplete(info('000000010000000000000002', '000000010000000000000000'))).toBe(false);
  });
});
