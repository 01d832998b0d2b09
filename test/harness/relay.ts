// A TCP relay between the agent and the receiver, the network path a test can break: `cut()`
// resets every connection open now (a router restart, a firewall flushing its state table),
// `freeze()` stops forwarding on them while leaving both sockets open (a cable pulled: no FIN,
// no RST, only silence, which heartbeats must notice), and `loseRepliesAfter()` lets one upload
// through and then swallows the answer (an ack lost on the way back), and `limit()` makes the
// link slow (agent → receiver at most so many bytes a second). New connections go through
// normally. `interceptNext()` makes the relay a man in the middle on ws:// for one connection: it
// reads the protocol's frames both ways, may rewrite or drop what the client sends, rewrite what
// the receiver sends, and may send requests of its own on the session (the hello rewriter an
// attacker would use). `limitReplies()`
// slows the other way (receiver → agent: a restore that takes long enough to be killed half-way).

import { createServer, connect, type Server, type Socket } from 'node:net';
import { decodeFrame, encodeFrame } from '../../shared/protocol/codec';
import type { Frame } from '../../shared/protocol/frames';
import { freePort } from './env';
import { track } from './resources';
import { encodeWsBinary, OPCODE_BINARY, WsStreamParser } from './ws-frames';

/** What a man in the middle does with one connection's frames. */
export interface Interception {
  /** each frame the client sends; forward the frame returned (the same, another), or nothing when undefined */
  fromClient?: (frame: Frame) => Frame | undefined;
  /** each frame the receiver sends (forwarded to the client as it is); `inject` sends a frame of the relay's own to the receiver */
  fromReceiver?: (frame: Frame, inject: (frame: Frame) => void) => void;
  /** each frame the receiver sends, rewritten: the client gets the frame returned instead (bytes changed on the way) */
  rewriteFromReceiver?: (frame: Frame) => Frame;
}

interface Pair {
  client: Socket;
  upstream: Socket;
  /** bytes the client sent */
  sent: number;
  /** from the first reply once the client has sent this many bytes, the pair goes silent */
  silenceAfter: number;
  /** from the reply after this many (each a read from the receiver's socket), the pair goes silent */
  silenceAfterReplies: number;
  replies: number;
  frozen: boolean;
  interception?: Interception;
}

export class TcpRelay {
  private readonly pairs = new Set<Pair>();
  private accepted = 0;
  private nextSilenceAfter = Infinity;
  private nextSilenceAfterReplies = Infinity;
  private nextInterception: Interception | undefined;
  /** agent → receiver bytes per second on every connection; undefined: as fast as loopback goes */
  private bytesPerSecond: number | undefined;
  /** receiver → agent bytes per second on every connection (a restore's downloads); undefined: no limit */
  private replyBytesPerSecond: number | undefined;

  private constructor(private readonly server: Server, readonly port: number, readonly target: { host: string; port: number }) {
    track({ what: `TCP relay 127.0.0.1:${port} → ${target.host}:${target.port}`, dispose: () => this.close() });
  }

  /** Listens on a free port of 127.0.0.1 and forwards every connection to `target`. */
  static async start(target: { host: string; port: number }): Promise<TcpRelay> {
    const port = await freePort();
    const server = createServer();
    const relay = new TcpRelay(server, port, target);
    server.on('connection', (client) => relay.onConnection(client));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => resolve());
    });
    return relay;
  }

  /** ws:// URL of the relay, for the agent's `receiver =`. */
  get url(): string {
    return `ws://127.0.0.1:${this.port}`;
  }

  /** Connections accepted since the relay started (each agent connect or reconnect is one). */
  get connectionsAccepted(): number {
    return this.accepted;
  }

  /** Connections forwarding now. */
  get open(): number {
    return [...this.pairs].filter((p) => !p.frozen).length;
  }

  /** Resets (RST) both sides of every connection open now; returns how many there were. */
  cut(): number {
    const live = [...this.pairs].filter((p) => !p.frozen);
    for (const pair of live) this.drop(pair, true);
    return live.length;
  }

  /** Stops forwarding on every connection open now, in both directions, leaving the sockets open. */
  freeze(): number {
    const live = [...this.pairs].filter((p) => !p.frozen);
    for (const pair of live) this.silence(pair);
    return live.length;
  }

  /**
   * The next connection forwards normally until its client has sent `clientBytes`; the first
   * answer after that is swallowed and the connection goes silent both ways (sockets left open).
   */
  loseRepliesAfter(clientBytes: number): void {
    this.nextSilenceAfter = clientBytes;
  }

  /**
   * The next connection goes silent once the receiver has answered its handshake (the upgrade,
   * the challenge, the welcome: three replies, each waited for by the client): whatever the
   * receiver says about the first request is lost, however early it says it.
   */
  loseRepliesAfterHandshake(): void {
    this.nextSilenceAfterReplies = 3;
  }

  /** The next connection is read frame by frame both ways, as `interception` says (ws:// only). */
  interceptNext(interception: Interception): void {
    this.nextInterception = interception;
  }

  /** From now on, every connection carries at most `bytesPerSecond` from the agent (undefined: no limit). */
  limit(bytesPerSecond: number | undefined): void {
    this.bytesPerSecond = bytesPerSecond;
  }

  /** From now on, every connection carries at most `bytesPerSecond` from the receiver (undefined: no limit). */
  limitReplies(bytesPerSecond: number | undefined): void {
    this.replyBytesPerSecond = bytesPerSecond;
  }

  async close(): Promise<void> {
    for (const pair of [...this.pairs]) this.drop(pair, false);
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private onConnection(client: Socket): void {
    this.accepted++;
    const upstream = connect({ host: this.target.host, port: this.target.port });
    const pair: Pair = { client, upstream, sent: 0, silenceAfter: this.nextSilenceAfter, silenceAfterReplies: this.nextSilenceAfterReplies, replies: 0, frozen: false, interception: this.nextInterception };
    this.nextSilenceAfter = Infinity;
    this.nextSilenceAfterReplies = Infinity;
    this.nextInterception = undefined;
    this.pairs.add(pair);
    for (const socket of [client, upstream]) {
      socket.setNoDelay(true);
      // one side gone (the receiver refused, a process died): the other goes too, as through a
      // router; once silenced, what happens at one end no longer reaches the other
      socket.on('error', () => (pair.frozen ? socket.destroy() : this.drop(pair, false)));
      socket.on('close', () => (pair.frozen ? socket.destroy() : this.drop(pair, false)));
    }
    if (pair.interception) {
      this.intercept(pair, pair.interception);
      return;
    }
    this.forward(pair, client, upstream, (n) => (pair.sent += n), () => this.bytesPerSecond);
    this.forward(pair, upstream, client, () => {
      if (pair.sent >= pair.silenceAfter || ++pair.replies > pair.silenceAfterReplies) this.silence(pair);
    }, () => this.replyBytesPerSecond);
  }

  /** Forwards frame by frame, handing each to the interception (no backpressure: a test's few frames). */
  private intercept(pair: Pair, interception: Interception): void {
    const { client, upstream } = pair;
    const toUpstream = (bytes: Buffer) => {
      if (!upstream.destroyed) upstream.write(bytes);
    };
    const inject = (frame: Frame) => toUpstream(encodeWsBinary(encodeFrame(frame), true));
    const fromClient = new WsStreamParser();
    client.on('data', (chunk: Buffer) =>
      fromClient.push(chunk, toUpstream, (message) => {
        if (message.opcode !== OPCODE_BINARY || !interception.fromClient) return toUpstream(message.raw);
        const frame = interception.fromClient(decodeFrame(message.payload));
        if (frame) inject(frame);
      }),
    );
    const fromReceiver = new WsStreamParser();
    const rewrite = interception.rewriteFromReceiver;
    const toClient = (bytes: Buffer) => {
      if (!client.destroyed) client.write(bytes);
    };
    upstream.on('data', (chunk: Buffer) => {
      // without a rewrite, the bytes go on as they came; with one, frame by frame as rewritten
      if (!rewrite) toClient(chunk);
      fromReceiver.push(chunk, rewrite ? toClient : () => undefined, (message) => {
        const frame = message.opcode === OPCODE_BINARY ? decodeFrame(message.payload) : undefined;
        if (rewrite) toClient(frame ? encodeWsBinary(encodeFrame(rewrite(frame)), false) : message.raw);
        if (frame) interception.fromReceiver?.(frame, inject);
      });
    });
  }

  /**
   * from → to with backpressure; `seen` may silence the pair before the bytes go on. With a
   * rate, reading pauses after each chunk for as long as the chunk takes at that rate.
   */
  private forward(pair: Pair, from: Socket, to: Socket, seen: (bytes: number) => void, rate: () => number | undefined = () => undefined): void {
    // reasons reading is paused now (a full socket, the rate); it resumes when none is left
    let holds = 0;
    const hold = () => {
      if (holds++ === 0) from.pause();
    };
    const release = () => {
      if (--holds === 0 && !pair.frozen) from.resume();
    };
    from.on('data', (chunk: Buffer) => {
      seen(chunk.length);
      if (pair.frozen || to.destroyed) return;
      if (!to.write(chunk)) {
        hold();
        to.once('drain', release);
      }
      const limit = rate();
      if (limit) {
        hold();
        setTimeout(release, (chunk.length * 1000) / limit);
      }
    });
  }

  private silence(pair: Pair): void {
    pair.frozen = true;
    pair.client.pause();
    pair.upstream.pause();
  }

  private drop(pair: Pair, reset: boolean): void {
    this.pairs.delete(pair);
    for (const socket of [pair.client, pair.upstream]) {
      if (socket.destroyed) continue;
      if (reset && !socket.connecting) socket.resetAndDestroy();
      else socket.destroy();
    }
  }
}

export function startRelay(target: { host: string; port: number }): Promise<TcpRelay> {
  return TcpRelay.start(target);
}
