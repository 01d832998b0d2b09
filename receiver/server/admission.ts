// Connections before they authenticate: the only ones anyone who reaches the port can open, so
// what each may cost is bounded here, from the TCP accept to the welcome. Each may send at most
// UNAUTHENTICATED_BYTES (a hello and an auth frame take a few hundred; ws alone would buffer an
// unfinished message up to the authenticated frame limit), must authenticate within the
// handshake timeout, and at most MAX_UNAUTHENTICATED of them (MAX_UNAUTHENTICATED_PER_ADDRESS
// from one address) are open at once. A newcomer beyond a limit pushes out the oldest, which has
// had the longest to finish a handshake an agent completes in a round trip or two: a flood holds
// the port no longer than its newest connections live, and a real agent still gets through.

import type { Socket } from 'node:net';
import type { Logger } from 'pino';

/** an agent authenticates within this long after connecting */
export const HANDSHAKE_TIMEOUT_MS = 10_000;
/** bytes a connection may send before it has authenticated (HTTP upgrade not counted: Node caps headers) */
export const UNAUTHENTICATED_BYTES = 64 * 1024;
export const MAX_UNAUTHENTICATED = 128;
export const MAX_UNAUTHENTICATED_PER_ADDRESS = 32;

interface Pending {
  socket: Socket;
  address: string;
  timer: NodeJS.Timeout;
  /** the byte counter on the socket that carries the WebSocket (the TLS socket under wss) */
  counted?: { socket: Socket; listener: (data: Buffer) => void };
}

export class Admission {
  /** by connection key, oldest first (a Map keeps insertion order) */
  private readonly pending = new Map<string, Pending>();
  private readonly perAddress = new Map<string, number>();

  constructor(private readonly log: Logger) {}

  /** A TCP connection was accepted: it counts as unauthenticated until `authenticated`. */
  accept(socket: Socket): void {
    const key = connectionKey(socket);
    const address = socket.remoteAddress ?? '?';
    if (!key) {
      socket.destroy();
      return;
    }
    if ((this.perAddress.get(address) ?? 0) >= MAX_UNAUTHENTICATED_PER_ADDRESS) this.dropOldest((p) => p.address === address, 'too many unauthenticated connections from its address');
    if (this.pending.size >= MAX_UNAUTHENTICATED) this.dropOldest(() => true, 'too many unauthenticated connections');
    // the session's own timer answers first, with a reason; this one also ends connections that
    // never upgrade to WebSocket or never finish TLS
    const timer = setTimeout(() => this.drop(key, 'no authentication in time'), HANDSHAKE_TIMEOUT_MS + 2000);
    timer.unref();
    this.pending.set(key, { socket, address, timer });
    this.perAddress.set(address, (this.perAddress.get(address) ?? 0) + 1);
    socket.once('close', () => this.release(key));
  }

  /** The WebSocket of a pending connection is up: counts what it sends until it authenticates. */
  upgraded(socket: Socket): void {
    const entry = this.pending.get(connectionKey(socket) ?? '');
    if (!entry) return;
    let received = 0;
    const listener = (data: Buffer) => {
      received += data.length;
      if (received > UNAUTHENTICATED_BYTES) this.drop(connectionKey(socket)!, `sent more than ${UNAUTHENTICATED_BYTES} bytes before authenticating`);
    };
    entry.counted = { socket, listener };
    socket.on('data', listener);
  }

  /** The connection proved its token: no longer limited here. */
  authenticated(socket: Socket): void {
    const key = connectionKey(socket);
    if (key) this.release(key);
  }

  /** Ends every connection still waiting to authenticate (the service is stopping). */
  dropAll(): void {
    for (const p of [...this.pending.values()]) p.socket.destroy();
  }

  private dropOldest(match: (p: Pending) => boolean, why: string): void {
    for (const [key, p] of this.pending) {
      if (match(p)) {
        this.drop(key, why);
        return;
      }
    }
  }

  private drop(key: string, why: string): void {
    const p = this.pending.get(key);
    if (!p) return;
    this.log.warn({ remote: key.replace('|', ':') }, `unauthenticated connection dropped: ${why}`);
    this.release(key);
    p.socket.destroy();
    p.counted?.socket.destroy();
  }

  private release(key: string): void {
    const p = this.pending.get(key);
    if (!p) return;
    this.pending.delete(key);
    clearTimeout(p.timer);
    p.counted?.socket.off('data', p.counted.listener);
    const n = (this.perAddress.get(p.address) ?? 1) - 1;
    if (n > 0) this.perAddress.set(p.address, n);
    else this.perAddress.delete(p.address);
  }
}

/** One TCP connection, the same for its plain socket and the TLS socket over it. */
function connectionKey(socket: Socket): string | undefined {
  return socket.remoteAddress && socket.remotePort !== undefined ? `${socket.remoteAddress}|${socket.remotePort}` : undefined;
}
