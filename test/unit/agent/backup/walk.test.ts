// What a base backup takes of a data directory: pg_wal's folders (archive_status, and summaries
// from PostgreSQL 17) but none of its files. Real files in a temp folder.

import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { walkDataDirectory } from '../../../../agent/backup/walk';

let pgdata: string;
beforeEach(() => {
  pgdata = mkdtempSync(join(tmpdir(), 'barman-walk-'));
});
afterEach(() => rmSync(pgdata, { recursive: true, force: true }));

const file = (rel: string, content = 'x') => {
  mkdirSync(join(pgdata, rel, '..'), { recursive: true });
  writeFileSync(join(pgdata, rel), content);
};

it('keeps every folder of pg_wal (PostgreSQL 17 has summaries beside archive_status) and none of its files', async () => {
  file('PG_VERSION', '17\n');
  file('global/pg_control');
  file('pg_wal/000000010000000000000001');
  file('pg_wal/archive_status/000000010000000000000001.ready', '');
  file('pg_wal/summaries/0000000100000000010000280000000001000110.summary');
  const { files, directories } = await walkDataDirectory(pgdata);
  expect(directories.filter((d) => d.startsWith('pg_wal'))).toEqual(['pg_wal', 'pg_wal/archive_status', 'pg_wal/summaries']);
  expect(files.map((f) => f.path)).toEqual(['PG_VERSION', 'global/pg_control']);
});

it('keeps pg_wal/archive_status alone where there is nothing else (PostgreSQL 13 to 16)', async () => {
  file('global/pg_control');
  file('pg_wal/archive_status/.keep', '');
  const { directories } = await walkDataDirectory(pgdata);
  expect(directories.filter((d) => d.startsWith('pg_wal'))).toEqual(['pg_wal', 'pg_wal/archive_status']);
});
