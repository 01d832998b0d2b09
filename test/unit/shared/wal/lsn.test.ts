import { describe, expect, it } from 'vitest';
import { formatLsn, isLsn, parseLsn } from '../../../../shared/wal/lsn';

describe('parseLsn / formatLsn', () => {
  it('reads an LSN as PostgreSQL prints it', () => {
    expect(parseLsn('16/B374D848')).toBe(0x16_b374d848n);
    expect(parseLsn('0/0')).toBe(0n);
    expect(parseLsn('0/1000000')).toBe(0x1000000n);
  });

  it('accepts lower-case hex and surrounding white space, prints upper case without padding', () => {
    expect(parseLsn(' 16/b374d848\n')).toBe(0x16_b374d848n);
    expect(formatLsn(0x16_b374d848n)).toBe('16/B374D848');
    expect(formatLsn(0x0000000a_0000000bn)).toBe('A/B');
    expect(formatLsn(0n)).toBe('0/0');
  });

  it('round-trips values above 2^53 without losing a bit', () => {
    const big = [
      (1n << 53n) + 1n,
      0xffffffff_ffffffffn,
      0xfedcba98_76543211n,
      0x80000000_00000001n,
    ];
    for (const lsn of big) {
      expect(parseLsn(formatLsn(lsn))).toBe(lsn);
    }
    expect(formatLsn((1n << 53n) + 1n)).toBe('200000/1');
    expect(parseLsn('FFFFFFFF/FFFFFFFF')).toBe((1n << 64n) - 1n);
    // the same value as a JS number would already be wrong
    expect(BigInt(Number((1n << 53n) + 1n))).not.toBe((1n << 53n) + 1n);
  });

  it('round-trips text for a spread of LSNs', () => {
    for (const text of ['0/1', '1/0', '16/B374D848', 'FFFFFFFF/0', '0/FFFFFFFF', 'ABCDEF01/23456789']) {
      expect(formatLsn(parseLsn(text))).toBe(text);
    }
  });

  it.each([
    '',
    '/',
    '16',
    '16/',
    '/B374D848',
    '16:B374D848',
    '16/B374D848/0',
    '123456789/0', // 9 hex digits in the high half
    '0/123456789',
    '0x16/B374D848',
    '-1/0',
    'G/0',
    '16 / B374D848',
  ])('rejects %j', (text) => {
    expect(isLsn(text)).toBe(false);
    expect(() => parseLsn(text)).toThrow(RangeError);
  });

  it('says what was expected when it refuses', () => {
    expect(() => parseLsn('nonsense')).toThrow(/"nonsense" is not an LSN \(expected the form 16\/B374D848\)/);
  });
});
