// The backup's file list on a real directory tree shaped like a data directory, with the links a
// compromised or careless host may hold: links are listed as links, never followed, except the
// tablespaces under pg_tblspc/ and a pg_wal moved to another disk.

import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { type WalkResult, walkDataDirectory } from '../../../../agent/backup/walk';

describe('walkDataDirectory', () => {
  let root: string;
  let pgdata: string;
  let outside: string;
  let tablespace: string;
  let walDisk: string;
  let result: WalkResult;

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'barman-unit-walk-'));
    pgdata = join(root, 'pgdata');
    outside = join(root, 'outside');
    tablespace = join(root, 'tablespace');
    walDisk = join(root, 'wal-disk');
    for (const d of ['global', 'base/1', 'pg_tblspc', 'pg_stat_tmp']) mkdirSync(join(pgdata, d), { recursive: true });
    writeFileSync(join(pgdata, 'PG_VERSION'), '15\n');
    writeFileSync(join(pgdata, 'global', 'pg_control'), 'control');
    writeFileSync(join(pgdata, 'base', '1', '1259'), 'a relation');
    mkdirSync(outside);
    writeFileSync(join(outside, 'secret.txt'), 'not part of any backup');
    mkdirSync(join(tablespace, 'PG_15_202209061', '5'), { recursive: true });
    writeFileSync(join(tablespace, 'PG_15_202209061', '5', '16390'), 'a relation in a tablespace');
    mkdirSync(join(walDisk, 'archive_status'), { recursive: true });
    writeFileSync(join(walDisk, '000000010000000000000001'), 'wal');

    symlinkSync(tablespace, join(pgdata, 'pg_tblspc', '16385'));
    symlinkSync(walDisk, join(pgdata, 'pg_wal'));
    symlinkSync('/etc/hostname', join(pgdata, 'evil_link'));
    symlinkSync(outside, join(pgdata, 'outside_dir'));
    symlinkSync('loop_b', join(pgdata, 'loop_a'));
    symlinkSync('loop_a', join(pgdata, 'loop_b'));
    symlinkSync('..', join(pgdata, 'global', 'up'));
    symlinkSync('/nowhere/at/all', join(pgdata, 'base', '1', 'dangling'));
    symlinkSync('/etc/hostname', join(tablespace, 'PG_15_202209061', 'evil_in_tablespace'));
    symlinkSync('/etc/passwd', join(pgdata, 'postmaster.pid'));
    result = await walkDataDirectory(pgdata);
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it('lists every symlink as a link, with its target as written, and follows none of them', () => {
    expect(result.symlinks.sort((a, b) => a.path.localeCompare(b.path))).toEqual([
      { path: 'base/1/dangling', target: '/nowhere/at/all' },
      { path: 'evil_link', target: '/etc/hostname' },
      { path: 'global/up', target: '..' },
      { path: 'loop_a', target: 'loop_b' },
      { path: 'loop_b', target: 'loop_a' },
      { path: 'outside_dir', target: outside },
      { path: 'pg_tblspc/16385/PG_15_202209061/evil_in_tablespace', target: '/etc/hostname' },
    ]);
  });

  it('copies nothing through a link: each file once, none from outside the data directory and its tablespaces', () => {
    const paths = result.files.map((f) => f.path);
    expect(new Set(paths).size).toBe(paths.length);
    expect(paths.sort()).toEqual(['PG_VERSION', 'base/1/1259', 'global/pg_control', 'pg_tblspc/16385/PG_15_202209061/5/16390']);
    for (const f of result.files) expect(f.absolute.startsWith(outside)).toBe(false);
  });

  it('follows pg_tblspc/<oid> as a tablespace and keeps a linked pg_wal as an empty directory, as pg_basebackup does', () => {
    expect(result.directories).toEqual(expect.arrayContaining(['pg_tblspc/16385', 'pg_tblspc/16385/PG_15_202209061/5', 'pg_wal', 'pg_wal/archive_status', 'pg_stat_tmp']));
    expect(result.directories.filter((d) => d.startsWith('pg_wal/'))).toEqual(['pg_wal/archive_status']);
    expect(result.directories.some((d) => d.startsWith('global/up') || d.startsWith('outside_dir'))).toBe(false);
  });

  it('leaves out a link under a name PostgreSQL excludes from a backup (postmaster.pid)', () => {
    expect(result.symlinks.some((l) => l.path === 'postmaster.pid')).toBe(false);
    expect(result.files.some((f) => f.path === 'postmaster.pid')).toBe(false);
  });

  it('puts global/pg_control last', () => {
    expect(result.files[result.files.length - 1]!.path).toBe('global/pg_control');
  });
});

describe('walkDataDirectory on a data directory made for one test', () => {
  let pgdata: string;
  beforeEach(() => {
    pgdata = mkdtempSync(join(tmpdir(), 'barman-unit-walk-'));
  });
  afterEach(() => rmSync(pgdata, { recursive: true, force: true }));

  const file = (rel: string, content: string | Buffer = 'x') => {
    mkdirSync(join(pgdata, rel, '..'), { recursive: true });
    writeFileSync(join(pgdata, rel), content);
  };

  it('lists the largest files first, wherever readdir finds them, and global/pg_control last even when it is larger', async () => {
    const sizes: Record<string, number> = { 'PG_VERSION': 3, 'base/1/112': 8192, 'base/5/16397': 65536, 'base/5/16398': 24576, 'global/1262': 16384, 'global/pg_control': 1 << 17, 'base/5/16384': 1 << 20 };
    for (const [rel, size] of Object.entries(sizes)) file(rel, Buffer.alloc(size));
    const { files } = await walkDataDirectory(pgdata);
    expect(files.map((f) => f.path)).toEqual(['base/5/16384', 'base/5/16397', 'base/5/16398', 'global/1262', 'base/1/112', 'PG_VERSION', 'global/pg_control']);
  });

  it('keeps summaries beside archive_status where the server has it (PostgreSQL 17), and none of their files', async () => {
    file('PG_VERSION', '17\n');
    file('global/pg_control');
    file('pg_wal/000000010000000000000001');
    file('pg_wal/archive_status/000000010000000000000001.ready', '');
    file('pg_wal/summaries/0000000100000000010000280000000001000110.summary');
    file('pg_wal/not-postgres/stray');
    const { files, directories } = await walkDataDirectory(pgdata);
    expect(directories.filter((d) => d.startsWith('pg_wal'))).toEqual(['pg_wal', 'pg_wal/archive_status', 'pg_wal/summaries']);
    expect(files.map((f) => f.path)).toEqual(['PG_VERSION', 'global/pg_control']);
  });

  it('keeps archive_status alone where there is no summaries folder (PostgreSQL 13 to 16)', async () => {
    file('global/pg_control');
    file('pg_wal/archive_status/.keep', '');
    const { directories } = await walkDataDirectory(pgdata);
    expect(directories.filter((d) => d.startsWith('pg_wal'))).toEqual(['pg_wal', 'pg_wal/archive_status']);
  });
});
