import { describe, expect, it } from 'vitest';
import { drillDue } from '../../../../receiver/server/housekeeping';

const now = new Date(Date.UTC(2026, 10, 30, 12));
const ago = (hours: number) => new Date(now.getTime() - hours * 3600_000);

describe('drillDue: when serve runs a scheduled restore drill', () => {
  it.each([
    ['no schedule', undefined, undefined, true, false],
    ['nothing DONE to drill', 'daily', undefined, false, false],
    ['never drilled', 'daily', undefined, true, true],
    ['daily, drilled 23 h ago', 'daily', ago(23), true, false],
    ['daily, drilled 24 h ago', 'daily', ago(24), true, true],
    ['weekly, drilled 6 days ago', 'weekly', ago(6 * 24), true, false],
    ['weekly, drilled 7 days ago', 'weekly', ago(7 * 24), true, true],
    ['a record with an unreadable time', 'weekly', new Date('nonsense'), true, true],
  ] as const)('%s → %s', (_what, schedule, last, hasDone, due) => {
    expect(drillDue(schedule, last, hasDone, now)).toBe(due);
  });
});
