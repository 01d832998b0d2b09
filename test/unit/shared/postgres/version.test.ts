import { describe, expect, it } from 'vitest';
import { BarmanError, ErrorCode } from '../../../../shared/errors';
import { OLDEST_SUPPORTED_MAJOR, majorOf, majorOfVersionLine, requireSupportedVersion, versionText } from '../../../../shared/postgres/version';

describe('PostgreSQL version numbers', () => {
  it.each([
    [180004, 18, '18.4'],
    [170010, 17, '17.10'],
    [150018, 15, '15.18'],
    [130023, 13, '13.23'],
    [120022, 12, '12.22'],
    [100023, 10, '10.23'],
    [90624, 9.6, '9.6.24'],
  ])('server_version_num %i is major %s, written %s', (num, major, text) => {
    expect(majorOf(num)).toBe(major);
    expect(versionText(num)).toBe(text);
  });

  it.each([
    ['postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)', 15],
    ['postgres (PostgreSQL) 18.4', 18],
    ['pg_ctl (PostgreSQL) 13.23', 13],
    ['postgres (PostgreSQL) 17beta1', 17],
    ['postgres (PostgreSQL) 9.6.24', 9.6],
  ])('reads the major version of "%s"', (line, major) => {
    expect(majorOfVersionLine(line)).toBe(major);
  });

  it('reads no version from a line that is not a PostgreSQL program\'s', () => {
    expect(majorOfVersionLine('bash: postgres: command not found')).toBeUndefined();
  });
});

describe('requireSupportedVersion', () => {
  it('accepts 13 and every newer major version', () => {
    expect(OLDEST_SUPPORTED_MAJOR).toBe(13);
    for (const num of [130000, 130023, 140023, 150018, 160014, 170010, 180004, 190000]) expect(() => requireSupportedVersion(num)).not.toThrow();
  });

  it.each([120022, 110022, 90624])('refuses %i, naming the version and the oldest supported one', (num) => {
    let error: unknown;
    try {
      requireSupportedVersion(num);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(BarmanError);
    const e = error as BarmanError;
    expect(e.code).toBe(ErrorCode.PG_VERSION_UNSUPPORTED);
    expect(e.message).toContain(`PostgreSQL ${versionText(num)} is not supported`);
    expect(e.message).toContain('PostgreSQL 13 and newer');
    expect(e.hint).toMatch(/pg_upgrade/);
  });
});
