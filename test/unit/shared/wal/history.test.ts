import { describe, expect, it } from 'vitest';
import { parseHistory, validateHistory } from '../../../../shared/wal/history';

describe('parseHistory', () => {
  it('reads what PostgreSQL writes: parent, switch LSN, reason; comments and blank lines skipped', () => {
    const text = '1\t0/3000060\tno recovery target specified\n\n# a comment\n2\t0/5000000\tat restore point "before"\n';
    expect(parseHistory(text, 3)).toEqual([{ timeline: 1, switchLsn: 0x3000060n }, { timeline: 2, switchLsn: 0x5000000n }]);
  });

  it.each([
    ['garbage', 'this is not a history file\n', /line 1.*expected a timeline ID/],
    ['no LSN', '1\n', /line 1.*switch LSN/],
    ['a bad LSN', '1\tnot/anlsn\treason\n', /switch LSN/],
    ['timeline IDs going down', '2\t0/3000000\tx\n1\t0/4000000\ty\n', /line 2.*must ascend/],
    ['a repeated timeline ID', '1\t0/3000000\tx\n1\t0/4000000\ty\n', /must ascend/],
    ['LSNs going backwards', '1\t0/5000000\tx\n2\t0/4000000\ty\n', /must not go backwards/],
    ['a timeline ID of 0', '0\t0/3000000\tx\n', /timeline ID/],
  ])('refuses %s', (_what, text, message) => {
    expect(() => parseHistory(text, 5)).toThrow(message);
  });

  it("refuses an ancestor that is not below the file's own timeline", () => {
    expect(() => parseHistory('1\t0/3000000\tx\n2\t0/4000000\ty\n', 2)).toThrow(/line 2.*ancestor timeline 2 is not below the file's own timeline 2/);
    expect(parseHistory('1\t0/3000000\tx\n2\t0/4000000\ty\n')).toHaveLength(2);
  });
});

describe('validateHistory', () => {
  it('accepts a history that names its parent', () => {
    expect(validateHistory('1\t0/3000060\tno recovery target specified\n', 2)).toHaveLength(1);
  });

  it('refuses an empty history and a history for timeline 1', () => {
    expect(() => validateHistory('# nothing\n', 2)).toThrow(/names no parent timeline/);
    expect(() => validateHistory('', 1)).toThrow(/timeline 1 is the first/);
  });
});
