// One WebSocket as a stream of frames, the same on both ends. Owns backpressure in both
// directions: `send` waits while too many bytes are queued on the socket, and incoming frames
// are handled one at a time, the socket paused while the handler (a disk write, say) is behind.
// Memory therefore stays flat however fast the peer sends.

import type { WebSocket } from 'ws';
import { BarmanError, ErrorCode, asBarmanError } from '../errors';
import { decodeFrame, encodeFrame } from './codec';
import { type ErrorFrame, type Frame, SEND_HIGH_WATER } from './frames';

export type FrameHandler = (frame: Frame) => Promise<void> | void;

/** WebSocket close codes we use (4000-4999 are for applications). */
export const CloseCode = { NORMAL: 1000, PROTOCOL: 4002, AUTH: 4001, TOO_LARGE: 1009, SHUTDOWN: 1001, REPLACED: 4003 } as const;

export class FrameConnection {
  private queuedOut = 0;
  private drainWaiters: Array<() => void> = [];
  private inbound: Promise<void> = Promise.resolve();
  private inboundFrames = 0;
  private paused = false;
  private corked = false;
  private closedError: BarmanError | undefined;
  /** the WebSocket close code the peer (or we) ended with; REPLACED tells a daemon another took its place */
  closeCode: number | undefined;
  private handler: FrameHandler | undefined;
  private readonly closeListeners: Array<(err: BarmanError | undefined) => void> = [];

  constructor(readonly ws: WebSocket) {
    ws.binaryType = 'nodebuffer';
    ws.on('message', (data, isBinary) => this.onMessage(data as Buffer, isBinary));
    ws.on('close', (code, reason) => {
      this.closeCode = code;
      const text = reason.toString('utf8');
      this.markClosed(code === CloseCode.NORMAL ? undefined : new BarmanError(ErrorCode.CONNECTION_LOST, `connection closed (${code}${text ? `: ${text}` : ''})`, 'Check that the receiver is running and reachable, then retry.'));
    });
    ws.on('error', (err) => {
      // ws reports oversized frames and bad framing here before closing
      const tooLarge = /max payload|too big|1009/i.test(err.message);
      this.markClosed(new BarmanError(tooLarge ? ErrorCode.FRAME_TOO_LARGE : ErrorCode.CONNECTION_LOST, `connection failed: ${err.message}`, 'Check that the receiver is running and reachable, then retry.', { cause: err }));
    });
  }

  /**
   * Pings the peer every `intervalMs`; a peer that has not answered (pong, or any message) by
   * the next ping is taken for dead and the connection terminated, so a half-open TCP
   * connection is noticed within two intervals instead of at the kernel's leisure.
   */
  heartbeat(intervalMs: number): void {
    let alive = true;
    const mark = () => {
      alive = true;
    };
    this.ws.on('pong', mark);
    this.ws.on('message', mark);
    const timer = setInterval(() => {
      if (!alive) {
        this.markClosed(new BarmanError(ErrorCode.CONNECTION_LOST, `the peer did not answer for ${Math.round((2 * intervalMs) / 1000)} s`, 'Check the network path between agent and receiver.'));
        this.ws.terminate();
        return;
      }
      alive = false;
      if (this.ws.readyState === 1) this.ws.ping();
    }, intervalMs);
    timer.unref();
    this.onClose(() => clearInterval(timer));
  }

  /**
   * Asks the peer for a sign of life now: true as soon as it answers (a pong, or any message),
   * false when it has not within `timeoutMs` or the connection is gone.
   */
  probe(timeoutMs: number): Promise<boolean> {
    if (this.closed) return Promise.resolve(false);
    return new Promise((resolve) => {
      const done = (alive: boolean) => {
        clearTimeout(timer);
        this.ws.off('pong', answered);
        this.ws.off('message', answered);
        resolve(alive);
      };
      const answered = () => done(true);
      const timer = setTimeout(() => done(false), timeoutMs);
      this.ws.on('pong', answered);
      this.ws.on('message', answered);
      try {
        this.ws.ping();
      } catch {
        done(false);
      }
    });
  }

  get closed(): boolean {
    return this.closedError !== undefined || this.ws.readyState >= 2;
  }

  /** Handles every incoming frame, in order, one at a time. Set once. */
  onFrame(handler: FrameHandler): void {
    this.handler = handler;
  }

  onClose(listener: (err: BarmanError | undefined) => void): void {
    this.closeListeners.push(listener);
  }

  async send(frame: Frame): Promise<void> {
    return this.sendEncoded(encodeFrame(frame));
  }

  /**
   * Sends an already encoded message (see encodeChunkInPlace), waiting first while the socket is
   * behind. `onWritten` runs once the bytes left the process, when `message` may be reused.
   */
  async sendEncoded(message: Buffer, onWritten?: () => void): Promise<void> {
    if (this.closedError) throw this.closedError;
    while (this.queuedOut > SEND_HIGH_WATER) {
      await new Promise<void>((resolve) => this.drainWaiters.push(resolve));
      if (this.closedError) throw this.closedError;
    }
    this.write(message, onWritten);
  }

  private write(buf: Buffer, onWritten?: () => void): void {
    if (this.ws.readyState !== 1) throw new BarmanError(ErrorCode.CONNECTION_LOST, 'connection is closed', 'Retry; the connection to the peer ended.');
    this.cork();
    this.queuedOut += buf.length;
    this.ws.send(buf, { binary: true }, () => {
      this.queuedOut -= buf.length;
      onWritten?.();
      if (this.queuedOut <= SEND_HIGH_WATER) this.wakeSenders();
    });
  }

  /**
   * Frames sent within one turn of the event loop leave in one write: a small file is three
   * frames (put, chunk, end) and every socket write is a system call, which costs more than the
   * bytes on small VMs. The socket is uncorked once this turn's I/O is done.
   */
  private cork(): void {
    const socket = (this.ws as unknown as { _socket?: { cork(): void; uncork(): void; destroyed?: boolean } })._socket;
    if (this.corked || !socket) return;
    this.corked = true;
    socket.cork();
    setImmediate(() => {
      this.corked = false;
      if (!socket.destroyed) socket.uncork();
    });
  }

  /** Sends an error frame and closes: for protocol violations that end the session. */
  async fail(err: BarmanError, closeCode: number = CloseCode.PROTOCOL): Promise<void> {
    if (!this.closed) {
      await this.send(errorFrame(err)).catch(() => undefined);
      this.ws.close(closeCode, err.code);
    }
    this.markClosed(err);
  }

  close(code: number = CloseCode.NORMAL, reason = ''): void {
    if (this.ws.readyState === 0 || this.ws.readyState === 1) this.ws.close(code, reason);
  }

  terminate(): void {
    this.ws.terminate();
  }

  private onMessage(data: Buffer, isBinary: boolean): void {
    if (this.closedError) return;
    let frame: Frame;
    try {
      if (!isBinary) throw new BarmanError(ErrorCode.PROTOCOL, 'text message received; the protocol is binary frames only', 'Only barman-ts speaks this protocol; check what connects to this port.');
      frame = decodeFrame(data);
    } catch (err) {
      void this.fail(asBarmanError(err));
      return;
    }
    this.inboundFrames++;
    if (this.inboundFrames >= 4 && !this.paused) {
      this.paused = true;
      this.ws.pause();
    }
    this.inbound = this.inbound.then(async () => {
      if (this.closedError && frame.type !== 'error') return;
      try {
        await this.handler?.(frame);
      } catch (err) {
        await this.fail(asBarmanError(err));
      } finally {
        this.inboundFrames--;
        if (this.paused && this.inboundFrames < 2) {
          this.paused = false;
          if (this.ws.readyState === 1) this.ws.resume();
        }
      }
    });
  }

  private markClosed(err: BarmanError | undefined): void {
    if (this.closedError) return;
    this.closedError = err ?? new BarmanError(ErrorCode.CONNECTION_LOST, 'connection closed', 'Retry; the peer closed the connection.');
    this.wakeSenders();
    for (const l of this.closeListeners) l(err);
  }

  private wakeSenders(): void {
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
    for (const w of waiters) w();
  }
}

export function errorFrame(err: BarmanError, id?: number): ErrorFrame {
  return id === undefined ? { type: 'error', code: err.code, message: err.message, hint: err.hint } : { type: 'error', id, code: err.code, message: err.message, hint: err.hint };
}

export function errorFromFrame(frame: ErrorFrame): BarmanError {
  const code = (Object.values(ErrorCode) as string[]).includes(frame.code) ? (frame.code as ErrorCode) : ErrorCode.INTERNAL;
  return new BarmanError(code, frame.message, frame.hint);
}
