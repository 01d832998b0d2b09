// WAL segment bytes for unit tests: what PostgreSQL 15 writes at a segment's start (the long page
// header: magic, timeline, address, system identifier, segment and block size), the rest zeros.

const MB = 1 << 20;

/** the system identifier in every segmentBytes() header */
export const SEGMENT_SYSID = 7000000000000000000n;

/** A segment's bytes (1 MB unless `size`) whose long page header matches `name`, unless `timeline` says otherwise. */
export function segmentBytes(name: string, over: { timeline?: number; size?: number } = {}): Buffer {
  const size = over.size ?? MB;
  const b = Buffer.alloc(size);
  b.writeUInt16LE(0xd110, 0);
  b.writeUInt16LE(0x0002, 2);
  b.writeUInt32LE(over.timeline ?? parseInt(name.slice(0, 8), 16), 4);
  b.writeBigUInt64LE(BigInt(`0x${name.slice(8, 16)}`) * 0x100000000n + BigInt(`0x${name.slice(16)}`) * BigInt(MB), 8);
  b.writeBigUInt64LE(SEGMENT_SYSID, 24);
  b.writeUInt32LE(MB, 32);
  b.writeUInt32LE(8192, 36);
  b.fill(0x42, 64, 4096);
  return b;
}
