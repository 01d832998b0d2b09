import { describe, expect, it } from 'vitest';
import { checkProbedBinaries, probeRecoveryBinaries } from '../../../../shared/postgres/binaries';
import { ErrorCode } from '../../../../shared/errors';

const PG15 = 150004;

function codeOf(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return (err as { code?: unknown }).code;
  }
  return undefined;
}

describe('checkProbedBinaries', () => {
  it('takes named binaries of the backup major version', () => {
    expect(checkProbedBinaries('B1', PG15, { explicit: '/opt/pg15/bin', major: 15 }, '/opt/pg15/bin')).toEqual({ dir: '/opt/pg15/bin', major: 15 });
  });
  it('refuses named binaries of another major version', () => {
    expect(codeOf(() => checkProbedBinaries('B1', PG15, { explicit: '/opt/pg16/bin', major: 16 }, '/opt/pg16/bin'))).toBe(ErrorCode.PG_VERSION_MISMATCH);
  });
  it('refuses a named folder without a runnable postgres, naming PG_BINDIR when that named it', () => {
    expect(codeOf(() => checkProbedBinaries('B1', PG15, { explicit: '/nowhere', major: undefined }, '/nowhere'))).toBe(ErrorCode.USAGE);
    expect(() => checkProbedBinaries('B1', PG15, { explicit: '/nowhere', major: undefined }, undefined)).toThrow(/PG_BINDIR=\/nowhere/);
  });
  it('finds the matching local binaries, accepts a host without any, refuses a host with only others', () => {
    const local = [{ dir: '/usr/lib/postgresql/16/bin', major: 16 }, { dir: '/usr/lib/postgresql/15/bin', major: 15 }];
    expect(checkProbedBinaries('B1', PG15, { local }, undefined)).toEqual(local[1]);
    expect(checkProbedBinaries('B1', PG15, { local: [] }, undefined)).toBeUndefined();
    expect(codeOf(() => checkProbedBinaries('B1', PG15, { local: local.slice(0, 1) }, undefined))).toBe(ErrorCode.PG_VERSION_MISMATCH);
  });
});

describe('probeRecoveryBinaries', () => {
  it('finds no postgres in a folder without one', async () => {
    expect(await probeRecoveryBinaries('/nonexistent/bin', {})).toEqual({ explicit: '/nonexistent/bin', major: undefined });
  });
  it('uses $PG_BINDIR when nothing is named', async () => {
    expect(await probeRecoveryBinaries(undefined, { PG_BINDIR: '/nonexistent/pgbin' })).toEqual({ explicit: '/nonexistent/pgbin', major: undefined });
  });
  it('finds what the blocking probe finds on this host', async () => {
    const { localServerBinaries } = await import('../../../../shared/postgres/binaries');
    expect(await probeRecoveryBinaries(undefined, {})).toEqual({ local: localServerBinaries() });
  });
});
