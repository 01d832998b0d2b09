import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { crc32c, crc32cHex, crc32cJs } from '../../../shared/checksum';

describe('CRC-32C', () => {
  it('gives the check value of the Castagnoli polynomial, natively and in JavaScript', () => {
    const check = Buffer.from('123456789');
    expect(crc32cHex(crc32cJs(check))).toBe('e3069283');
    expect(crc32cHex(crc32c()(check))).toBe('e3069283');
    expect(crc32cHex(crc32cJs(Buffer.alloc(0)))).toBe('00000000');
  });

  it('continues across chunks, and both implementations agree on any bytes', () => {
    const data = randomBytes(300_001);
    const whole = crc32cJs(data);
    let piecewise = 0;
    for (let at = 0; at < data.length; at += 65_536) piecewise = crc32c()(data.subarray(at, at + 65_536), piecewise);
    expect(piecewise).toBe(whole);
    const flipped = Buffer.from(data);
    flipped[1234]! ^= 0x80;
    expect(crc32c()(flipped)).not.toBe(whole);
  });
});
