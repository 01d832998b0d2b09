// The receiver's network service: an HTTP(S) server that upgrades to WebSocket, one Session per
// connection. Frames are capped at MAX_FRAME_BYTES by ws itself, per-message deflate is off (we
// choose compression per file), connections that have not authenticated are held to much less
// by Admission, and SIGTERM drains: no new sessions, files still arriving finish, the rest close.

import { createServer as createHttpServer, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { WebSocketServer } from 'ws';
import type { Logger } from 'pino';
import type { ReceiverConfig } from '../../shared/config/receiver';
import { BarmanError, ErrorCode } from '../../shared/errors';
import { CloseCode, FrameConnection } from '../../shared/protocol/connection';
import { MAX_FRAME_BYTES } from '../../shared/protocol/frames';
import { Admission } from './admission';
import { ServerContext } from './context';
import { Session } from './session';

/** how long a stopping service waits for peers to answer its close before cutting them off (ws alone waits 30 s) */
const CLOSE_WAIT_MS = 2000;

export class ReceiverService {
  private readonly servers = new Map<string, ServerContext>();
  private http: Server | undefined;
  private wss: WebSocketServer | undefined;
  private readonly sessions = new Map<FrameConnection, Session>();
  private readonly admission: Admission;

  constructor(readonly config: ReceiverConfig, private readonly log: Logger) {
    this.admission = new Admission(log);
    for (const server of config.servers.values()) this.servers.set(server.name, new ServerContext(config.barmanHome, server, config.compression, log));
  }

  async start(): Promise<AddressInfo> {
    for (const ctx of this.servers.values()) {
      await ctx.catalog.ensureLayout();
      const failed = await ctx.backups.failInterrupted();
      if (failed.length) this.log.warn({ server: ctx.config.name, backups: failed }, 'backups interrupted by a receiver stop marked FAILED');
      await ctx.walStored();
    }
    const tls = this.config.tls;
    let http: Server;
    try {
      http = tls ? createHttpsServer({ cert: readFileSync(tls.cert), key: readFileSync(tls.key) }) : createHttpServer();
    } catch (err) {
      throw new BarmanError(ErrorCode.CONFIG_INVALID, `${this.config.file}: cannot load tls_cert/tls_key (${(err as Error).message})`, 'Point tls_cert and tls_key at a readable PEM certificate and its key.', { cause: err });
    }
    http.on('request', (_req, res) => {
      res.writeHead(426, { 'content-type': 'text/plain' }).end('barman-receiver speaks WebSocket only\n');
    });
    http.on('connection', (socket) => this.admission.accept(socket));
    const { host, port } = this.config.listen;
    await new Promise<void>((resolve, reject) => {
      http.once('error', (err: NodeJS.ErrnoException) =>
        reject(new BarmanError(ErrorCode.CONFIG_INVALID, `cannot listen on ${host}:${port} (${err.code ?? err.message})`, err.code === 'EADDRINUSE' ? 'Another process uses that port (another barman-receiver serve?): stop it or change listen = in [barman].' : 'Check listen = in [barman].', { cause: err })),
      );
      http.listen(port, host, () => resolve());
    });
    // made once listening: ws re-emits the HTTP server's errors on itself, and a listen error
    // (EADDRINUSE) would otherwise escape as an unhandled 'error' event instead of the one above
    const wss = new WebSocketServer({ server: http, maxPayload: MAX_FRAME_BYTES, perMessageDeflate: false, clientTracking: false });
    wss.on('error', (err) => this.log.error({ err: err.message }, 'network service error'));
    wss.on('connection', (ws, req) => {
      this.admission.upgraded(req.socket);
      const conn = new FrameConnection(ws);
      const session = new Session(conn, (name) => this.servers.get(name), this.log, `${req.socket.remoteAddress}:${req.socket.remotePort}`, {
        idleMs: this.config.timeoutSeconds * 1000,
        onAuthenticated: () => this.admission.authenticated(req.socket),
      });
      this.sessions.set(conn, session);
      conn.onClose(() => this.sessions.delete(conn));
    });
    this.http = http;
    this.wss = wss;
    const address = http.address() as AddressInfo;
    this.log.info({ address: address.address, port: address.port, tls: Boolean(tls), servers: [...this.servers.keys()] }, 'receiver listening');
    return address;
  }

  /**
   * Stops accepting, lets files still arriving finish for up to `graceMs`, then closes what is
   * left; a peer that does not answer the close within CLOSE_WAIT_MS is cut off.
   */
  async stop(graceMs = 10_000): Promise<void> {
    const http = this.http;
    if (!http) return;
    this.http = undefined;
    const closed = new Promise<void>((resolve) => http.close(() => resolve()));
    const sleep = () => new Promise((r) => setTimeout(r, 50));
    this.admission.dropAll();
    // let files being received finish (their senders get their acks), then close every session;
    // agents retry or reconnect, and nothing half-received is ever under a final name anyway. A
    // sender that has gone silent does not hold the stop up.
    const deadline = Date.now() + graceMs;
    while ([...this.sessions.values()].some((s) => s.draining) && Date.now() < deadline) await sleep();
    for (const conn of this.sessions.keys()) conn.close(CloseCode.SHUTDOWN, 'receiver shutting down');
    const closeDeadline = Date.now() + CLOSE_WAIT_MS;
    while (this.sessions.size > 0 && Date.now() < closeDeadline) await sleep();
    for (const conn of this.sessions.keys()) conn.terminate();
    for (const ctx of this.servers.values()) await ctx.stream.close();
    this.wss?.close();
    http.closeAllConnections?.();
    await closed;
    this.log.info('receiver stopped');
  }
}
