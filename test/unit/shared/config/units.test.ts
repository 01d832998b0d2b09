import { describe, expect, it } from 'vitest';
import { parseDuration, parseSpaceThreshold } from '../../../../shared/config/units';

describe('parseDuration', () => {
  it.each([
    ['90s', 90], ['90 s', 90], ['1 second', 1], ['15min', 900], ['15 minutes', 900], ['1h', 3600], ['6 HOURS', 21_600],
    ['1 day', 86_400], ['3 DAYS', 259_200], ['1 WEEK', 604_800], ['2 weeks', 1_209_600], ['1 MONTH', 2_592_000], ['1d', 86_400], ['2w', 1_209_600],
  ])('reads %j as %i seconds', (text, seconds) => {
    expect(parseDuration(text)).toBe(seconds);
  });

  it.each(['', '10', '0 days', '-1 day', '1.5 days', 'one day', '3 fortnights', '1 day 2 hours', `${Number.MAX_SAFE_INTEGER} weeks`])('refuses %j', (text) => {
    expect(parseDuration(text)).toBeUndefined();
  });
});

describe('parseSpaceThreshold', () => {
  it.each([
    ['10GB', { kind: 'bytes', bytes: 10 * 1024 ** 3 }], ['512 MB', { kind: 'bytes', bytes: 512 * 1024 ** 2 }], ['1tb', { kind: 'bytes', bytes: 1024 ** 4 }],
    ['4096B', { kind: 'bytes', bytes: 4096 }], ['5%', { kind: 'percent', percent: 5 }], ['2.5 %', { kind: 'percent', percent: 2.5 }],
  ])('reads %j', (text, expected) => {
    expect(parseSpaceThreshold(text)).toEqual(expected);
  });

  it.each(['', '10', '0GB', '10 GiB', '0%', '100%', '150%', 'lots'])('refuses %j', (text) => {
    expect(parseSpaceThreshold(text)).toBeUndefined();
  });
});
