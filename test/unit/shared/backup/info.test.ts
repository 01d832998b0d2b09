import { describe, expect, it } from 'vitest';
import { backupIdFor, displayTime, emptyInfo, formatBackupInfo, localIsoTime, parseBackupInfo } from '../../../../shared/backup/info';

describe('backup times as shown', () => {
  it('spells a time in local time with its offset, the clock of the backup ID', () => {
    for (const iso of ['2026-11-25T11:00:05.123Z', '2026-06-30T23:59:59.999Z', '2026-01-01T00:00:00.000Z']) {
      const local = localIsoTime(iso);
      expect(local).toMatch(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}[+-]\d{2}:\d{2}$/);
      expect(Date.parse(local)).toBe(Date.parse(iso));
      // the same wall-clock digits as the ID and as the text output
      expect(local.slice(0, 19).replace(/[-:]/g, '')).toBe(backupIdFor(new Date(iso)));
      expect(displayTime(iso).slice(0, 19)).toBe(local.slice(0, 19).replace('T', ' '));
    }
  });

  it('leaves what is not a time as it is (an unfinished backup has no end time)', () => {
    expect(localIsoTime('')).toBe('');
    expect(localIsoTime('not a time')).toBe('not a time');
  });

  it('stores backup.info with snake_case keys and reads them back', () => {
    const info = { ...emptyInfo('20261125T120005'), beginLsn: '0/2000028', fileCount: 3, tablespaces: [{ oid: '16384', name: 'fast', location: '/x' }] };
    const text = formatBackupInfo(info);
    expect(text).toMatch(/^backup_id=20261125T120005$/m);
    expect(text).toMatch(/^begin_lsn=0\/2000028$/m);
    expect(text).toMatch(/^file_count=3$/m);
    expect(parseBackupInfo(text)).toEqual(info);
    const fromStandby = { ...info, fromStandby: true };
    expect(formatBackupInfo(fromStandby)).toMatch(/^from_standby=true$/m);
    expect(parseBackupInfo(formatBackupInfo(fromStandby))).toEqual(fromStandby);
  });
});
