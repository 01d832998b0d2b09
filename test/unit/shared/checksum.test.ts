import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { crc32c, crc32cHex, crc32cJs, requireZstdBinding } from '../../../shared/checksum';

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

describe('requireZstdBinding', () => {
  type Zstd = { compress(b: Buffer, level?: number): Promise<Buffer>; decompress(b: Buffer): Promise<Buffer> };
  const glibcLinux = process.platform === 'linux' && !readFileSync('/usr/bin/ldd', 'utf8').includes('musl');

  it.runIf(glibcLinux)('loads the platform package itself on glibc Linux, not through the package loader that asks for a process report', () => {
    const req = createRequire(import.meta.url);
    expect(requireZstdBinding<Zstd>()).toBe(req(`@mongodb-js/zstd-linux-${process.arch}-gnu`));
  });

  it('gives a binding that takes the compression level and reads back what it wrote', async () => {
    const zstd = requireZstdBinding<Zstd>();
    const plain = Buffer.from(Array.from({ length: 20000 }, (_, i) => `row ${i} ${i % 97}`).join('\n'));
    const fast = await zstd.compress(plain, 1);
    // a negative level trades ratio for speed: here about three times the bytes of level 1
    const fastest = await zstd.compress(plain, -5);
    expect(fastest.length).toBeGreaterThan(fast.length * 2);
    expect((await zstd.decompress(fast)).equals(plain)).toBe(true);
  });
});
