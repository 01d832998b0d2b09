// The client side of the WebSocket (the agent, and the receiver's own admin commands): connect, prove the token (and check the receiver's proof),
// then run requests by id. Files go out as put → chunk* → end and come back as file → chunk* → end,
// hashed on both sides; nothing here buffers more than a chunk or two.

import { constants, promises as fs, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import WebSocket from 'ws';
import type { AgentConfig } from '../config/agent';
import { BarmanError, CHANGED_ON_THE_WAY_HINT, damagedWalHint, ErrorCode } from '../errors';
import { type ChecksumAlgorithm, crc32cWireHex, type FileChecksum, fileChecksum } from '../backup/manifest';
import { sha256Handle } from '../checksum';
import { computeProof, newNonce, proofMatches } from './auth';
import { type BlockCompress, type ChunkSource, type FrameInflate, fileSource, type PackedFile, sendChunks, sendCompressedChunks, sendFrames, wireCompressor, wireDecompressor } from './chunks';
import { CloseCode, FrameConnection, errorFromFrame } from './connection';
import { type AckFrame, type EndFrame, type Frame, MAX_FRAME_BYTES, PROTOCOL_VERSION, type PutTarget, REFUSED_DETAIL_MAX, type Role, type StoredCopyFound, type WireCompression } from './frames';
import { isSegmentName } from '../wal/names';

export const AGENT_VERSION = 'barman-ts/0.1.0';

type Waiter = (frame: Frame) => void;

/** What a client needs to reach and authenticate to a receiver. */
export type ClientOptions = Pick<AgentConfig, 'file' | 'receiver' | 'server' | 'token' | 'caFile' | 'timeoutSeconds'>;

/** Client-to-server frames must be masked, but the mask guards HTTP proxies, not us: a zero mask
 *  lets ws skip the XOR pass over every byte (documented ws option `generateMask`). */
const zeroMask = (mask: Buffer): void => {
  mask.fill(0);
};

/** What putFile sends: a WAL file (its checksum is computed here) or a backup's file. */
export type WalPutRequest = Omit<Extract<PutTarget, { kind: 'wal' }>, 'sha256'>;
export type PutRequest = WalPutRequest | Extract<PutTarget, { kind: 'backup-file' }>;
/** A WAL file's ack always carries the SHA-256 the receiver stored it under. */
export type WalAck = AckFrame & { sha256: string };

/** How a file is put: the size the backup's walk saw, compressed so, with a SHA-256 too (a backup file whose manifest records one). */
export interface PutOptions {
  statSize?: number;
  compress?: BlockCompress;
  /** a backup file: send its SHA-256 too (backup-accepted asked for it) */
  sha256?: boolean;
  /** a WAL file: its SHA-256, which the caller computed already */
  walSha256?: string;
  /**
   * a WAL segment the caller read once already (packFile): its frames go out as they are where
   * the receiver takes segments so compressed, and are let go once sent (emptied from `frames`:
   * a daemon has several puts waiting for their ack); otherwise only its SHA-256 is used, and the
   * bytes are read again
   */
  packed?: PackedFile;
}

/** How fetch() hands a file over, and how it refuses one. */
export interface FetchOptions {
  /** hears the checksum once it matched (before the last chunk is handed over), with its algorithm, in the manifest's hex */
  onVerified?: (checksum: string, algorithm: ChecksumAlgorithm) => void;
  /** decompresses the frames of a file the receiver sends as zstd (asked for with `accept`) */
  inflate?: FrameInflate;
  /**
   * the error for bytes this agent finds do not match (size, checksum, a frame that does not
   * decompress), given what it found and what the receiver then found its stored copy to be
   * (undefined: it could not tell, or did not answer in time): a caller that knows what the file is
   * names it. An error the receiver sends comes as the receiver wrote it.
   */
  refuse?: (detail: string, stored: StoredCopyFound | undefined) => BarmanError;
  /** how long a refusal waits for the receiver to say what its stored copy is (default RECHECK_WAIT_MS) */
  recheckWaitMs?: number;
}

/**
 * how long a refusal waits for the receiver to read its stored copy back (a WAL segment takes tens
 * of milliseconds, a backup's largest file, 1 GiB, a few seconds)
 */
const RECHECK_WAIT_MS = 30_000;

function refuseFetched(detail: string): BarmanError {
  return new BarmanError(ErrorCode.CHECKSUM_MISMATCH, detail, 'Retry; if it persists, run verify-backup on the receiver host.');
}

/** Bytes fetch() found wrong, until the receiver has said what its stored copy is. */
class Refusal extends Error {}

/** what a fetch's waiter sees once its consumer has stopped (made once, shared) */
let fetchEnded: BarmanError | undefined;

export class AgentConnection {
  private nextId = 1;
  private readonly waiters = new Map<number, Waiter>();
  private failure: BarmanError | undefined;
  private requestHandler: ((frame: Frame) => void) | undefined;
  private readonly closedPromise: Promise<BarmanError>;

  private constructor(private readonly conn: FrameConnection, readonly config: ClientOptions, readonly sessionId: string, /** how the receiver takes WAL segments compressed (welcome), if at all */ readonly walCompression?: WireCompression) {
    conn.onFrame((frame) => this.route(frame));
    this.closedPromise = new Promise((resolve) => {
      conn.onClose((err) => {
        const reason = err ?? new BarmanError(ErrorCode.CONNECTION_LOST, 'the receiver closed the connection', 'Retry; check the receiver log if it keeps happening.');
        this.failAll(reason);
        resolve(reason);
      });
    });
  }

  static async open(config: ClientOptions, role: Role): Promise<AgentConnection> {
    const url = config.receiver.href;
    const ws = new WebSocket(url, {
      perMessageDeflate: false,
      maxPayload: MAX_FRAME_BYTES,
      handshakeTimeout: config.timeoutSeconds * 1000,
      generateMask: zeroMask,
      ca: config.caFile ? readCa(config) : undefined,
    });
    const conn = new FrameConnection(ws);
    const clientNonce = newNonce();
    const hello = { type: 'hello', protocolVersion: PROTOCOL_VERSION, server: config.server, role, clientNonce, agentVersion: AGENT_VERSION } as const;
    const handshake = new Promise<AgentConnection>((resolve, reject) => {
      let serverNonce: Uint8Array | undefined;
      const timer = setTimeout(() => {
        reject(new BarmanError(ErrorCode.TIMEOUT, `no answer from the receiver at ${url} within ${config.timeoutSeconds} s`, 'Check that barman-receiver serve runs there and the network path is open.'));
        ws.terminate();
      }, config.timeoutSeconds * 1000);
      ws.once('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        reject(connectError(url, err));
      });
      conn.onClose((err) => {
        clearTimeout(timer);
        // before the socket opened, a failure is a connect failure (refused, TLS): say so
        const cause = err?.cause as NodeJS.ErrnoException | undefined;
        if (ws.readyState !== WebSocket.OPEN && cause instanceof Error) reject(connectError(url, cause));
        else reject(err ?? new BarmanError(ErrorCode.CONNECTION_LOST, `the receiver at ${url} closed the connection during authentication`, 'Check the receiver log.'));
      });
      conn.onFrame(async (frame) => {
        if (frame.type === 'error') {
          clearTimeout(timer);
          reject(errorFromFrame(frame));
        } else if (frame.type === 'challenge' && !serverNonce) {
          if (frame.protocolVersion !== PROTOCOL_VERSION) {
            clearTimeout(timer);
            reject(new BarmanError(ErrorCode.PROTOCOL, `the receiver at ${url} speaks protocol version ${frame.protocolVersion}, this agent speaks ${PROTOCOL_VERSION}`, 'Install the same barman-ts version on the agent and the receiver.'));
            conn.close(4002, 'protocol');
            return;
          }
          serverNonce = frame.serverNonce;
          await conn.send({ type: 'auth', proof: computeProof(config.token, 'agent', { ...hello, serverNonce }) });
        } else if (frame.type === 'welcome' && serverNonce) {
          clearTimeout(timer);
          const expected = computeProof(config.token, 'receiver', { ...hello, serverNonce });
          if (!proofMatches(expected, frame.proof)) {
            conn.close(4001, 'receiver proof');
            reject(new BarmanError(ErrorCode.AUTH_FAILED, `the receiver at ${url} could not prove it holds the token of "${config.server}"`, 'Something other than your barman-receiver answers on that address, or its token differs; check both token files.'));
            return;
          }
          const agent = new AgentConnection(conn, config, frame.sessionId, frame.walCompression);
          // a receiver gone silent (no FIN, no RST) must not hang a push, a restore_command or a
          // daemon forever: silent for `timeout` seconds, the connection is dropped
          conn.heartbeat(Math.max(1000, (config.timeoutSeconds * 1000) / 2));
          resolve(agent);
        } else {
          clearTimeout(timer);
          reject(new BarmanError(ErrorCode.PROTOCOL, `unexpected ${frame.type} frame during authentication`, 'Install the same barman-ts version on agent and receiver.'));
          conn.close(4002, 'protocol');
        }
      });
    });
    ws.once('open', () => {
      conn.send(hello).catch(() => undefined); // a close is reported by the handshake
    });
    return handshake;
  }

  close(): void {
    this.conn.close();
  }

  /** Drops the connection at once, without the close handshake (a peer that does not answer it). */
  terminate(): void {
    this.conn.terminate();
  }

  /**
   * Sends a local file; resolves with the receiver's ack once it is stored there.
   * WAL files must not change while read (a size change is an error). Backup files may: given
   * the size the backup's walk saw (`statSize`), exactly that many bytes are sent, cut or padded
   * with zeros, as pg_basebackup does; WAL replay repairs whatever changed. Resolves undefined
   * when such a file vanished before open.
   */
  async putFile(request: WalPutRequest, path: string, options?: PutOptions): Promise<WalAck | undefined>;
  async putFile(request: PutRequest, path: string, options?: PutOptions): Promise<AckFrame | undefined>;
  async putFile(request: PutRequest, path: string, options: PutOptions = {}): Promise<AckFrame | undefined> {
    const { statSize } = options;
    let fh: fs.FileHandle;
    try {
      // a backup file is read where the walk found it, never through a link swapped in since
      fh = await fs.open(path, request.kind === 'backup-file' ? constants.O_RDONLY | constants.O_NOFOLLOW : 'r');
    } catch (err) {
      if (statSize !== undefined && (err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw localFileError(path, err);
    }
    try {
      return await this.putOpened(request, fh, path, options);
    } finally {
      await fh.close();
    }
  }

  /**
   * putFile for a file the caller opened (and closes): the daemon's archiver reads the file's
   * identity from the same descriptor before and after. `onSent` runs once the last byte and the
   * end frame are handed to the socket, before the receiver's answer: a caller may start the next
   * file then, so one file's transfer overlaps the previous one's fsync on the receiver.
   */
  async putOpened(request: WalPutRequest, fh: fs.FileHandle, path: string, options?: PutOptions & { onSent?: () => void }): Promise<WalAck>;
  async putOpened(request: PutRequest, fh: fs.FileHandle, path: string, options?: PutOptions & { onSent?: () => void }): Promise<AckFrame>;
  async putOpened(request: PutRequest, fh: fs.FileHandle, path: string, options: PutOptions & { onSent?: () => void } = {}): Promise<AckFrame> {
    const { statSize, onSent } = options;
    // a WAL segment goes compressed as the catalog stores it, when the receiver said so (welcome):
    // the agent's core compresses, the receiver's only checks, and a tenth of the bytes cross
    const walWire = request.kind === 'wal' && this.walCompression && isSegmentName(request.name) ? this.walCompression : undefined;
    const compress = options.compress ?? (walWire ? wireCompressor(walWire) : undefined);
    const asOfStat = statSize !== undefined;
    const id = this.nextId++;
    const answer = this.expect<AckFrame>(id, (frame, settle) => {
      if (frame.type === 'ack' && request.kind === 'wal' && !frame.sha256) settle.reject(new BarmanError(ErrorCode.PROTOCOL, `${request.name}: the receiver's ack carries no SHA-256`, 'Install the same barman-ts version on the agent and the receiver.'));
      else if (frame.type === 'ack') settle.resolve(frame);
      else if (frame.type === 'error') settle.reject(errorFromFrame(frame));
      else settle.reject(unexpected(frame, 'put'));
    });
    try {
      const stop = () => answer.settled || this.failure !== undefined;
      const packed = walWire !== undefined && options.packed?.compression === walWire ? options.packed : undefined;
      if (packed && request.kind === 'wal') {
        await this.conn.send({ type: 'put', id, target: { ...request, sha256: packed.sha256 }, size: packed.size, compression: packed.compression });
        await sendFrames(this.conn, id, packed.frames, stop);
        // sent (or given up on): the frames are not held while the receiver's answer is awaited
        packed.frames.length = 0;
        if (!stop()) await this.conn.send({ type: 'end', id, sha256: packed.sha256, crc32c: packed.crc32c });
        return answer.promise;
      }
      // a backup file's size is known from its walk: no second stat per file
      const size = statSize ?? (await fh.stat()).size;
      // a WAL file is hashed before it is sent: the receiver stores it under a key that carries
      // the checksum, and must know that key before the first byte (an object store has no rename)
      // (`sha256`: the caller hashed it already)
      const target: PutTarget = request.kind === 'wal' ? { ...request, sha256: options.walSha256 ?? options.packed?.sha256 ?? (await sha256Handle(fh)) } : request;
      const compressedWal = target.kind === 'wal' && walWire !== undefined && compress !== undefined;
      await this.conn.send({ type: 'put', id, target, size, ...(compressedWal ? { compression: walWire } : {}) });
      const source = asOfStat ? exactSize(fileSource(fh), size) : fileSource(fh);
      // every file's end carries a CRC-32C of the plain bytes, computed here where the bytes
      // already are: the receiver checks the transfer with it. It records it in a backup's
      // manifest, or this SHA-256 where it asked for one (backup_checksum = sha256); a WAL file
      // is recorded under the SHA-256 its put declared, so this read is hashed again and the
      // end carries what it gives: the receiver refuses a file whose bytes changed between the
      // two reads (the CRC-32C would vouch for bytes the declared SHA-256 is not of). A packed
      // file (above) was hashed and checksummed in one read.
      const backupFile = request.kind === 'backup-file';
      // a backup's files go compressed when the receiver asked for it (backup-accepted)
      const hashing = !backupFile || options.sha256 === true;
      const sent = (backupFile || compressedWal) && compress ? await sendCompressedChunks(this.conn, id, source, compress, stop, { hashing, withCrc: true }) : await sendChunks(this.conn, id, source, stop, { withCrc: true, hashing });
      if (!answer.settled && !this.failure) {
        if (sent.size !== size) throw new BarmanError(ErrorCode.LOCAL_FILE, `${path} changed size while being read (${size} → ${sent.size} bytes)`, "Something else writes the file; archive_command must be given PostgreSQL's %p.");
        await this.conn.send({ type: 'end', id, ...(sent.sha256 ? { sha256: sent.sha256 } : {}), ...(sent.crc32c ? { crc32c: sent.crc32c } : {}) });
      }
    } catch (err) {
      if (!answer.settled) throw err;
    } finally {
      onSent?.();
    }
    return answer.promise;
  }

  /** Sends one request frame (its id is assigned here) and resolves with the first answer `accept` takes. */
  call<T>(build: (id: number) => Frame, accept: (frame: Frame) => T | undefined): Promise<T> {
    return this.stream(build, accept);
  }

  /**
   * Like call(), for requests answered by several frames: `accept` returns 'more' to keep
   * listening, a value to finish, undefined for a frame that does not belong.
   */
  async stream<T>(build: (id: number) => Frame, accept: (frame: Frame) => T | 'more' | undefined): Promise<T> {
    const id = this.nextId++;
    const answer = this.expect<T>(id, (frame, settle) => {
      if (frame.type === 'error') return settle.reject(errorFromFrame(frame));
      const value = accept(frame);
      if (value === undefined) settle.reject(unexpected(frame, build(id).type));
      else if (value !== 'more') settle.resolve(value);
    });
    await this.conn.send(build(id));
    return answer.promise;
  }

  /**
   * A long-lived request (a WAL stream): every frame answering it goes to `onFrame` until
   * `close()` is called on the returned handle or the connection ends (onFrame then sees an error frame).
   */
  async channel(build: (id: number) => Frame, onFrame: (frame: Frame) => void): Promise<{ id: number; close: () => void }> {
    const id = this.nextId++;
    if (this.failure) throw this.failure;
    this.waiters.set(id, onFrame);
    try {
      await this.conn.send(build(id));
    } catch (err) {
      // nobody will close a channel that never opened: its handler must not hear the connection's end
      this.waiters.delete(id);
      throw err;
    }
    return { id, close: () => this.waiters.delete(id) };
  }

  /** Sends a frame that needs no answer (a reply to a request of the receiver's). */
  send(frame: Frame): Promise<void> {
    return this.conn.send(frame);
  }

  /** Requests the receiver sends this agent (backup-request, pg-probe-request), with a handler that answers them. */
  onRequest(handler: (frame: Frame) => void): void {
    this.requestHandler = handler;
  }

  /** The receiver closed this connection because another daemon of the same server connected. */
  get replaced(): boolean {
    return this.conn.closeCode === CloseCode.REPLACED;
  }

  /** Resolves when the connection ends, with the reason. */
  get closed(): Promise<BarmanError> {
    return this.closedPromise;
  }

  /**
   * Streams a file the receiver sends in answer to `build` (file → chunk* → end), verifying its
   * size and checksum at the end: its SHA-256, or the CRC-32C its file frame announces (a backup
   * file whose manifest records one). At most a few chunks wait in memory: the connection stops
   * reading while the consumer is behind. `onVerified` hears the checksum once it has matched
   * (before the last chunk is handed over), with its algorithm, in the manifest's hex, so a caller
   * need not checksum the bytes a second time.
   *
   * A get or get-backup-file that asks for zstd frames (`accept`) is given `inflate`: a file that comes
   * as frames (file `encoding`) is decompressed here, each frame bounded before it is (see
   * wireDecompressor), up to 4 at a time on the thread pool, and its size and checksum are those
   * of the plain bytes, checked once the last is decompressed, before the fetch ends.
   *
   * Bytes found not to match are refused with `refuse`'s error (the caller names the file), and
   * the receiver is told (a refused frame: it checks its stored copy and logs what it finds); an
   * error frame from the receiver ends the fetch with the receiver's own error.
   */
  async *fetch(build: (id: number) => Frame, options: FetchOptions = {}): AsyncGenerator<Uint8Array> {
    const { onVerified, inflate } = options;
    const id = this.nextId++;
    // (made the caller's error once the receiver has said what its stored copy is, below)
    const refuse = (detail: string) => new Refusal(detail);
    const queue: Uint8Array[] = [];
    /** a file sent as zstd frames: each one's plain bytes, in order, and the end once it came */
    let frames: Promise<Uint8Array>[] | undefined;
    let framesEnd: EndFrame | undefined;
    /** the file's checksum as its file frame announced it (CRC-32C, or SHA-256), over its plain bytes */
    let algorithm: ChecksumAlgorithm = 'SHA256';
    let digest: FileChecksum | undefined;
    let expected = -1;
    let received = 0;
    let finished = false;
    let failure: Error | undefined;
    let wake: (() => void) | undefined;
    let drained: (() => void) | undefined;
    const nudge = () => {
      const w = wake;
      wake = undefined;
      w?.();
    };
    /** the file's name from its file frame, for errors */
    let fileName = '';
    /** Checks what arrived (its plain bytes) against the end frame: the failure, or undefined (and onVerified told). */
    const verify = (frame: EndFrame): Refusal | undefined => {
      // the manifest's hex; an end carries a CRC-32C as the wire writes it (crc32cWireHex)
      const mine = digest?.digest();
      const matches = mine !== undefined && (algorithm === 'CRC32C' ? crc32cWireHex(mine) === frame.crc32c : mine === frame.sha256);
      if (received !== expected || !matches) {
        return refuse(`${build(id).type}: received ${received} of ${expected} bytes, checksum ${matches ? 'matches' : 'differs'}`);
      }
      onVerified?.(mine!, algorithm);
      return undefined;
    };
    this.waiters.set(id, async (frame) => {
      if (frame.type === 'file') {
        expected = frame.size;
        if (frame.encoding !== undefined) {
          if (!inflate) {
            failure = new BarmanError(ErrorCode.PROTOCOL, `${frame.name.slice(0, 200)}: the receiver sent ${frame.encoding} frames, which were not asked for`, 'Install the same barman-ts version on the agent and the receiver.');
            this.waiters.delete(id);
            nudge();
            return;
          }
          frames = [];
        }
        fileName = frame.name.slice(0, 200);
        algorithm = frame.checksum === 'crc32c' ? 'CRC32C' : 'SHA256';
        digest = fileChecksum(algorithm);
        return;
      }
      if (frame.type === 'chunk' && frames) {
        const name = fileName;
        const plain = frame.plain ? Promise.resolve(frame.data) : inflate!(frame.data).catch((err: unknown) => {
          throw refuse(`${name}: a zstd frame from the receiver was refused (${(err as Error).message})`);
        });
        plain.catch(() => undefined); // awaited in order by the consumer
        frames.push(plain);
        nudge();
        while (frames.length >= 4 && !failure) await new Promise<void>((r) => (drained = r));
        return;
      }
      if (frame.type === 'end' && frames) {
        // checked by the consumer once every frame is decompressed
        framesEnd = frame;
        finished = true;
        this.waiters.delete(id);
        nudge();
        return;
      }
      if (frame.type === 'chunk') {
        digest?.update(frame.data);
        received += frame.data.length;
        queue.push(frame.data);
        nudge();
        while (queue.length >= 4 && !failure) await new Promise<void>((r) => (drained = r));
        return;
      }
      if (frame.type === 'end') {
        failure = verify(frame);
        finished = true;
      } else if (frame.type === 'error') failure = errorFromFrame(frame);
      else failure = unexpected(frame, build(id).type);
      this.waiters.delete(id);
      nudge();
    });
    if (this.failure) throw this.failure;
    await this.conn.send(build(id));
    try {
      for (;;) {
        if (frames) {
          const pending = frames.shift();
          if (pending) {
            const d = drained;
            drained = undefined;
            d?.();
            const plain = await pending;
            if (received + plain.length > expected) throw refuse(`${fileName}: the receiver's zstd frames decompress to more than its ${expected} bytes`);
            digest?.update(plain);
            received += plain.length;
            yield plain;
            continue;
          }
          if (failure) throw failure;
          if (finished) {
            const failed = verify(framesEnd!);
            if (failed) throw failed;
            return;
          }
          await new Promise<void>((r) => (wake = r));
          continue;
        }
        const next = queue.shift();
        if (next) {
          const d = drained;
          drained = undefined;
          d?.();
          yield next;
          continue;
        }
        if (failure) throw failure;
        if (finished) return;
        await new Promise<void>((r) => (wake = r));
      }
    } catch (err) {
      if (!(err instanceof Refusal)) throw err;
      // bytes this agent refuses: the receiver hears of it and reads its stored copy back, and
      // the caller's error says what that found (changed on the way, or damaged in the catalog).
      // Meanwhile the rest of the file is dropped: the waiter stops holding the connection back.
      failure ??= err;
      const d = drained;
      drained = undefined;
      d?.();
      throw (options.refuse ?? refuseFetched)(err.message, await this.recheck(id, err.message, options.recheckWaitMs ?? RECHECK_WAIT_MS));
    } finally {
      this.waiters.delete(id);
      // (one error for every fetch ever ended: it only stops this fetch's waiter, and building an
      // error per file, stack and all, cost a restore of a thousand small files a noticeable time)
      failure ??= (fetchEnded ??= new BarmanError(ErrorCode.CONNECTION_LOST, 'fetch abandoned', ''));
      drained?.();
    }
  }

  /**
   * Tells the receiver this agent refused what it sent for request `id` (`detail`: why) and waits
   * at most `waitMs` for its answer: what its stored copy, read back, is; undefined when it cannot
   * tell, does not answer in time, or the connection ends.
   */
  private recheck(id: number, detail: string, waitMs: number): Promise<StoredCopyFound | undefined> {
    return new Promise((resolve) => {
      const done = (found: StoredCopyFound | undefined) => {
        clearTimeout(timer);
        if (this.waiters.get(id) === waiter) this.waiters.delete(id);
        resolve(found);
      };
      const timer = setTimeout(() => done(undefined), waitMs);
      // the rest of the file may still come first (a refusal mid-way): dropped
      const waiter: Waiter = (frame) => {
        if (frame.type === 'rechecked') done(frame.found === 'unknown' ? undefined : frame.found);
        else if (frame.type === 'error') done(undefined);
      };
      this.waiters.set(id, waiter);
      this.conn.send({ type: 'refused', id, detail: detail.slice(0, REFUSED_DETAIL_MAX) }).catch(() => done(undefined));
    });
  }

  /**
   * Streams WAL file `name` from the catalog (fetch()): where the catalog stores it as zstd and the
   * binding loads here, as its stored frames, decompressed here and checked against the SHA-256
   * recorded when it was stored, which `onVerified` hears. Bytes that do not match it are refused
   * as the damaged catalog copy they are, naming the file.
   */
  async *fetchWal(name: string, onVerified?: (sha256: string) => void): AsyncGenerator<Uint8Array> {
    const inflate = wireDecompressor();
    const { server } = this.config;
    yield* this.fetch((id) => ({ type: 'get', id, name, ...(inflate ? { accept: 'zstd' as const } : {}) }), {
      onVerified,
      inflate,
      // what this agent finds wrong with the bytes; a copy the receiver finds damaged itself, it names in its own error
      refuse: (detail, stored) =>
        stored === 'intact'
          ? new BarmanError(ErrorCode.CHECKSUM_MISMATCH, `${name} arrived from the catalog of ${server} changed: its bytes do not match the checksum recorded when it was stored (${detail}), and the receiver read its copy back intact; refusing it`, CHANGED_ON_THE_WAY_HINT)
          : new BarmanError(ErrorCode.CHECKSUM_MISMATCH, `${name} in the catalog of ${server} is damaged: its bytes do not match the checksum recorded when it was stored (${detail})${stored === 'damaged' ? ', and the receiver found the same reading its copy back' : ''}; refusing it`, damagedWalHint(name, server)),
    });
  }

  /**
   * Fetches a WAL file from the catalog into `dest` (written under a temporary name, fsynced,
   * renamed). Resolves false when the receiver does not have it.
   */
  async getFile(name: string, dest: string): Promise<boolean> {
    const tmp = join(dirname(dest), `.${name}.${process.pid}.download`);
    const fh = await fs.open(tmp, 'w', 0o600);
    try {
      for await (const chunk of this.fetchWal(name)) await fh.write(chunk);
      await fh.sync();
    } catch (err) {
      await fh.close();
      await fs.rm(tmp, { force: true });
      if (err instanceof BarmanError && err.code === ErrorCode.WAL_NOT_FOUND) return false;
      throw err;
    }
    await fh.close();
    await fs.rename(tmp, dest);
    return true;
  }

  private expect<T>(id: number, onFrame: (frame: Frame, settle: { resolve: (v: T | Promise<T>) => void; reject: (e: unknown) => void }) => void | Promise<void>) {
    const state = { settled: false, promise: undefined as unknown as Promise<T> };
    state.promise = new Promise<T>((resolve, reject) => {
      const settle = {
        resolve: (v: T | Promise<T>) => {
          state.settled = true;
          this.waiters.delete(id);
          resolve(v);
        },
        reject: (e: unknown) => {
          state.settled = true;
          this.waiters.delete(id);
          reject(e);
        },
      };
      if (this.failure) return settle.reject(this.failure);
      this.waiters.set(id, (frame) => onFrame(frame, settle));
    });
    // an answer may arrive (a refusal, say) while the request is still being sent; it is awaited later
    state.promise.catch(() => undefined);
    return state;
  }

  private async route(frame: Frame): Promise<void> {
    if (frame.type === 'backup-request' || frame.type === 'pg-probe-request') {
      this.requestHandler?.(frame);
      return;
    }
    const id = 'id' in frame ? frame.id : undefined;
    if (id === undefined) {
      if (frame.type === 'error') this.failAll(errorFromFrame(frame));
      return;
    }
    await this.waiters.get(id)?.(frame);
  }

  private failAll(err: BarmanError): void {
    this.failure ??= err;
    for (const w of [...this.waiters.values()]) w({ type: 'error', code: err.code, message: err.message, hint: err.hint });
  }
}

function unexpected(frame: Frame, what: string): BarmanError {
  return new BarmanError(ErrorCode.PROTOCOL, `unexpected ${frame.type} frame answering ${what}`, 'Install the same barman-ts version on agent and receiver.');
}

/** Exactly `size` bytes of `source`: cut where it grew, zero-padded where it shrank. */
function exactSize(source: ChunkSource, size: number): ChunkSource {
  let left = size;
  return async (target) => {
    if (left === 0) return 0;
    const want = target.subarray(0, Math.min(target.length, left));
    let n = await source(want);
    if (n < want.length) {
      want.fill(0, n);
      n = want.length;
    }
    left -= n;
    return n;
  };
}

function readCa(config: ClientOptions): Buffer {
  try {
    return readFileSync(config.caFile!);
  } catch (err) {
    throw new BarmanError(ErrorCode.CONFIG_INVALID, `${config.file} [agent] ca_file: cannot read ${config.caFile} (${(err as NodeJS.ErrnoException).code})`, 'Point ca_file at the PEM certificate that signed the receiver\'s tls_cert.', { cause: err });
  }
}

function connectError(url: string, err: NodeJS.ErrnoException): BarmanError {
  const hint = 'Start it with `barman-receiver serve` on the backup host, or fix receiver = in the agent configuration; PostgreSQL retries archive_command by itself.';
  if (err.code === 'ECONNREFUSED' || err.code === 'ENOTFOUND' || err.code === 'EHOSTUNREACH' || err.code === 'ECONNRESET') {
    return new BarmanError(ErrorCode.RECEIVER_UNREACHABLE, `cannot reach the receiver at ${url} (${err.code})`, hint, { cause: err });
  }
  if (/certificate|self[- ]signed|SSL|TLS/i.test(err.message) || err.code?.startsWith('ERR_TLS') || err.code?.includes('CERT')) {
    return new BarmanError(ErrorCode.RECEIVER_UNREACHABLE, `TLS with the receiver at ${url} failed: ${err.message}`, 'Set ca_file = in the agent configuration to the certificate (or CA) of the receiver\'s tls_cert.', { cause: err });
  }
  return new BarmanError(ErrorCode.RECEIVER_UNREACHABLE, `cannot connect to the receiver at ${url}: ${err.message}`, hint, { cause: err });
}

export function localFileError(path: string, err: unknown): BarmanError {
  const code = (err as NodeJS.ErrnoException).code;
  return new BarmanError(ErrorCode.LOCAL_FILE, `cannot read ${path} (${code ?? String(err)})`, code === 'ENOENT' ? 'The file does not exist; archive_command must pass %p, relative to the data directory.' : 'Check that this user (postgres) may read the file.', { cause: err });
}
