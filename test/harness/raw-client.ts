// A hand-driven protocol client for fault tests: speaks the project's own codec and
// challenge-response auth, but sends whatever frame (or garbage) a test asks for and hands back
// every frame and the close code it gets. The agent never misbehaves like this; an attacker or a
// broken client might.

import WebSocket from 'ws';
import { computeProof, newNonce, proofMatches } from '../../shared/protocol/auth';
import { decodeFrame, encodeFrame } from '../../shared/protocol/codec';
import { type ErrorFrame, type Frame, type HelloFrame, PROTOCOL_VERSION, type Role, type WelcomeFrame } from '../../shared/protocol/frames';
import { track } from './resources';

export interface CloseInfo {
  code: number;
  reason: string;
}

export class RawClient {
  private readonly inbox: Frame[] = [];
  private closeInfo: CloseInfo | undefined;
  private undecodable: Error | undefined;
  readonly closed: Promise<CloseInfo>;

  private constructor(private readonly ws: WebSocket) {
    ws.on('message', (data: Buffer) => {
      try {
        this.inbox.push(decodeFrame(data));
      } catch (err) {
        this.undecodable ??= err as Error;
      }
    });
    track({ what: 'raw protocol client', dispose: () => ws.terminate() });
    // a peer that closes on us mid-send surfaces as ECONNRESET/EPIPE here; the close event tells the rest
    ws.on('error', () => undefined);
    this.closed = new Promise((resolve) =>
      ws.once('close', (code, reason) => {
        this.closeInfo = { code, reason: reason.toString('utf8') };
        resolve(this.closeInfo);
      }),
    );
  }

  static async connect(url: string, options: { ca?: Buffer } = {}): Promise<RawClient> {
    // a zero mask, as the agent uses: ws then sends a buffer as it is, so a test can send the
    // same large buffer on many connections without a copy per connection
    const ws = new WebSocket(url, { perMessageDeflate: false, ca: options.ca, generateMask: (mask: Buffer) => void mask.fill(0) });
    await new Promise<void>((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
    });
    return new RawClient(ws);
  }

  /** Connects and completes hello → challenge → auth → welcome as `server` with `token`. */
  static async authenticated(url: string, server: string, token: string, role: Role = 'push', protocolVersion = PROTOCOL_VERSION): Promise<RawClient> {
    const client = await RawClient.connect(url);
    await client.authenticate(server, token, role, protocolVersion);
    return client;
  }

  /** `protocolVersion`: the one the hello says (an older agent's) */
  async authenticate(server: string, token: string, role: Role = 'push', protocolVersion = PROTOCOL_VERSION): Promise<WelcomeFrame> {
    const { hello, frames } = await this.handshake(server, token, role, protocolVersion);
    const [challenge, welcome] = frames;
    if (challenge?.type !== 'challenge') throw new Error(`expected challenge, got ${JSON.stringify(challenge)}`);
    if (welcome?.type !== 'welcome') throw new Error(`expected welcome, got ${JSON.stringify(welcome)}`);
    if (!proofMatches(computeProof(token, 'receiver', { ...hello, serverNonce: challenge.serverNonce }), welcome.proof)) throw new Error('receiver proof does not match');
    return welcome;
  }

  /**
   * hello → challenge → auth as `server` with `token`, and the frames the receiver answered:
   * the first answer to hello, and (when that was a challenge) the answer to auth.
   */
  async tryAuthenticate(server: string, token: string, role: Role = 'push'): Promise<Frame[]> {
    return (await this.handshake(server, token, role)).frames;
  }

  private async handshake(server: string, token: string, role: Role, protocolVersion = PROTOCOL_VERSION): Promise<{ hello: HelloFrame; frames: Frame[] }> {
    const hello: HelloFrame = { type: 'hello', protocolVersion, server, role, clientNonce: newNonce(), agentVersion: 'barman-ts-test/raw' };
    this.send(hello);
    const first = await this.nextFrame();
    if (first.type !== 'challenge') return { hello, frames: [first] };
    // the proof binds the hello as sent (server, role, versions) and both nonces
    this.send({ type: 'auth', proof: computeProof(token, 'agent', { ...hello, serverNonce: first.serverNonce }) });
    return { hello, frames: [first, await this.nextFrame()] };
  }

  send(frame: Frame): void {
    this.ws.send(encodeFrame(frame), { binary: true });
  }

  /** Sends bytes (a binary message) or a string (a text message) as they are. */
  sendRaw(data: Buffer | string): void {
    this.ws.send(data, { binary: typeof data !== 'string' });
  }

  /**
   * Sends `data` as the first fragment of a binary message that never ends (fin not set): the
   * receiver has to hold it until the rest arrives. Resolves once written, or the connection failed.
   */
  sendUnfinished(data: Buffer): Promise<void> {
    return new Promise((resolve) => this.ws.send(data, { binary: true, fin: false }, () => resolve()));
  }

  /** Stops reading from the socket: the receiver's frames, and its close, go unanswered. */
  stopReading(): void {
    this.ws.pause();
  }

  /** The next frame received; throws if the connection closes first or nothing comes within the bound. */
  async nextFrame(timeoutMs = 30_000): Promise<Frame> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const frame = this.inbox.shift();
      if (frame) return frame;
      if (this.undecodable) throw new Error(`the receiver sent an undecodable message: ${this.undecodable.message}`);
      if (this.closeInfo) throw new ClosedError(this.closeInfo);
      if (Date.now() >= deadline) throw new Error(`no frame from the receiver within ${timeoutMs / 1000} s`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /**
   * Sends `get` and collects the answer: the file's bytes (file → chunk* → end), or the error
   * frame the receiver answered with.
   */
  async get(id: number, name: string): Promise<{ bytes: Buffer; sha256: string } | ErrorFrame> {
    this.send({ type: 'get', id, name });
    const chunks: Buffer[] = [];
    for (;;) {
      const frame = await this.nextFrame();
      if ('id' in frame && frame.id !== id) throw new Error(`answer for request ${frame.id} while waiting for ${id}`);
      if (frame.type === 'error') return frame;
      if (frame.type === 'chunk') chunks.push(Buffer.from(frame.data));
      else if (frame.type === 'end') return { bytes: Buffer.concat(chunks), sha256: frame.sha256 ?? '' };
      else if (frame.type !== 'file') throw new Error(`unexpected ${frame.type} frame in answer to get`);
    }
  }

  /** Frames received so far and not yet taken with nextFrame. */
  pending(): Frame[] {
    return [...this.inbox];
  }

  get isOpen(): boolean {
    return this.ws.readyState === WebSocket.OPEN;
  }

  close(): void {
    this.ws.close();
  }

  terminate(): void {
    this.ws.terminate();
  }
}

export class ClosedError extends Error {
  constructor(readonly info: CloseInfo) {
    super(`connection closed (${info.code}${info.reason ? `: ${info.reason}` : ''})`);
  }
}
