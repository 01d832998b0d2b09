import { describe, expect, it } from 'vitest';
import { snakeCase, snakeKeys } from '../../../shared/snake-case';

describe('snake_case keys', () => {
  it.each([
    ['backupId', 'backup_id'],
    ['beginLsn', 'begin_lsn'],
    ['removedWals', 'removed_wals'],
    ['ok', 'ok'],
    ['pgdata', 'pgdata'],
    ['last_received_at', 'last_received_at'],
  ])('%s → %s', (from, to) => {
    expect(snakeCase(from)).toBe(to);
  });

  it('renames the top-level keys and leaves values alone', () => {
    const tablespaces = [{ oid: '16384', name: 'fast_disk', location: '/srv/fastDisk' }];
    const out = snakeKeys({ backupId: '20261125T120005', fileCount: 3, tablespaces });
    expect(out).toEqual({ backup_id: '20261125T120005', file_count: 3, tablespaces });
    expect(out.tablespaces).toBe(tablespaces);
  });
});
