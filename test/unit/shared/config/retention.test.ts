import { describe, expect, it } from 'vitest';
import { formatRetentionPolicy, parseRetentionPolicy } from '../../../../shared/config/retention';

describe('parseRetentionPolicy', () => {
  it.each([
    ['REDUNDANCY 2', { kind: 'redundancy', count: 2 }],
    ['REDUNDANCY 1', { kind: 'redundancy', count: 1 }],
    ['redundancy 10', { kind: 'redundancy', count: 10 }],
    ['  REDUNDANCY   3 ', { kind: 'redundancy', count: 3 }],
    ['RECOVERY WINDOW OF 7 DAYS', { kind: 'window', amount: 7, unit: 'days' }],
    ['RECOVERY WINDOW OF 1 DAY', { kind: 'window', amount: 1, unit: 'days' }],
    ['RECOVERY WINDOW OF 2 WEEKS', { kind: 'window', amount: 2, unit: 'weeks' }],
    ['RECOVERY WINDOW OF 1 WEEK', { kind: 'window', amount: 1, unit: 'weeks' }],
    ['RECOVERY WINDOW OF 6 MONTHS', { kind: 'window', amount: 6, unit: 'months' }],
    ['Recovery Window Of 3 Month', { kind: 'window', amount: 3, unit: 'months' }],
    ['RECOVERY\tWINDOW OF 4 DAYS', { kind: 'window', amount: 4, unit: 'days' }],
  ])('reads %j', (text, policy) => {
    expect(parseRetentionPolicy(text)).toEqual(policy);
  });

  it.each([
    '',
    'REDUNDANCY',
    'REDUNDANCY 0',
    'REDUNDANCY -1',
    'REDUNDANCY 2.5',
    'REDUNDANCY two',
    'REDUNDANCY 2 DAYS',
    'RECOVERY WINDOW 7 DAYS',
    'RECOVERY WINDOW OF 7',
    'RECOVERY WINDOW OF 0 DAYS',
    'RECOVERY WINDOW OF 7 YEARS',
    'RECOVERY WINDOW OF 7 HOURS',
    'RECOVERY WINDOW OF -7 DAYS',
    'WINDOW OF 7 DAYS',
    '7 DAYS',
    '2',
  ])('refuses %j', (text) => {
    expect(parseRetentionPolicy(text)).toBeUndefined();
  });

  it.each(['REDUNDANCY 2', 'RECOVERY WINDOW OF 7 DAYS', 'RECOVERY WINDOW OF 2 WEEKS', 'RECOVERY WINDOW OF 6 MONTHS'])('prints %j back as Barman spells it', (text) => {
    expect(formatRetentionPolicy(parseRetentionPolicy(text)!)).toBe(text);
  });
});
