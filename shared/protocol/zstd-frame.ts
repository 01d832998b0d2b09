// The shape of one zstd frame (RFC 8878), read from its headers before anything decompresses it:
// what a peer sends compressed must be one whole frame of a bounded number of blocks, so that
// decompressing it can never allocate more than a few MiB whatever the bytes claim.

const ZSTD_MAGIC = 0xfd2fb528;
/** plain bytes a zstd block holds at most */
export const ZSTD_BLOCK_MAX = 128 * 1024;

/**
 * Checks that `buf` is exactly one zstd frame without a dictionary, of at most `maxBlocks` blocks
 * (each holds at most ZSTD_BLOCK_MAX plain bytes, so the frame decompresses to at most
 * maxBlocks × ZSTD_BLOCK_MAX bytes), and answers the plain size its header declares, when it
 * declares one. Throws (a plain Error) on anything else.
 */
export function checkZstdFrame(buf: Buffer, maxBlocks: number): { contentSize?: number } {
  if (buf.length < 5 || buf.readUInt32LE(0) !== ZSTD_MAGIC) throw new Error('not a zstd frame');
  const descriptor = buf[4]!;
  const fcsFlag = descriptor >> 6;
  const singleSegment = (descriptor >> 5) & 1;
  if (descriptor & 0x0b) throw new Error('a zstd frame with a dictionary or reserved bits');
  const fcsAt = 5 + (singleSegment ? 0 : 1);
  const fcsBytes = [singleSegment, 2, 4, 8][fcsFlag]!;
  let pos = fcsAt + fcsBytes;
  if (buf.length < pos) throw new Error('a truncated zstd frame');
  let contentSize: number | undefined;
  if (fcsBytes === 1) contentSize = buf[fcsAt]!;
  else if (fcsBytes === 2) contentSize = buf.readUInt16LE(fcsAt) + 256;
  else if (fcsBytes === 4) contentSize = buf.readUInt32LE(fcsAt);
  else if (fcsBytes === 8) {
    const big = buf.readBigUInt64LE(fcsAt);
    contentSize = big > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(big);
  }
  let blocks = 0;
  for (;;) {
    if (buf.length < pos + 3) throw new Error('a truncated zstd frame');
    const header = buf[pos]! | (buf[pos + 1]! << 8) | (buf[pos + 2]! << 16);
    const type = (header >> 1) & 3;
    const size = header >>> 3;
    if (type === 3 || size > ZSTD_BLOCK_MAX) throw new Error('an invalid zstd block');
    pos += 3 + (type === 1 ? 1 : size);
    if (++blocks > maxBlocks) throw new Error(`a zstd frame of more than ${maxBlocks} blocks`);
    if (header & 1) break;
  }
  pos += (descriptor >> 2) & 1 ? 4 : 0;
  if (pos !== buf.length) throw new Error('not exactly one zstd frame');
  return contentSize === undefined ? {} : { contentSize };
}
