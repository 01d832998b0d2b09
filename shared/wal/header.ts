// WAL page header checks (access/xlog_internal.h): the first page of every segment carries a long
// header with the magic of the PostgreSQL version, the timeline, the page address (= the segment's
// start LSN), the cluster's system identifier, the segment size and the WAL block size.

import { type Lsn } from './lsn';

/** Bytes of the long page header: XLogPageHeaderData (24 with alignment) + sysid + seg size + blcksz. */
export const LONG_HEADER_SIZE = 40;
const XLP_LONG_HEADER = 0x0002;

/** WAL page magic by PostgreSQL major version (XLOG_PAGE_MAGIC). */
const MAGIC_TO_VERSION: ReadonlyMap<number, number> = new Map([
  [0xd093, 9.6], [0xd097, 10], [0xd098, 11], [0xd101, 12], [0xd106, 13],
  [0xd10d, 14], [0xd110, 15], [0xd113, 16], [0xd116, 17], [0xd118, 18],
]);

export interface WalLongHeader {
  magic: number;
  /** PostgreSQL major version the magic belongs to, when known */
  pgVersion: number | undefined;
  info: number;
  timeline: number;
  pageAddress: Lsn;
  systemIdentifier: string;
  segmentSize: number;
  blockSize: number;
}

/** Reads the long header; returns a reason string when the bytes cannot be a WAL segment's start. */
export function readLongHeader(buf: Uint8Array): WalLongHeader | string {
  if (buf.length < LONG_HEADER_SIZE) return `only ${buf.length} bytes, shorter than a WAL page header`;
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const magic = v.getUint16(0, true);
  const info = v.getUint16(2, true);
  if (magic >> 12 !== 0xd) return `page magic 0x${magic.toString(16).padStart(4, '0')} is not a WAL page magic`;
  if ((info & XLP_LONG_HEADER) === 0) return 'first page has no long header (XLP_LONG_HEADER not set)';
  const header: WalLongHeader = {
    magic,
    pgVersion: MAGIC_TO_VERSION.get(magic),
    info,
    timeline: v.getUint32(4, true),
    pageAddress: v.getBigUint64(8, true),
    systemIdentifier: v.getBigUint64(24, true).toString(),
    segmentSize: v.getUint32(32, true),
    blockSize: v.getUint32(36, true),
  };
  if (header.timeline === 0) return 'page header timeline is 0';
  return header;
}
