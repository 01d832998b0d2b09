import { describe, expect, it } from 'vitest';
import { type BackupInfo, emptyInfo } from '../../../../shared/backup/info';
import { applyRetention, oldestNeededSegment } from '../../../../receiver/catalog/retention';

const NOW = new Date('2026-11-25T12:00:00Z');

function backup(id: string, endTime: string, extra: Partial<BackupInfo> = {}): BackupInfo {
  return { ...emptyInfo(id), status: 'DONE', endTime, beginWal: `00000001000000000000${id.slice(6, 8)}00`, ...extra };
}

const b1 = backup('20261101T000000', '2026-11-01T00:10:00Z');
const b2 = backup('20261110T000000', '2026-11-10T00:10:00Z');
const b3 = backup('20261120T000000', '2026-11-20T00:10:00Z');
const b4 = backup('20261124T000000', '2026-11-24T00:10:00Z');
const ids = (list: BackupInfo[]) => list.map((b) => b.backupId);

describe('applyRetention', () => {
  it('keeps everything without a policy', () => {
    expect(applyRetention([b1, b2, b3], undefined, 0, NOW).remove).toEqual([]);
  });

  it('REDUNDANCY 2 keeps the newest two DONE backups', () => {
    const d = applyRetention([b3, b1, b4, b2], { kind: 'redundancy', count: 2 }, 0, NOW);
    expect(ids(d.remove)).toEqual([b1.backupId, b2.backupId]);
    expect(ids(d.keep)).toEqual([b3.backupId, b4.backupId]);
  });

  it('never removes a backup marked keep, and says so', () => {
    const kept = { ...b1, keep: true };
    const d = applyRetention([kept, b2, b3, b4], { kind: 'redundancy', count: 1 }, 0, NOW);
    expect(ids(d.remove)).toEqual([b2.backupId, b3.backupId]);
    expect(d.notes.join()).toContain(`${b1.backupId} is obsolete under the policy but marked keep`);
  });

  it('respects minimum_redundancy even when the policy would remove more', () => {
    const d = applyRetention([b1, b2, b3, b4], { kind: 'redundancy', count: 1 }, 3, NOW);
    expect(ids(d.remove)).toEqual([b1.backupId]);
    expect(d.notes.filter((n) => n.includes('minimum_redundancy'))).toHaveLength(2);
  });

  it('RECOVERY WINDOW keeps the backups inside the window and the newest one before it', () => {
    // window of 7 days from 2026-11-25: starts 2026-11-18; b3 and b4 end inside, b2 is the newest before
    const d = applyRetention([b1, b2, b3, b4], { kind: 'window', amount: 7, unit: 'days' }, 0, NOW);
    expect(ids(d.remove)).toEqual([b1.backupId]);
  });

  it('RECOVERY WINDOW OF 1 WEEKS and OF 1 MONTHS', () => {
    expect(ids(applyRetention([b1, b2, b3, b4], { kind: 'window', amount: 1, unit: 'weeks' }, 0, NOW).remove)).toEqual([b1.backupId]);
    // a month back is 2026-10-25: every backup ends inside, none is removed
    expect(applyRetention([b1, b2, b3, b4], { kind: 'window', amount: 1, unit: 'months' }, 0, NOW).remove).toEqual([]);
  });

  it('ignores FAILED and running backups entirely', () => {
    const failed = { ...b1, status: 'FAILED' as const };
    const waiting = { ...b2, status: 'WAITING_FOR_WALS' as const };
    const d = applyRetention([failed, waiting, b3, b4], { kind: 'redundancy', count: 1 }, 0, NOW);
    expect(ids(d.remove)).toEqual([b3.backupId]);
  });
});

describe('oldestNeededSegment', () => {
  it('is the begin WAL of the oldest remaining backup, compared without the timeline', () => {
    const onTl2 = { ...b3, beginWal: '000000020000000000000005' };
    const onTl1 = { ...b4, beginWal: '000000010000000000000009' };
    expect(oldestNeededSegment([onTl1, onTl2])).toBe('000000020000000000000005');
  });

  it('is undefined without backups (then no WAL is removed)', () => {
    expect(oldestNeededSegment([])).toBeUndefined();
    expect(oldestNeededSegment([{ ...b1, status: 'FAILED' }])).toBeUndefined();
  });
});
