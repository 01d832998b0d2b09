import type { BigIntStats } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { type Ack, formatAck, identityOf, parseAck, sameIdentity, sysidHex } from '../../../../agent/wal/spool';

const ack: Ack = {
  server: 'main',
  receiver: 'ws://backup.example:7480/',
  name: '000000010000000A000000FF',
  size: 16777216,
  identity: { dev: '65024', ino: '2146322', size: '16777216', mtime: '1796050585.100733900', ctime: '1796050585.000000001' },
  sysid: '6b0d9131cdc7f1bf',
  sha256: 'f6b69172ce884eb124a85c2a8b29bf64d1c262f80d94497521e131d0e3d1db72',
};

describe('the ack line (agent/launcher.sh compares it as text)', () => {
  it('is one line with the fields in the launcher\'s order', () => {
    expect(formatAck(ack)).toBe(
      'barman-ack-1 server=main receiver=ws://backup.example:7480/ name=000000010000000A000000FF size=16777216 dev=65024 ino=2146322 ' +
        'mtime=1796050585.100733900 ctime=1796050585.000000001 sysid=6b0d9131cdc7f1bf sha256=f6b69172ce884eb124a85c2a8b29bf64d1c262f80d94497521e131d0e3d1db72\n',
    );
  });

  it('reads back what it wrote, a .history file\'s too (no system identifier)', () => {
    expect(parseAck(formatAck(ack))).toEqual(ack);
    const history = { ...ack, name: '00000002.history', size: 42, identity: { ...ack.identity, size: '42' }, sysid: undefined };
    expect(parseAck(formatAck(history))).toEqual(history);
  });

  it.each([
    ['a torn write', formatAck(ack).slice(0, 120)],
    ['an empty file', ''],
    ['another format version', formatAck(ack).replace('barman-ack-1', 'barman-ack-2')],
    ['a checksum cut short', formatAck(ack).replace(/sha256=\w+/, 'sha256=f6b6')],
    ['a field missing', formatAck(ack).replace(' ctime=1796050585.000000001', '')],
    ['seconds without nanoseconds', formatAck(ack).replace('mtime=1796050585.100733900', 'mtime=1796050585')],
    ['two lines', `${formatAck(ack)}${formatAck(ack)}`],
  ])('reads %s as no ack', (_what, text) => {
    expect(parseAck(text)).toBeUndefined();
  });
});

describe('file identity as GNU stat prints it (%d %i %s %.9Y %.9Z)', () => {
  const stats = (mtimeNs: bigint, ctimeNs: bigint) => ({ dev: 65024n, ino: 2146322n, size: 16777216n, mtimeNs, ctimeNs }) as unknown as BigIntStats;

  it('pads nanoseconds to nine digits', () => {
    expect(identityOf(stats(1796050585000000001n, 1796050585100733900n))).toEqual({ dev: '65024', ino: '2146322', size: '16777216', mtime: '1796050585.000000001', ctime: '1796050585.100733900' });
  });

  it('tells a file touched a nanosecond later from the one read', () => {
    const read = identityOf(stats(1796050585000000001n, 1796050585000000001n));
    expect(sameIdentity(read, identityOf(stats(1796050585000000001n, 1796050585000000001n)))).toBe(true);
    expect(sameIdentity(read, identityOf(stats(1796050585000000001n, 1796050585000000002n)))).toBe(false);
    expect(sameIdentity(read, identityOf(stats(1796050585000000002n, 1796050585000000001n)))).toBe(false);
  });
});

describe('system identifier as the ack spells it', () => {
  it.each([
    ['7308465437271035234', '656ce297e1c28d62'],
    ['1', '0000000000000001'],
    // past 2^63: the launcher compares its two 8-digit halves with the page header's two 32-bit words
    ['18446744073709551615', 'ffffffffffffffff'],
  ])('%s → %s', (decimal, hex) => {
    expect(sysidHex(decimal)).toBe(hex);
  });
});
