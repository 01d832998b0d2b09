import { Packr } from 'msgpackr';
import { describe, expect, it } from 'vitest';
import { BarmanError, ErrorCode } from '../../../../shared/errors';
import { CHUNK_HEADER_ROOM, decodeFrame, encodeChunkInPlace, encodeFrame } from '../../../../shared/protocol/codec';
import { CHUNK_SIZE, MAX_CHUNK_DATA, MAX_FRAME_BYTES, type Frame } from '../../../../shared/protocol/frames';
import { FRAME_TYPES, VALID_FRAMES } from './sample-frames';

// a plain msgpack encoder, standing in for any other implementation (or a hostile peer)
const msgpack = new Packr({ useRecords: false, mapsAsObjects: true });

/** u16 header length | header bytes | payload, built by hand. */
function message(header: Uint8Array, payload: Uint8Array = new Uint8Array(0), declaredLength = header.length): Buffer {
  const prefix = Buffer.alloc(2);
  prefix.writeUInt16BE(declaredLength, 0);
  return Buffer.concat([prefix, header, payload]);
}

function decodeError(data: Buffer): BarmanError {
  try {
    decodeFrame(data);
  } catch (err) {
    expect(err).toBeInstanceOf(BarmanError);
    return err as BarmanError;
  }
  throw new Error('decodeFrame accepted the message');
}

/** Byte arrays compare by content whatever their class (msgpack hands back Buffers). */
function plain(frame: Frame): unknown {
  return JSON.parse(JSON.stringify(frame, (_k, v) => (v instanceof Uint8Array || (v && v.type === 'Buffer') ? Buffer.from(v.data ?? v).toString('hex') : v)));
}

/** A small deterministic PRNG so a failing garbage case can be replayed. */
function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

describe('encodeFrame / decodeFrame', () => {
  it.each(FRAME_TYPES)('round-trips a %s frame', (type) => {
    const frame = VALID_FRAMES[type];
    const decoded = decodeFrame(encodeFrame(frame));
    expect(decoded.type).toBe(type);
    expect(plain(decoded)).toEqual(plain(frame));
  });

  it('puts a chunk\'s bytes after the header, outside msgpack', () => {
    const data = Buffer.alloc(4096, 0xab);
    const encoded = encodeFrame({ type: 'chunk', id: 9, data });
    const headerLength = encoded.readUInt16BE(0);
    expect(encoded.length).toBe(2 + headerLength + data.length);
    expect(encoded.subarray(2 + headerLength).equals(data)).toBe(true);
    expect(msgpack.unpack(encoded.subarray(2, 2 + headerLength))).toEqual({ type: 'chunk', id: 9 });
  });

  it('decodes a chunk without copying its payload', () => {
    const data = Buffer.alloc(CHUNK_SIZE);
    for (let i = 0; i < data.length; i += 4096) data[i] = i & 0xff;
    const encoded = encodeFrame({ type: 'chunk', id: 1, data });
    const frame = decodeFrame(encoded);
    if (frame.type !== 'chunk') throw new Error(`decoded a ${frame.type}`);
    expect(frame.data.length).toBe(CHUNK_SIZE);
    expect(frame.data.buffer).toBe(encoded.buffer);
    expect(frame.data.byteOffset).toBe(encoded.byteOffset + 2 + encoded.readUInt16BE(0));
    expect(Buffer.from(frame.data.buffer, frame.data.byteOffset, frame.data.length).equals(data)).toBe(true);
    // a view, not a copy: writing through the message shows in the frame
    encoded[encoded.length - 1] = 0x7f;
    expect(frame.data[frame.data.length - 1]).toBe(0x7f);
  });

  it('decodes an empty chunk (the last read of a file that ends on a chunk boundary)', () => {
    const frame = decodeFrame(encodeFrame({ type: 'chunk', id: 2, data: new Uint8Array(0) }));
    expect(frame).toMatchObject({ type: 'chunk', id: 2 });
    expect((frame as { data: Uint8Array }).data.length).toBe(0);
  });

  it('refuses a header larger than the u16 length can say', () => {
    const huge = { type: 'error', code: 'X', message: 'm'.repeat(70_000), hint: '' } as Frame;
    expect(() => encodeFrame(huge)).toThrow(RangeError);
  });
});

describe('encodeChunkInPlace', () => {
  it('writes the header in front of bytes already in the pooled buffer and returns a view of it', () => {
    const buf = Buffer.alloc(CHUNK_HEADER_ROOM + 1000);
    for (let i = 0; i < 1000; i++) buf[CHUNK_HEADER_ROOM + i] = (i * 7) & 0xff;
    const msg = encodeChunkInPlace(buf, 123_456, 600);
    expect(msg.buffer).toBe(buf.buffer);
    expect(msg.byteOffset + msg.length).toBe(buf.byteOffset + CHUNK_HEADER_ROOM + 600);
    const frame = decodeFrame(msg);
    expect(frame).toMatchObject({ type: 'chunk', id: 123_456 });
    const data = (frame as { data: Uint8Array }).data;
    expect(Buffer.from(data).equals(buf.subarray(CHUNK_HEADER_ROOM, CHUNK_HEADER_ROOM + 600))).toBe(true);
  });

  it('is byte for byte what encodeFrame makes', () => {
    const data = Buffer.alloc(300, 0x42);
    const buf = Buffer.alloc(CHUNK_HEADER_ROOM + data.length);
    data.copy(buf, CHUNK_HEADER_ROOM);
    expect(encodeChunkInPlace(buf, 5, data.length).equals(encodeFrame({ type: 'chunk', id: 5, data }))).toBe(true);
  });

  it('fits the largest request id in the room it keeps', () => {
    const buf = Buffer.alloc(CHUNK_HEADER_ROOM + 1);
    expect(decodeFrame(encodeChunkInPlace(buf, Number.MAX_SAFE_INTEGER, 1))).toMatchObject({ type: 'chunk', id: Number.MAX_SAFE_INTEGER });
  });
});

describe('decodeFrame refuses', () => {
  it.each([
    ['an empty message', Buffer.alloc(0)],
    ['a single byte', Buffer.from([0])],
    ['a header length of 0', message(new Uint8Array(0))],
    ['a header length past the end', message(msgpack.pack({ type: 'auth', proof: Buffer.alloc(32) }), undefined, 500)],
    ['a header length of 0xffff on a short message', Buffer.from([0xff, 0xff, 0x80])],
  ])('%s with a bad header length', (_what, data) => {
    const err = decodeError(data);
    expect(err.code).toBe(ErrorCode.PROTOCOL);
    expect(err.message).toMatch(/bad header length/);
    expect(err.hint).not.toBe('');
  });

  it('a message larger than MAX_FRAME_BYTES, before looking inside', () => {
    const big = Buffer.concat([message(msgpack.pack({ type: 'chunk', id: 1 })), Buffer.alloc(MAX_FRAME_BYTES)]);
    const err = decodeError(big);
    expect(err.code).toBe(ErrorCode.FRAME_TOO_LARGE);
    expect(err.message).toContain(String(MAX_FRAME_BYTES));
    expect(decodeError(Buffer.alloc(MAX_FRAME_BYTES + 1)).code).toBe(ErrorCode.FRAME_TOO_LARGE);
  });

  it('a chunk within MAX_FRAME_BYTES whose payload is over MAX_CHUNK_DATA', () => {
    const msg = Buffer.concat([message(msgpack.pack({ type: 'chunk', id: 1 })), Buffer.alloc(MAX_CHUNK_DATA + 1)]);
    expect(msg.length).toBeLessThanOrEqual(MAX_FRAME_BYTES);
    const err = decodeError(msg);
    expect(err.code).toBe(ErrorCode.PROTOCOL);
    expect(err.message).toMatch(/field "data"/);
  });

  // chunk and wal-data carry their data as the payload; every other kind takes none
  it.each(FRAME_TYPES.filter((t) => t !== 'chunk' && t !== 'wal-data'))('a payload after a %s header', (type) => {
    const encoded = encodeFrame(VALID_FRAMES[type]);
    const err = decodeError(Buffer.concat([encoded, Buffer.from([1, 2, 3])]));
    expect(err.code).toBe(ErrorCode.PROTOCOL);
    expect(err.message).toMatch(/payload after a header that takes none/);
  });

  it('a chunk that carries its data both in the header and as payload', () => {
    const err = decodeError(message(msgpack.pack({ type: 'chunk', id: 1, data: Buffer.alloc(4) }), Buffer.alloc(4)));
    expect(err.code).toBe(ErrorCode.PROTOCOL);
  });

  it('a header with bytes after its msgpack value', () => {
    const header = Buffer.concat([msgpack.pack({ type: 'auth', proof: Buffer.alloc(32) }), Buffer.from([0xc0])]);
    expect(decodeError(message(header)).code).toBe(ErrorCode.PROTOCOL);
  });

  it.each([
    ['a msgpack string', msgpack.pack('hello')],
    ['a msgpack array', msgpack.pack(['auth', Buffer.alloc(32)])],
    ['msgpack nil', msgpack.pack(null)],
    ['an unknown type', msgpack.pack({ type: 'shutdown' })],
    ['a uint64 type', Buffer.from([0x81, 0xa4, 0x74, 0x79, 0x70, 0x65, 0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])],
    ['a timestamp extension as type', Buffer.from([0x81, 0xa4, 0x74, 0x79, 0x70, 0x65, 0xd6, 0xff, 0, 0, 0, 1])],
    ['a missing field', msgpack.pack({ type: 'end', sha256: 'ab'.repeat(32) })],
    ['an extra field', msgpack.pack({ type: 'end', id: 1, sha256: 'ab'.repeat(32), path: '/etc/passwd' })],
    ['a field of the wrong type', msgpack.pack({ type: 'get', id: '1', name: 'x' })],
    ['a truncated map', msgpack.pack({ type: 'auth', proof: Buffer.alloc(32) }).subarray(0, 10)],
    ['a reserved msgpack byte', Buffer.from([0xc1])],
  ])('a header that is %s', (_what, header) => {
    const err = decodeError(message(header));
    expect(err.code).toBe(ErrorCode.PROTOCOL);
    expect(err.exitCode).toBe(1);
  });

  it('garbage of any length with a PROTOCOL (or FRAME_TOO_LARGE) error, never anything else', () => {
    const rand = prng(20261125);
    for (let i = 0; i < 2000; i++) {
      const len = Math.floor(rand() * 300);
      const data = Buffer.alloc(len);
      for (let j = 0; j < len; j++) data[j] = Math.floor(rand() * 256);
      // half of them get a plausible length prefix so the msgpack decoder sees garbage too
      if (len >= 2 && i % 2 === 0) data.writeUInt16BE(len - 2 - Math.floor(rand() * Math.min(len - 2, 8)), 0);
      try {
        const frame = decodeFrame(data);
        // random bytes that happen to be a valid frame must at least be one
        expect(FRAME_TYPES).toContain(frame.type);
      } catch (err) {
        expect(err, `case ${i}: ${data.toString('hex')}`).toBeInstanceOf(BarmanError);
        expect((err as BarmanError).code).toBe(ErrorCode.PROTOCOL);
      }
    }
  });
});
