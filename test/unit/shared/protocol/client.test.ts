// AgentConnection.fetch against a receiver that sends what a test says (a real WebSocket server on
// loopback that authenticates like the receiver, then answers each request with given frames): a
// file sent as zstd frames is decompressed and checked on the agent, and a frame that is not what
// the receiver may send (too large, damaged, not asked for) is refused.

import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { WebSocketServer, type WebSocket } from 'ws';
import { crc32c, crc32cHex } from '../../../../shared/checksum';
import { BarmanError, ErrorCode } from '../../../../shared/errors';
import { computeProof, newNonce } from '../../../../shared/protocol/auth';
import { wireDecompressor } from '../../../../shared/protocol/chunks';
import { AgentConnection, type FetchOptions } from '../../../../shared/protocol/client';
import { decodeFrame, encodeFrame } from '../../../../shared/protocol/codec';
import { CHUNK_SIZE, type Frame, type GetBackupFileFrame, PROTOCOL_VERSION, type RecheckedFrame, type RefusedFrame } from '../../../../shared/protocol/frames';
import { sha256OfBytes } from '../../../harness/fs';

const TOKEN = 'a'.repeat(64);
const zstd = require('@mongodb-js/zstd/bindings.js') as { compress(b: Buffer, level: number): Promise<Buffer> };

/** what the fake receiver answers a request with: the frames to send (their id set to the request's) */
let answer: (request: Frame) => Frame[] = () => [];
let lastRequest: Frame | undefined;
/** what the agent said it refused (refused frames), in order */
const refusals: RefusedFrame[] = [];
/** what the fake receiver answers a refused frame with (undefined: nothing) */
let recheckAnswer: RecheckedFrame['found'] | undefined = 'unknown';
let wss: WebSocketServer;
let port: number;

beforeAll(async () => {
  wss = new WebSocketServer({ host: '127.0.0.1', port: 0, maxPayload: 4 * CHUNK_SIZE });
  await once(wss, 'listening');
  port = (wss.address() as { port: number }).port;
  wss.on('connection', (ws: WebSocket) => {
    let hello: Extract<Frame, { type: 'hello' }> | undefined;
    const serverNonce = newNonce();
    ws.on('message', (data: Buffer) => {
      const frame = decodeFrame(data);
      const send = (f: Frame) => ws.send(encodeFrame(f));
      if (frame.type === 'hello') {
        hello = frame;
        send({ type: 'challenge', protocolVersion: PROTOCOL_VERSION, serverNonce });
      } else if (frame.type === 'auth') {
        send({ type: 'welcome', sessionId: 'test', proof: computeProof(TOKEN, 'receiver', { ...hello!, serverNonce }) });
      } else if (frame.type === 'refused') {
        refusals.push(frame);
        if (recheckAnswer) send({ type: 'rechecked', id: frame.id, found: recheckAnswer });
      } else if ('id' in frame) {
        lastRequest = frame;
        for (const f of answer(frame)) send({ ...f, id: frame.id } as Frame);
      }
    });
  });
});

afterAll(async () => {
  for (const c of wss.clients) c.terminate();
  wss.close();
});

async function connect(): Promise<AgentConnection> {
  return AgentConnection.open({ file: 'test', receiver: new URL(`ws://127.0.0.1:${port}`), server: 'main', token: TOKEN, caFile: undefined, timeoutSeconds: 10 }, 'restore');
}

const inflate = wireDecompressor()!;
const ask = (accept = true) => (id: number): GetBackupFileFrame => ({ type: 'get-backup-file', id, backupId: '20260101T000000', path: 'base/1/1234', ...(accept ? { accept: 'zstd' as const } : {}) });

/** Fetches with `answer` answering; the bytes, the checksum verified, or the error. */
async function fetchWith(frames: Frame[], accept = true, refuse?: FetchOptions['refuse'], recheckWaitMs?: number): Promise<{ bytes?: Buffer; verified?: string; err?: BarmanError }> {
  answer = () => frames;
  const conn = await connect();
  try {
    const parts: Uint8Array[] = [];
    let verified: string | undefined;
    for await (const chunk of conn.fetch(ask(accept), { onVerified: (c) => (verified = c), inflate: accept ? inflate : undefined, refuse, recheckWaitMs })) parts.push(chunk);
    return { bytes: Buffer.concat(parts), verified };
  } catch (err) {
    expect(err).toBeInstanceOf(BarmanError);
    return { err: err as BarmanError };
  } finally {
    conn.close();
  }
}

const crcOf = (b: Buffer) => crc32cHex(crc32c()(b, 0));
/** plain bytes as the catalog stores them: one zstd frame per CHUNK_SIZE block */
const framesOf = async (plain: Buffer) => {
  const out: Buffer[] = [];
  for (let at = 0; at < plain.length; at += CHUNK_SIZE) out.push(await zstd.compress(plain.subarray(at, at + CHUNK_SIZE), 1));
  return out;
};
const fileOf = (plain: Buffer, chunks: Frame[], crc = crcOf(plain)): Frame[] => [
  { type: 'file', id: 0, name: 'base/1/1234', size: plain.length, checksum: 'crc32c', encoding: 'zstd' },
  ...chunks,
  { type: 'end', id: 0, crc32c: crc },
];
const chunk = (data: Buffer, plain?: true): Frame => ({ type: 'chunk', id: 0, data, ...(plain ? { plain } : {}) });

/** A zstd frame of `blocks` RLE blocks of 128 KiB each (a few bytes that decompress to blocks × 128 KiB), optionally declaring `contentSize`. */
function rleFrame(blocks: number, contentSize?: bigint): Buffer {
  const parts = [Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), Buffer.from([contentSize === undefined ? 0x00 : 0xc0, 0x38])];
  if (contentSize !== undefined) {
    const fcs = Buffer.alloc(8);
    fcs.writeBigUInt64LE(contentSize);
    parts.push(fcs);
  }
  for (let i = 0; i < blocks; i++) {
    const header = (i === blocks - 1 ? 1 : 0) | (1 << 1) | ((128 * 1024) << 3);
    parts.push(Buffer.from([header & 0xff, (header >> 8) & 0xff, (header >> 16) & 0xff, 0x61]));
  }
  return Buffer.concat(parts);
}

describe('fetch of a backup file sent as zstd frames', () => {
  it('asks for frames only when given a decompressor, and gives back the plain bytes, checked', async () => {
    const plain = Buffer.alloc(CHUNK_SIZE * 2 + 12345);
    for (let i = 0; i < plain.length; i++) plain[i] = (i * 7) % 251;
    const frames = await framesOf(plain);
    const got = await fetchWith(fileOf(plain, frames.map((f) => chunk(f))));
    expect((lastRequest as GetBackupFileFrame).accept).toBe('zstd');
    expect(got.err).toBeUndefined();
    expect(got.bytes!.equals(plain)).toBe(true);
    expect(got.verified).toBeDefined();
    // a chunk flagged plain (an incompressible block) is taken as it is
    const mixed = await fetchWith(fileOf(plain, [chunk(frames[0]!), chunk(plain.subarray(CHUNK_SIZE, 2 * CHUNK_SIZE), true), chunk(frames[2]!)]));
    expect(mixed.bytes!.equals(plain)).toBe(true);
  });

  it('without a decompressor asks for plain bytes, and refuses frames it did not ask for', async () => {
    const plain = Buffer.from('plain bytes of a small file');
    const asked = await fetchWith([{ type: 'file', id: 0, name: 'base/1/1234', size: plain.length, checksum: 'crc32c' }, chunk(plain), { type: 'end', id: 0, crc32c: crcOf(plain) }], false);
    expect(lastRequest).not.toHaveProperty('accept');
    expect(asked.bytes!.equals(plain)).toBe(true);
    const refused = await fetchWith(fileOf(plain, (await framesOf(plain)).map((f) => chunk(f))), false);
    expect(refused.err?.code).toBe(ErrorCode.PROTOCOL);
    expect(refused.err?.message).toMatch(/base\/1\/1234: the receiver sent zstd frames, which were not asked for/);
  });

  it('refuses frames that decompress to bytes other than the checksum says', async () => {
    const plain = Buffer.alloc(CHUNK_SIZE + 10, 7);
    const other = Buffer.from(plain);
    other[CHUNK_SIZE + 3] = 8;
    const got = await fetchWith(fileOf(plain, (await framesOf(other)).map((f) => chunk(f))));
    expect(got.err?.code).toBe(ErrorCode.CHECKSUM_MISMATCH);
    expect(got.err?.message).toMatch(/checksum differs/);
  });

  it('refuses frames that decompress to more or fewer bytes than the file has', async () => {
    const plain = Buffer.alloc(1000, 3);
    const longer = await fetchWith(fileOf(plain, (await framesOf(Buffer.alloc(1001, 3))).map((f) => chunk(f))));
    expect(longer.err?.code).toBe(ErrorCode.CHECKSUM_MISMATCH);
    expect(longer.err?.message).toMatch(/base\/1\/1234: the receiver's zstd frames decompress to more than its 1000 bytes/);
    const shorter = await fetchWith(fileOf(plain, (await framesOf(Buffer.alloc(999, 3))).map((f) => chunk(f))));
    expect(shorter.err?.code).toBe(ErrorCode.CHECKSUM_MISMATCH);
    expect(shorter.err?.message).toMatch(/received 999 of 1000 bytes/);
  });

  it('refuses a frame that declares more plain bytes than a chunk, before decompressing it', async () => {
    const got = await fetchWith(fileOf(Buffer.alloc(10), [chunk(rleFrame(1, 1n << 40n))]));
    expect(got.err?.code).toBe(ErrorCode.CHECKSUM_MISMATCH);
    expect(got.err?.message).toMatch(/base\/1\/1234: a zstd frame from the receiver was refused \(a zstd frame declares 1099511627776 plain bytes, more than the 1048576 of a chunk\)/);
  });

  it('refuses a frame of more blocks than a chunk makes (a compression bomb) before decompressing it, and one that decompresses to more than a chunk', async () => {
    // 64 bytes on the wire that would decompress to 2 MiB
    const bomb = await fetchWith(fileOf(Buffer.alloc(10), [chunk(rleFrame(16))]));
    expect(bomb.err?.code).toBe(ErrorCode.CHECKSUM_MISMATCH);
    expect(bomb.err?.message).toMatch(/a zstd frame of more than 9 blocks/);
    // as many blocks as a chunk's frame may have, each full: 1.125 MiB, more than a chunk
    const over = await fetchWith(fileOf(Buffer.alloc(10), [chunk(rleFrame(9))]));
    expect(over.err?.code).toBe(ErrorCode.CHECKSUM_MISMATCH);
    expect(over.err?.message).toMatch(/decompresses to 1179648 bytes, more than the 1048576 of a chunk/);
  });

  it("refuses with the caller's error what it finds wrong, and passes the receiver's own error on as it is", async () => {
    const named = (detail: string) => new BarmanError(ErrorCode.CHECKSUM_MISMATCH, `the file named: ${detail}`, 'the caller says what to do');
    const plain = Buffer.alloc(CHUNK_SIZE + 10, 7);
    const other = Buffer.from(plain);
    other[5] = 8;
    const differs = await fetchWith(fileOf(plain, (await framesOf(other)).map((f) => chunk(f))), true, named);
    expect(differs.err?.message).toMatch(/^the file named: get-backup-file: received \d+ of \d+ bytes, checksum differs$/);
    expect(differs.err?.hint).toBe('the caller says what to do');
    const longer = await fetchWith(fileOf(Buffer.alloc(1000, 3), (await framesOf(Buffer.alloc(1001, 3))).map((f) => chunk(f))), true, named);
    expect(longer.err?.message).toBe("the file named: base/1/1234: the receiver's zstd frames decompress to more than its 1000 bytes");
    const bomb = await fetchWith(fileOf(Buffer.alloc(10), [chunk(rleFrame(16))]), true, named);
    expect(bomb.err?.message).toMatch(/^the file named: base\/1\/1234: a zstd frame from the receiver was refused \(/);
    // the receiver found its copy damaged and said so, naming it: not named a second time
    const theirs = await fetchWith([{ type: 'error', id: 0, code: ErrorCode.CHECKSUM_MISMATCH, message: 'base/1/1234 in the catalog does not match its manifest', hint: 'the receiver says what to do' }], true, named);
    expect(theirs.err?.code).toBe(ErrorCode.CHECKSUM_MISMATCH);
    expect(theirs.err?.message).toBe('base/1/1234 in the catalog does not match its manifest');
    expect(theirs.err?.hint).toBe('the receiver says what to do');
  });

  it('tells the receiver, once, of a file it refused, by the request it answered; not of an error the receiver sent', async () => {
    const settle = () => new Promise((r) => setTimeout(r, 100));
    refusals.length = 0;
    const plain = Buffer.alloc(CHUNK_SIZE + 10, 7);
    const other = Buffer.from(plain);
    other[5] = 8;
    const differs = await fetchWith(fileOf(plain, (await framesOf(other)).map((f) => chunk(f))));
    expect(differs.err?.code).toBe(ErrorCode.CHECKSUM_MISMATCH);
    await vi.waitFor(() => expect(refusals).toHaveLength(1));
    expect(refusals[0]).toEqual({ type: 'refused', id: (lastRequest as GetBackupFileFrame).id, detail: expect.stringMatching(/^get-backup-file: received \d+ of \d+ bytes, checksum differs$/) });
    // two frames refused: one report
    refusals.length = 0;
    const bombs = await fetchWith(fileOf(Buffer.alloc(10), [chunk(rleFrame(16)), chunk(rleFrame(16))]));
    expect(bombs.err?.code).toBe(ErrorCode.CHECKSUM_MISMATCH);
    await vi.waitFor(() => expect(refusals).toHaveLength(1));
    expect(refusals[0]!.detail).toMatch(/^base\/1\/1234: a zstd frame from the receiver was refused \(/);
    await settle();
    expect(refusals).toHaveLength(1);
    // the receiver found the damage itself: nothing to tell it
    refusals.length = 0;
    const theirs = await fetchWith([{ type: 'error', id: 0, code: ErrorCode.CHECKSUM_MISMATCH, message: 'base/1/1234 in the catalog does not match its manifest', hint: 'verify' }]);
    expect(theirs.err?.code).toBe(ErrorCode.CHECKSUM_MISMATCH);
    const intact = await fetchWith(fileOf(plain, (await framesOf(plain)).map((f) => chunk(f))));
    expect(intact.err).toBeUndefined();
    await settle();
    expect(refusals).toHaveLength(0);
  });

  it("hands the caller's error what the receiver found its stored copy to be, or undefined when it cannot tell or does not answer", async () => {
    const heard: Array<string | undefined> = [];
    const named = (detail: string, stored: string | undefined) => {
      heard.push(stored);
      return new BarmanError(ErrorCode.CHECKSUM_MISMATCH, `the file named: ${detail}`, `stored copy ${stored}`);
    };
    const plain = Buffer.alloc(CHUNK_SIZE + 10, 7);
    const other = Buffer.from(plain);
    other[5] = 8;
    const differs = async () => fetchWith(fileOf(plain, (await framesOf(other)).map((f) => chunk(f))), true, named, 500);
    try {
      for (const answer of ['intact', 'damaged', 'unchecked', 'gone', 'unknown', undefined] as const) {
        recheckAnswer = answer;
        const got = await differs();
        expect(got.err?.message).toMatch(/^the file named: get-backup-file: received \d+ of \d+ bytes, checksum differs$/);
        expect(got.err?.hint).toBe(`stored copy ${answer === 'unknown' ? undefined : answer}`);
      }
      expect(heard).toEqual(['intact', 'damaged', 'unchecked', 'gone', undefined, undefined]);
      // refused mid-way (a frame that does not decompress), with the rest of the file still coming and more of it than is held in memory: the answer is heard all the same
      recheckAnswer = 'intact';
      const frames = (await framesOf(Buffer.alloc(12 * CHUNK_SIZE, 3))).map((f) => chunk(f));
      const midway = await fetchWith(fileOf(Buffer.alloc(12 * CHUNK_SIZE, 3), [frames[0]!, chunk(rleFrame(16)), ...frames.slice(2)]), true, named, 10_000);
      expect(midway.err?.hint).toBe('stored copy intact');
    } finally {
      recheckAnswer = 'unknown';
    }
  });

  it('refuses bytes that are not one whole zstd frame', async () => {
    const [frame] = await framesOf(Buffer.alloc(5000, 1));
    const truncated = await fetchWith(fileOf(Buffer.alloc(5000, 1), [chunk(frame!.subarray(0, frame!.length - 2))]));
    expect(truncated.err?.code).toBe(ErrorCode.CHECKSUM_MISMATCH);
    const two = await fetchWith(fileOf(Buffer.alloc(10000, 1), [chunk(Buffer.concat([frame!, frame!]))]));
    expect(two.err?.code).toBe(ErrorCode.CHECKSUM_MISMATCH);
    expect(two.err?.message).toMatch(/not exactly one zstd frame/);
  });
});

describe('a WAL put read twice (hashed for its put, then read again to send)', () => {
  it("ends with the SHA-256 and CRC-32C of the bytes sent, so a file that changed between the reads is not vouched for by the declared SHA-256", async () => {
    const dir = await mkdtemp(join(tmpdir(), 'wal-put-'));
    const sent: Frame[] = [];
    answer = (f) => {
      sent.push(f);
      return f.type === 'end' ? [{ type: 'ack', id: 0, status: 'stored', sha256: f.sha256 ?? '' }] : [];
    };
    const conn = await connect();
    try {
      const path = join(dir, '000000010000000000000001');
      const bytes = Buffer.alloc(2 * CHUNK_SIZE + 77, 0x3c);
      await writeFile(path, bytes);
      // hashed before the bytes changed (the fake receiver's welcome allows no compression: the put is read twice)
      const before = sha256OfBytes(Buffer.alloc(bytes.length, 0x3d));
      await conn.putFile({ kind: 'wal', name: '000000010000000000000001' }, path, { walSha256: before });
      expect(sent[0]).toMatchObject({ type: 'put', target: { sha256: before } });
      expect(sent.at(-1)).toEqual({ type: 'end', id: (sent[0] as { id: number }).id, sha256: sha256OfBytes(bytes), crc32c: crcOf(bytes) });
    } finally {
      conn.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
