import { describe, expect, it } from 'vitest';
import { checkClockSkew, MAX_CLOCK_SKEW_MS, safeRelativePath } from '../../../../receiver/catalog/backups';
import { BarmanError, ErrorCode } from '../../../../shared/errors';

function errorOf(fn: () => unknown): BarmanError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(BarmanError);
    return err as BarmanError;
  }
  throw new Error('accepted');
}

describe('safeRelativePath', () => {
  it.each(['base/1/1259', 'global/pg_control', 'pg_tblspc/16384/PG_15_202209061/5/16385', `base/1/${'n'.repeat(255)}`])('accepts %s', (path) => {
    expect(safeRelativePath(path)).toBe(path);
  });

  it.each([
    ['a 256-byte name', `base/${'n'.repeat(256)}`],
    ['a 300-character name', 'x'.repeat(300)],
    ['a name of 128 two-byte characters (256 bytes)', 'é'.repeat(128)],
    ['a path over 1024 bytes', Array.from({ length: 5 }, () => 'd'.repeat(250)).join('/')],
  ])('refuses %s as an invalid name that says it is too long', (_what, path) => {
    const e = errorOf(() => safeRelativePath(path));
    expect(e.code).toBe(ErrorCode.INVALID_NAME);
    expect(e.message).toMatch(/too long/);
    expect(e.message.length).toBeLessThan(300);
  });

  it.each(['', '/etc/passwd', '../x', 'a/../../x', 'a//b', './a', 'a\\b', 'backup_label', 'backup_manifest'])('refuses %j', (path) => {
    expect(errorOf(() => safeRelativePath(path)).code).toBe(ErrorCode.INVALID_NAME);
  });
});

describe('checkClockSkew', () => {
  const now = Date.parse('2026-12-01T12:00:00Z');

  it('accepts a start time up to the limit either side of this host\'s clock', () => {
    for (const offset of [0, MAX_CLOCK_SKEW_MS, -MAX_CLOCK_SKEW_MS, 90_000]) expect(() => checkClockSkew(new Date(now + offset).toISOString(), now)).not.toThrow();
  });

  it('refuses a start time in 2099, or ten minutes behind, saying by how much and to synchronise the clocks', () => {
    const future = errorOf(() => checkClockSkew('2099-01-01T00:00:00Z', now));
    expect(future.code).toBe(ErrorCode.CLOCK_SKEW);
    expect(future.message).toMatch(/2099-01-01T00:00:00Z, \d+ minutes ahead of the backup host's clock \(2026-12-01T12:00:00\.000Z\)/);
    expect(future.hint).toMatch(/Synchronise the clocks .*NTP/);
    const behind = errorOf(() => checkClockSkew(new Date(now - 10 * 60_000).toISOString(), now));
    expect(behind.message).toMatch(/10 minutes behind/);
  });
});
