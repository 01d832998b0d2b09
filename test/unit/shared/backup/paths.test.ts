import { describe, expect, it } from 'vitest';
import { type BackupSymlink, checkSymlinks, MAX_BACKUP_PATH, readableBackupPath, safeRelativePath } from '../../../../shared/backup/paths';
import { BarmanError, ErrorCode } from '../../../../shared/errors';

function refusal(run: () => unknown): BarmanError {
  try {
    run();
  } catch (err) {
    expect(err).toBeInstanceOf(BarmanError);
    expect((err as BarmanError).code).toBe(ErrorCode.INVALID_NAME);
    return err as BarmanError;
  }
  throw new Error('accepted');
}

/** a path of exactly MAX_BACKUP_PATH bytes whose names are each within NAME_MAX (255) */
const LONGEST_PATH = `${Array.from({ length: 5 }, () => 'a'.repeat(200)).join('/')}/${'a'.repeat(MAX_BACKUP_PATH - 1005)}`;

describe('safeRelativePath', () => {
  it('accepts a plain relative path inside the data directory', () => {
    for (const p of ['PG_VERSION', 'base/5/1259', 'pg_tblspc/16385/PG_15_202209061/5/16390', LONGEST_PATH, 'a'.repeat(255)]) expect(safeRelativePath(p)).toBe(p);
  });

  it.each([
    ['empty', ''], ['absolute', '/etc/passwd'], ['parent', '../x'], ['parent inside', 'base/../../x'], ['dot', './base'], ['double slash', 'base//1'],
    ['trailing slash', 'base/'], ['backslash', 'base\\1'], ['NUL', 'base\0x'], ['backup_manifest', 'backup_manifest'], ['backup_label', 'backup_label'],
    ['overlong', `${LONGEST_PATH}a`], ['overlong name', `base/${'a'.repeat(256)}`],
  ])('refuses %s', (_what, path) => {
    refusal(() => safeRelativePath(path));
  });

  it('lets backup_label be read back, and nothing else that is refused', () => {
    expect(readableBackupPath('backup_label')).toBe('backup_label');
    refusal(() => readableBackupPath('../backup_label'));
  });
});

describe('checkSymlinks', () => {
  const files = ['backup_label', 'PG_VERSION', 'base/1/1259', 'global/pg_control'];
  const dirs = ['base', 'base/1', 'global', 'pg_wal', 'pg_wal/archive_status', 'pg_tblspc', 'pg_tblspc/16385'];
  const link = (path: string, target = '/etc/hostname'): BackupSymlink => ({ path, target });

  it('accepts links beside the files, to anywhere, loops included', () => {
    expect(() => checkSymlinks([link('evil_link'), link('loop_a', 'loop_b'), link('loop_b', 'loop_a'), link('global/up', '..'), link('pg_tblspc/16385/PG_15/x')], files, dirs)).not.toThrow();
  });

  it.each([
    ['a path that leaves the data directory', [link('../../root/.ssh/authorized_keys')]],
    ['an absolute path', [link('/etc/cron.d/x')]],
    ['a link where a file goes', [link('PG_VERSION')]],
    ['a link where a directory goes', [link('base/1')]],
    ['a link above files (everything in base/ would go through it)', [link('base')]],
    ['a link above another link', [link('conf'), link('conf/x')]],
    ['the same link twice', [link('x'), link('x', '/tmp')]],
    ['a link named as a file recovery writes', [link('postgresql.auto.conf')]],
    ['a link where recovery puts WAL', [link('barman_wal')]],
    ['a link in the place of backup_label', [link('backup_label')]],
    ['an empty target', [link('x', '')]],
    ['an overlong target', [link('x', `/${'a'.repeat(MAX_BACKUP_PATH)}`)]],
    ['a NUL in the target', [link('x', '/etc\0/passwd')]],
    ['a terminal escape in the target', [link('x', '/tmp/\x1b[2J')]],
    ['a newline in the target', [link('x', '/tmp/a\nb')]],
  ])('refuses %s', (_what, symlinks) => {
    refusal(() => checkSymlinks(symlinks, files, dirs));
  });
});
