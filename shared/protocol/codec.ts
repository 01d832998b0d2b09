// Frame <-> bytes. One WebSocket message is
//   u16 header length (big-endian) | msgpack header map | payload
// where the payload is the `data` of a chunk or wal-data frame and empty otherwise. File data never goes
// through msgpack: the encoder would copy each chunk into growing buffers, which cost more than
// the rest of a push together. msgpack runs without records or extensions, so a header is a
// plain map any implementation can read and nothing in it can make the decoder build objects.

import { Packr } from 'msgpackr';
import { BarmanError, ErrorCode } from '../errors';
import { type Frame, MAX_FRAME_BYTES, validateFrame } from './frames';

const packr = new Packr({ useRecords: false, moreTypes: false, mapsAsObjects: true, bundleStrings: false });
const MAX_HEADER_BYTES = 0xffff;
/** frame types whose `data` travels as the payload */
const PAYLOAD_TYPES: ReadonlySet<unknown> = new Set(['chunk', 'wal-data']);

export function encodeFrame(frame: Frame): Buffer {
  let header: Buffer;
  let payload: Uint8Array | undefined;
  if (frame.type === 'chunk' || frame.type === 'wal-data') {
    const { data, ...rest } = frame;
    header = packr.pack(rest);
    payload = data;
  } else {
    header = packr.pack(frame);
  }
  if (header.length > MAX_HEADER_BYTES) throw new RangeError(`frame header of ${header.length} bytes is too large`);
  const prefix = Buffer.allocUnsafe(2);
  prefix.writeUInt16BE(header.length, 0);
  return payload ? Buffer.concat([prefix, header, payload]) : Buffer.concat([prefix, header]);
}

/** Room kept in front of a pooled chunk buffer for the frame header of a chunk frame. */
export const CHUNK_HEADER_ROOM = 32;

/**
 * Builds a chunk frame in place: the file bytes already sit in `buf` at CHUNK_HEADER_ROOM, the
 * header is written just before them. Returns the message, a view of `buf` (no copy: on this
 * machine touching fresh memory costs more than hashing it, so chunk buffers are reused).
 */
export function encodeChunkInPlace(buf: Buffer, id: number, dataLength: number): Buffer {
  const header = packr.pack({ type: 'chunk', id });
  const start = CHUNK_HEADER_ROOM - header.length - 2;
  if (start < 0) throw new RangeError('chunk header does not fit');
  buf.writeUInt16BE(header.length, start);
  header.copy(buf, start + 2);
  return buf.subarray(start, CHUNK_HEADER_ROOM + dataLength);
}

export function decodeFrame(data: Buffer): Frame {
  if (data.length > MAX_FRAME_BYTES) {
    throw new BarmanError(ErrorCode.FRAME_TOO_LARGE, `frame of ${data.length} bytes exceeds the limit of ${MAX_FRAME_BYTES}`, 'Agent and receiver must run compatible versions of barman-ts.');
  }
  const headerLength = data.length >= 2 ? data.readUInt16BE(0) : -1;
  if (headerLength < 1 || 2 + headerLength > data.length) {
    throw new BarmanError(ErrorCode.PROTOCOL, `undecodable frame (${data.length} bytes, bad header length)`, 'Only barman-agent speaks this protocol; check what connects to the receiver port.');
  }
  let value: unknown;
  try {
    value = packr.unpack(data.subarray(2, 2 + headerLength));
  } catch (err) {
    throw new BarmanError(ErrorCode.PROTOCOL, `undecodable frame (${(err as Error).message})`, 'Only barman-agent speaks this protocol; check what connects to the receiver port.');
  }
  const payload = data.subarray(2 + headerLength);
  if (value !== null && typeof value === 'object' && PAYLOAD_TYPES.has((value as { type?: unknown }).type) && !('data' in value)) {
    (value as { data?: Uint8Array }).data = payload;
  } else if (payload.length > 0) {
    throw new BarmanError(ErrorCode.PROTOCOL, 'malformed frame: payload after a header that takes none', 'Agent and receiver must run compatible versions of barman-ts.');
  }
  const frame = validateFrame(value);
  if (typeof frame === 'string') {
    throw new BarmanError(ErrorCode.PROTOCOL, `malformed frame: ${frame}`, 'Agent and receiver must run compatible versions of barman-ts.');
  }
  return frame;
}
