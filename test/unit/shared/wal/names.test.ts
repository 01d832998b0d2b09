import { describe, expect, it } from 'vitest';
import { parseLsn } from '../../../../shared/wal/lsn';
import {
  historyFileName,
  isSegmentName,
  isValidSegmentSize,
  nextSegment,
  parseWalFileName,
  segmentForLsn,
  segmentName,
  segmentNumber,
  segmentStartLsn,
  segmentTimeline,
  segmentsPerXLogId,
  walDirectoryOf,
  isWalDirectory,
  segmentPosition,
} from '../../../../shared/wal/names';

const MB = 1024 * 1024;

describe('parseWalFileName', () => {
  it('parses a segment', () => {
    expect(parseWalFileName('0000000100000016000000B3')).toEqual({ kind: 'segment', name: '0000000100000016000000B3', timeline: 1, segment: '0000000100000016000000B3' });
    expect(parseWalFileName('0000001A00000000000000FF')).toMatchObject({ kind: 'segment', timeline: 26 });
  });

  it('parses a partial segment (what streaming leaves at a timeline switch)', () => {
    expect(parseWalFileName('0000000200000000000000A1.partial')).toEqual({ kind: 'partial', name: '0000000200000000000000A1.partial', timeline: 2, segment: '0000000200000000000000A1' });
  });

  it('parses a timeline history file', () => {
    const parsed = parseWalFileName('0000000A.history');
    expect(parsed).toEqual({ kind: 'history', name: '0000000A.history', timeline: 10 });
    expect(parsed).not.toHaveProperty('segment');
  });

  it('parses a backup history file', () => {
    expect(parseWalFileName('000000010000000000000002.00000028.backup')).toEqual({ kind: 'backup', name: '000000010000000000000002.00000028.backup', timeline: 1, segment: '000000010000000000000002' });
  });

  it('reads timelines above 2^31 as positive numbers', () => {
    expect(parseWalFileName('FFFFFFFF00000000000000FF')?.timeline).toBe(0xffffffff);
    expect(parseWalFileName('FFFFFFFF.history')?.timeline).toBe(0xffffffff);
  });

  it.each([
    ['lower case segment', '0000000100000016000000b3'],
    ['lower case history', '0000000a.history'],
    ['lower case partial', '0000000200000000000000a1.partial'],
    ['lower case backup offset', '000000010000000000000002.0000002a.backup'],
    ['upper case suffix', '00000001.HISTORY'],
    ['23 characters', '00000001000000000000001'],
    ['25 characters', '0000000100000000000000010'],
    ['empty', ''],
    ['relative path', 'pg_wal/000000010000000000000001'],
    ['absolute path', '/var/lib/postgresql/15/main/pg_wal/000000010000000000000001'],
    ['parent directory', '../000000010000000000000001'],
    ['parent directory only', '..'],
    ['backslash path', '..\\000000010000000000000001'],
    ['trailing newline', '000000010000000000000001\n'],
    ['leading space', ' 000000010000000000000001'],
    ['non-hex digit', '00000001000000000000000G'],
    ['history with 7 digits', '0000001.history'],
    ['history with 9 digits', '000000001.history'],
    ['history with a segment name', '000000010000000000000001.history'],
    ['backup without offset', '000000010000000000000002.backup'],
    ['backup with short offset', '000000010000000000000002.0028.backup'],
    ['partial history', '00000001.history.partial'],
    ['compressed segment', '000000010000000000000001.gz'],
    ['ready marker', '000000010000000000000001.ready'],
    ['temporary file', '000000010000000000000001.tmp'],
  ])('rejects a %s', (_what, name) => {
    expect(parseWalFileName(name)).toBeUndefined();
  });
});

describe('isSegmentName', () => {
  it('is true only for plain segments', () => {
    expect(isSegmentName('000000010000000000000001')).toBe(true);
    expect(isSegmentName('000000010000000000000001.partial')).toBe(false);
    expect(isSegmentName('00000001.history')).toBe(false);
    expect(isSegmentName('000000010000000000000002.00000028.backup')).toBe(false);
    expect(isSegmentName('00000001000000000000000a')).toBe(false);
    expect(isSegmentName('x/000000010000000000000001')).toBe(false);
  });
});

describe('segment arithmetic with 16 MB segments', () => {
  const size = 16 * MB;

  it('has 256 segments per XLogId', () => {
    expect(size).toBe(16 * MB);
    expect(segmentsPerXLogId(size)).toBe(256n);
  });

  it('numbers segments as XLogSegNo does', () => {
    expect(segmentNumber('000000010000000000000000', size)).toBe(0n);
    expect(segmentNumber('000000010000000000000001', size)).toBe(1n);
    expect(segmentNumber('0000000100000000000000FF', size)).toBe(255n);
    expect(segmentNumber('000000010000000100000000', size)).toBe(256n);
    expect(segmentNumber('0000000100000016000000B3', size)).toBe(0x16n * 256n + 0xb3n);
  });

  it('ignores the timeline when numbering', () => {
    expect(segmentNumber('0000000500000016000000B3', size)).toBe(segmentNumber('0000000100000016000000B3', size));
  });

  it('crosses the XLogId boundary: ...00000000000000FF is followed by ...0000000100000000', () => {
    expect(nextSegment('0000000100000000000000FF', size)).toBe('000000010000000100000000');
    expect(nextSegment('000000010000000000000001', size)).toBe('000000010000000000000002');
    expect(nextSegment('00000001000000000000000F', size)).toBe('000000010000000000000010');
    expect(nextSegment('0000000300000016000000FF', size)).toBe('000000030000001700000000');
  });

  it('builds names from (timeline, segment number)', () => {
    expect(segmentName(1, 0n, size)).toBe('000000010000000000000000');
    expect(segmentName(1, 255n, size)).toBe('0000000100000000000000FF');
    expect(segmentName(1, 256n, size)).toBe('000000010000000100000000');
    expect(segmentName(0x1a, 0x16n * 256n + 0xb3n, size)).toBe('0000001A00000016000000B3');
  });

  it('knows where a segment starts and which segment holds an LSN', () => {
    expect(segmentStartLsn('000000010000000000000001', size)).toBe(parseLsn('0/1000000'));
    expect(segmentStartLsn('000000010000000100000000', size)).toBe(parseLsn('1/0'));
    expect(segmentStartLsn('0000000100000016000000B3', size)).toBe(parseLsn('16/B3000000'));
    expect(segmentForLsn(1, parseLsn('16/B374D848'), size)).toBe('0000000100000016000000B3');
    expect(segmentForLsn(1, parseLsn('16/B3000000'), size)).toBe('0000000100000016000000B3');
    expect(segmentForLsn(1, parseLsn('16/B2FFFFFF'), size)).toBe('0000000100000016000000B2');
    expect(segmentForLsn(2, parseLsn('0/FFFFFFFF'), size)).toBe('0000000200000000000000FF');
  });

  it('stays exact at the top of the LSN space, far above 2^53', () => {
    const last = '00000001FFFFFFFF000000FF';
    expect(segmentNumber(last, size)).toBe((1n << 40n) - 1n);
    expect(segmentStartLsn(last, size)).toBe(parseLsn('FFFFFFFF/FF000000'));
    expect(segmentForLsn(1, parseLsn('FFFFFFFF/FFFFFFFF'), size)).toBe(last);
    expect(segmentName(1, segmentNumber(last, size), size)).toBe(last);
    expect(nextSegment('00000001FFFFFFFE000000FF', size)).toBe('00000001FFFFFFFF00000000');
  });

  it('refuses a name whose segment part does not exist at this size (PostgreSQL never writes ...00000100)', () => {
    // 0000000100000000 00000100 would alias 0000000100000001 00000000 (both segment 256)
    expect(() => segmentNumber('000000010000000000000100', size)).toThrow(RangeError);
    expect(() => segmentStartLsn('0000000100000000000001FF', size)).toThrow(RangeError);
    expect(() => nextSegment('00000001000000000000FFFF', size)).toThrow(RangeError);
  });

  it('refuses what is not a segment name', () => {
    for (const bad of ['00000001.history', '000000010000000000000001.partial', '0000000100000000000000fe', '../000000010000000000000001', '']) {
      expect(() => segmentNumber(bad, size)).toThrow(RangeError);
    }
  });
});

describe('segment arithmetic with other segment sizes', () => {
  it.each([
    [1 * MB, 4096n, '000000010000000000000FFF'],
    [2 * MB, 2048n, '0000000100000000000007FF'],
    [64 * MB, 64n, '00000001000000000000003F'],
    [256 * MB, 16n, '00000001000000000000000F'],
    [1024 * MB, 4n, '000000010000000000000003'],
  ])('%i bytes: %i segments per XLogId, the last of log 0 is followed by log 1', (size, per, lastOfLog0) => {
    expect(segmentsPerXLogId(size)).toBe(per);
    expect(segmentNumber(lastOfLog0, size)).toBe(per - 1n);
    expect(nextSegment(lastOfLog0, size)).toBe('000000010000000100000000');
    expect(segmentNumber('000000010000000100000000', size)).toBe(per);
    expect(segmentStartLsn('000000010000000100000000', size)).toBe(parseLsn('1/0'));
    expect(segmentName(1, per, size)).toBe('000000010000000100000000');
    // the segment part counts whole segments, not 16 MB units
    expect(segmentStartLsn('000000010000000000000001', size)).toBe(BigInt(size));
  });

  it('maps an LSN to the segment that holds it, per size', () => {
    const lsn = parseLsn('16/B374D848');
    expect(segmentForLsn(1, lsn, 1 * MB)).toBe('000000010000001600000B37');
    expect(segmentForLsn(1, lsn, 64 * MB)).toBe('00000001000000160000002C');
    expect(segmentForLsn(1, lsn, 1024 * MB)).toBe('000000010000001600000002');
    for (const size of [1 * MB, 16 * MB, 64 * MB, 1024 * MB]) {
      const name = segmentForLsn(1, lsn, size);
      const start = segmentStartLsn(name, size);
      expect(start <= lsn && lsn < start + BigInt(size)).toBe(true);
    }
  });

  it('refuses a segment part past the end of a log at that size', () => {
    expect(() => segmentNumber('000000010000000000000004', 1024 * MB)).toThrow(RangeError);
    expect(() => segmentNumber('000000010000000000000040', 64 * MB)).toThrow(RangeError);
    expect(segmentNumber('000000010000000000000040', 16 * MB)).toBe(64n);
  });
});

describe('isValidSegmentSize', () => {
  it('accepts powers of two from 1 MB to 1 GB', () => {
    for (let size = MB; size <= 1024 * MB; size *= 2) expect(isValidSegmentSize(size)).toBe(true);
  });

  it.each([0, -16 * MB, MB / 2, 2048 * MB, 3 * MB, 16 * MB + 1, 16.5 * MB, Number.NaN, Number.POSITIVE_INFINITY])('rejects %d', (size) => {
    expect(isValidSegmentSize(size)).toBe(false);
  });
});

describe('small helpers', () => {
  it('names the catalog directory after timeline + log, and knows one when it sees it', () => {
    expect(walDirectoryOf('0000000100000016000000B3')).toBe('0000000100000016');
    expect(isWalDirectory('0000000100000016')).toBe(true);
    for (const other of ['000000010000001', '00000001000000160', '000000010000001g', 'base']) expect(isWalDirectory(other), other).toBe(false);
  });

  it('places segments, .partial and .backup files by log and segment, whatever the timeline', () => {
    expect(segmentPosition('0000000200000016000000B3')).toBe('00000016000000B3');
    expect(segmentPosition('0000000100000016000000B3.partial')).toBe('00000016000000B3');
    expect(segmentPosition('0000000100000016000000B3.00000028.backup')).toBe('00000016000000B3');
    expect(segmentPosition('00000002.history')).toBeUndefined();
    expect(segmentPosition('../etc/passwd')).toBeUndefined();
  });

  it('reads the timeline of a segment name', () => {
    expect(segmentTimeline('0000001A00000016000000B3')).toBe(26);
  });

  it('builds history file names that parse back', () => {
    expect(historyFileName(1)).toBe('00000001.history');
    expect(historyFileName(0x1a)).toBe('0000001A.history');
    expect(parseWalFileName(historyFileName(0xfffffffe))).toEqual({ kind: 'history', name: 'FFFFFFFE.history', timeline: 0xfffffffe });
  });
});
