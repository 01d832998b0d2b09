import { describe, expect, it } from 'vitest';
import { type BackupInfo, emptyInfo } from '../../../../shared/backup/info';
import { backupSegments, neededSegments, shareToVerify } from '../../../../receiver/catalog/wal-integrity';

const SIZE = 16 * 1024 * 1024;
const seg = (tli: number, n: number) => `${tli.toString(16).toUpperCase().padStart(8, '0')}00000000${n.toString(16).toUpperCase().padStart(8, '0')}`;
const range = (tli: number, from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => seg(tli, from + i));

function done(id: string, tli: number, begin: number, end: number): BackupInfo {
  return { ...emptyInfo(id), status: 'DONE', timeline: tli, beginWal: seg(tli, begin), endWal: seg(tli, end) };
}

describe('backupSegments', () => {
  it('lists begin WAL to end WAL on the backup\'s timeline', () => {
    expect(backupSegments(done('20261125T100000', 1, 3, 5), SIZE)).toEqual(range(1, 3, 5));
  });
});

describe('neededSegments', () => {
  it('needs nothing without a DONE backup', () => {
    expect(neededSegments([], range(1, 1, 9), new Map(), SIZE)).toEqual({ present: [], missing: [] });
  });

  it('needs the oldest backup\'s begin WAL to the last archived segment, and finds the holes', () => {
    const archived = [...range(1, 1, 4), ...range(1, 6, 9)];
    const r = neededSegments([done('20261125T100000', 1, 3, 3), done('20261126T100000', 1, 7, 7)], archived, new Map(), SIZE);
    expect(r.missing).toEqual([seg(1, 5)]);
    expect(r.present).toEqual([...range(1, 3, 4), ...range(1, 6, 9)]);
  });

  it('needs a backup\'s own range even past the last archived segment', () => {
    const r = neededSegments([done('20261125T100000', 1, 3, 6)], range(1, 3, 4), new Map(), SIZE);
    expect(r.missing).toEqual(range(1, 5, 6));
  });

  it('follows a timeline from where it branched off (its history), not from its first archived segment', () => {
    // timeline 2 branched in segment 6; its segments 6 and 7 are gone, 8 and 9 are there
    const archived = [...range(1, 3, 6), ...range(2, 8, 9)];
    const r = neededSegments([done('20261125T100000', 1, 3, 3)], archived, new Map([[2, seg(2, 6)]]), SIZE);
    expect(r.missing).toEqual(range(2, 6, 7));
    expect(r.present).toEqual([...range(1, 3, 6), ...range(2, 8, 9)].sort());
  });

  it('does not reach back before the oldest backup, on any timeline', () => {
    const archived = [...range(1, 1, 5), ...range(2, 5, 8)];
    const r = neededSegments([done('20261126T100000', 2, 7, 7)], archived, new Map([[2, seg(2, 2)]]), SIZE);
    // timeline 1 has nothing at or after segment 7; timeline 2 is needed from 7 (its branch at 2 is before the oldest backup)
    expect(r.present).toEqual(range(2, 7, 8));
    expect(r.missing).toEqual([]);
  });
});

describe('shareToVerify', () => {
  const present = range(1, 1, 10);

  it('reads everything back when it fits the budget', () => {
    expect(shareToVerify(present, seg(1, 4), 10)).toEqual(present);
  });

  it('takes turns: each run goes on after the last one, wrapping around, until every segment was read', () => {
    const seen: string[] = [];
    let cursor: string | undefined;
    for (let run = 0; run < 4; run++) {
      const share = shareToVerify(present, cursor, 3);
      expect(share).toHaveLength(3);
      seen.push(...share);
      cursor = share[share.length - 1];
    }
    expect(seen.slice(0, 10)).toEqual(present);
    expect(seen.slice(10)).toEqual(range(1, 1, 2));
  });

  it('starts over when the cursor is past the end or its segment is gone', () => {
    expect(shareToVerify(present, seg(1, 10), 3)).toEqual(range(1, 1, 3));
    expect(shareToVerify(range(1, 5, 10), seg(1, 2), 2)).toEqual(range(1, 5, 6));
  });
});
