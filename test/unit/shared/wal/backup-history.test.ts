import { describe, expect, it } from 'vitest';
import { validateBackupHistory } from '../../../../shared/wal/backup-history';

const NAME = '000000010000000000000002.00000028.backup';
/** as PostgreSQL 15's pg_backup_stop writes it */
const PG15 = [
  'START WAL LOCATION: 0/2000028 (file 000000010000000000000002)',
  'STOP WAL LOCATION: 0/2000100 (file 000000010000000000000002)',
  'CHECKPOINT LOCATION: 0/2000060',
  'BACKUP METHOD: streamed',
  'BACKUP FROM: primary',
  'START TIME: 2026-11-25 10:00:00 UTC',
  'LABEL: barman-ts 20261125T100000',
  'START TIMELINE: 1',
  'STOP TIME: 2026-11-25 10:00:05 UTC',
  'STOP TIMELINE: 1',
  '',
].join('\n');
const MB = 1024 * 1024;

const without = (key: string) => PG15.split('\n').filter((l) => !l.startsWith(key)).join('\n');
const replace = (key: string, value: string) => PG15.split('\n').map((l) => (l.startsWith(`${key}:`) ? `${key}: ${value}` : l)).join('\n');

describe('validateBackupHistory', () => {
  it('accepts what PostgreSQL writes, with or without a known segment size', () => {
    expect(validateBackupHistory(PG15, NAME, 16 * MB)).toEqual({ startLsn: 0x2000028n, stopLsn: 0x2000100n, checkpointLsn: 0x2000060n, label: 'barman-ts 20261125T100000' });
    expect(validateBackupHistory(PG15, NAME).startLsn).toBe(0x2000028n);
  });

  it('accepts lines it does not know (newer PostgreSQL versions add some) and a stop segment named after the stop LSN', () => {
    const text = replace('STOP WAL LOCATION', '0/3000000 (file 000000010000000000000003)') + 'INCREMENTAL FROM LSN: 0/1000028\n';
    expect(validateBackupHistory(text, NAME, 16 * MB).stopLsn).toBe(0x3000000n);
    expect(validateBackupHistory(replace('STOP WAL LOCATION', '0/3000000 (file 000000010000000000000002)'), NAME, 16 * MB).stopLsn).toBe(0x3000000n);
  });

  it('accepts another segment size when the file fits it', () => {
    // 64 MB segments: 0/2000028 is in segment 0 at offset 0x2000028
    const text = PG15.replace(/\(file 000000010000000000000002\)/g, '(file 000000010000000000000000)');
    expect(validateBackupHistory(text, '000000010000000000000000.02000028.backup').startLsn).toBe(0x2000028n);
    expect(() => validateBackupHistory(text, '000000010000000000000000.02000028.backup', 16 * MB)).toThrow(/does not match/);
  });

  it.each([
    ['garbage', 'this is not a backup history file\n', /no START WAL LOCATION/],
    ['no STOP WAL LOCATION', without('STOP WAL LOCATION'), /no STOP WAL LOCATION/],
    ['no LABEL', without('LABEL'), /no LABEL/],
    ['a START WAL LOCATION of another offset', replace('START WAL LOCATION', '0/2000030 (file 000000010000000000000002)'), /does not match/],
    ['a START WAL LOCATION in another segment', replace('START WAL LOCATION', '0/3000028 (file 000000010000000000000003)'), /does not match/],
    ['a START WAL LOCATION without its file', replace('START WAL LOCATION', '0/2000028'), /START WAL LOCATION is not/],
    ['a STOP before the START', replace('STOP WAL LOCATION', '0/2000020 (file 000000010000000000000002)'), /STOP WAL LOCATION is before/],
    ['a stop on another timeline', replace('STOP WAL LOCATION', '0/2000100 (file 000000020000000000000002)'), /not on the file name's timeline 1/],
    ['a bad CHECKPOINT LOCATION', replace('CHECKPOINT LOCATION', 'soon'), /CHECKPOINT LOCATION is not an LSN/],
    ['a CHECKPOINT before the START', replace('CHECKPOINT LOCATION', '0/2000000'), /CHECKPOINT LOCATION is before/],
  ])('refuses %s', (_what, text, message) => {
    expect(() => validateBackupHistory(text, NAME, 16 * MB)).toThrow(message);
  });
});
