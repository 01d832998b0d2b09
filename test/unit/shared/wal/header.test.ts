import { describe, expect, it } from 'vitest';
import { LONG_HEADER_SIZE, readLongHeader, type WalLongHeader } from '../../../../shared/wal/header';
import { parseLsn } from '../../../../shared/wal/lsn';
import { segmentStartLsn } from '../../../../shared/wal/names';

/** initdb's default --wal-segsize */
const SEGMENT_16MB = 16 * 1024 * 1024;

/**
 * The first 40 bytes of 000000010000000000000001 as `initdb` of PostgreSQL 15.18 wrote them on
 * x86-64 (xxd of a fresh cluster's pg_wal; pg_controldata said system identifier
 * 7712075971341596236, 16 MB segments, 8 kB WAL blocks).
 */
const PG15_FIRST_SEGMENT_HEAD = Buffer.from(
  '10d10200' + '01000000' + '0000000100000000' + '00000000' + '00000000' + '4c36a4503ccc066b' + '00000001' + '00200000',
  'hex',
);

/**
 * XLogLongPageHeaderData (access/xlog_internal.h), little-endian as on x86-64:
 * u16 xlp_magic | u16 xlp_info | u32 xlp_tli | u64 xlp_pageaddr | u32 xlp_rem_len | 4 bytes padding |
 * u64 xlp_sysid | u32 xlp_seg_size | u32 xlp_xlog_blcksz
 */
function longHeader(fields: { magic: number; info: number; tli: number; pageAddress: bigint; remLen?: number; sysid: bigint; segSize: number; blockSize: number }): Buffer {
  const b = Buffer.alloc(LONG_HEADER_SIZE);
  b.writeUInt16LE(fields.magic, 0);
  b.writeUInt16LE(fields.info, 2);
  b.writeUInt32LE(fields.tli, 4);
  b.writeBigUInt64LE(fields.pageAddress, 8);
  b.writeUInt32LE(fields.remLen ?? 0, 16);
  b.writeBigUInt64LE(fields.sysid, 24);
  b.writeUInt32LE(fields.segSize, 32);
  b.writeUInt32LE(fields.blockSize, 36);
  return b;
}

const PG15 = { magic: 0xd110, info: 0x0002, tli: 1, pageAddress: 0x1000000n, sysid: 7712075971341596236n, segSize: SEGMENT_16MB, blockSize: 8192 };

function expectHeader(result: WalLongHeader | string): WalLongHeader {
  if (typeof result === 'string') throw new Error(`expected a header, got: ${result}`);
  return result;
}

describe('readLongHeader', () => {
  it('reads the header of a segment PostgreSQL 15 wrote', () => {
    expect(PG15_FIRST_SEGMENT_HEAD.length).toBe(LONG_HEADER_SIZE);
    const h = expectHeader(readLongHeader(PG15_FIRST_SEGMENT_HEAD));
    expect(h).toEqual({
      magic: 0xd110,
      pgVersion: 15,
      info: 0x0002,
      timeline: 1,
      pageAddress: parseLsn('0/1000000'),
      systemIdentifier: '7712075971341596236',
      segmentSize: 16 * 1024 * 1024,
      blockSize: 8192,
    });
    expect(h.pageAddress).toBe(segmentStartLsn('000000010000000000000001', h.segmentSize));
  });

  it('matches the documented layout byte for byte', () => {
    expect(longHeader(PG15).equals(PG15_FIRST_SEGMENT_HEAD)).toBe(true);
  });

  it('keeps a system identifier above 2^53 (and above 2^63) exact', () => {
    const high = expectHeader(readLongHeader(longHeader({ ...PG15, sysid: 0xffffffff_ffffffffn })));
    expect(high.systemIdentifier).toBe('18446744073709551615');
    const odd = expectHeader(readLongHeader(longHeader({ ...PG15, sysid: (1n << 53n) + 1n })));
    expect(odd.systemIdentifier).toBe('9007199254740993');
  });

  it('reads page addresses above 2^53 exactly', () => {
    const h = expectHeader(readLongHeader(longHeader({ ...PG15, pageAddress: parseLsn('FFFFFFFF/FF000000') })));
    expect(h.pageAddress).toBe(0xffffffff_ff000000n);
    expect(h.pageAddress).toBe(segmentStartLsn('00000001FFFFFFFF000000FF', SEGMENT_16MB));
  });

  it('reads the header from a view into a larger buffer (a whole first page, at an offset)', () => {
    const page = Buffer.alloc(7 + 8192, 0xee);
    PG15_FIRST_SEGMENT_HEAD.copy(page, 7);
    const view = new Uint8Array(page.buffer, page.byteOffset + 7, 8192);
    expect(expectHeader(readLongHeader(view)).systemIdentifier).toBe('7712075971341596236');
  });

  it.each([
    [0xd093, 9.6], [0xd097, 10], [0xd098, 11], [0xd101, 12], [0xd106, 13], [0xd10d, 14], [0xd110, 15], [0xd113, 16], [0xd116, 17],
  ])('reads page magic %d as PostgreSQL %s', (magic, version) => {
    expect(expectHeader(readLongHeader(longHeader({ ...PG15, magic }))).pgVersion).toBe(version);
  });

  it('accepts a WAL magic of a version it does not know, without a version', () => {
    const h = expectHeader(readLongHeader(longHeader({ ...PG15, magic: 0xd1ff })));
    expect(h.magic).toBe(0xd1ff);
    expect(h.pgVersion).toBeUndefined();
  });

  it('accepts other page flags beside XLP_LONG_HEADER, a continuation record included', () => {
    const h = expectHeader(readLongHeader(longHeader({ ...PG15, info: 0x0007, remLen: 1234 })));
    expect(h.info).toBe(0x0007);
  });

  it('refuses fewer bytes than a long header', () => {
    expect(readLongHeader(PG15_FIRST_SEGMENT_HEAD.subarray(0, LONG_HEADER_SIZE - 1))).toBe('only 39 bytes, shorter than a WAL page header');
    expect(readLongHeader(new Uint8Array(0))).toMatch(/only 0 bytes/);
  });

  it('refuses bytes that are not a WAL page', () => {
    expect(readLongHeader(Buffer.alloc(LONG_HEADER_SIZE))).toBe('page magic 0x0000 is not a WAL page magic');
    expect(readLongHeader(longHeader({ ...PG15, magic: 0x1234 }))).toMatch(/0x1234 is not a WAL page magic/);
    // big-endian bytes of a PG 15 header read as 0x10d1
    const swapped = Buffer.from(PG15_FIRST_SEGMENT_HEAD);
    swapped.writeUInt16BE(0xd110, 0);
    expect(readLongHeader(swapped)).toMatch(/0x10d1 is not a WAL page magic/);
  });

  it('refuses a first page without a long header', () => {
    expect(readLongHeader(longHeader({ ...PG15, info: 0x0001 }))).toMatch(/XLP_LONG_HEADER not set/);
  });

  it('refuses timeline 0', () => {
    expect(readLongHeader(longHeader({ ...PG15, tli: 0 }))).toBe('page header timeline is 0');
  });
});
