import { describe, expect, it } from 'vitest';
import { type CheckResult, formatChecks, formatNagios } from '../../../shared/check';

const ok = (name: string): CheckResult => ({ name, ok: true, detail: 'fine' });
const bad = (name: string, detail: string, severity?: 'warning'): CheckResult => ({ name, ok: false, detail, hint: 'do this', ...(severity ? { severity } : {}) });

describe('formatNagios: one line and the plugin exit code', () => {
  it('is OK, exit 0, when every check passed', () => {
    expect(formatNagios('main', [ok('a'), ok('b')])).toEqual({ line: 'BARMAN OK - server main: 2 checks passed\n', exitCode: 0 });
  });

  it('is WARNING, exit 1, when only warnings failed', () => {
    expect(formatNagios('main', [ok('a'), bad('last drill', 'stale', 'warning')])).toEqual({ line: 'BARMAN WARNING - server main: 1 of 2 checks failed: last drill (last drill: stale)\n', exitCode: 1 });
  });

  it('is CRITICAL, exit 2, when any critical check failed; critical ones are named first, and the line stays one line', () => {
    const r = formatNagios('main', [bad('last drill', 'stale', 'warning'), ok('b'), bad('agent connected', 'no daemon | gone\nreally')]);
    expect(r).toEqual({ line: 'BARMAN CRITICAL - server main: 2 of 3 checks failed: agent connected, last drill (agent connected: no daemon   gone really)\n', exitCode: 2 });
  });
});

describe('formatChecks', () => {
  it('prints one line per check and a HINT per failed one', () => {
    expect(formatChecks('Server main:', [ok('a'), bad('b', 'broken')])).toBe('Server main:\n\ta: OK (fine)\n\tb: FAILED (broken)\nHINT: b: do this\n');
  });
});
