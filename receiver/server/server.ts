// The receiver's network service: an HTTP(S) server that upgrades to WebSocket, one Session per
// connection. Frames are capped at MAX_FRAME_BYTES by ws itself, per-message deflate is off (we
// choose compression per file), connections that have not authenticated are held to much less
// by Admission, and SIGTERM drains: no new sessions, files still arriving finish, the rest close.
// Plain HTTP requests get GET /metrics and /healthz (metrics.ts) here, or on metrics_listen when
// that is set; the service also runs housekeeping and scheduled restore drills (housekeeping.ts).

import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { WebSocketServer } from 'ws';
import type { Logger } from 'pino';
import type { ReceiverConfig } from '../../shared/config/receiver';
import { BarmanError, ErrorCode } from '../../shared/errors';
import { CloseCode, FrameConnection } from '../../shared/protocol/connection';
import { MAX_FRAME_BYTES } from '../../shared/protocol/frames';
import { Turns } from '../../shared/turns';
import { Admission } from './admission';
import { type CatalogLock, CatalogLockedError } from '../catalog/lock';
import { openCatalogStorage } from '../catalog/open';
import type { Storage } from '../storage/storage';
import { ServerContext } from './context';
import { Session } from './session';
import { drillBackup } from '../drill/drill';
import { Housekeeping } from './housekeeping';
import { ReceiverMetrics } from './metrics';

/** how long a stopping service waits for peers to answer its close before cutting them off (ws alone waits 30 s) */
const CLOSE_WAIT_MS = 2000;

/** how long a stopping service waits for a restore drill to stop its copy and clean up */
const DRILL_STOP_WAIT_MS = 10_000;

/** how long serve waits at start-up for a command (keep, delete, cron) that holds a catalog */
const COMMAND_LOCK_WAIT_MS = 60_000;

export class ReceiverService {
  private readonly servers = new Map<string, ServerContext>();
  private http: Server | undefined;
  private wss: WebSocketServer | undefined;
  private readonly sessions = new Map<FrameConnection, Session>();
  private readonly admission: Admission;
  /** the catalog lock of every server served, held from start to stop: one writer per catalog */
  private readonly locks: Array<{ ctx: ServerContext; lock: CatalogLock }> = [];
  /** made at start, with the servers' contexts (they need the storage open) */
  private metrics!: ReceiverMetrics;
  private housekeeping!: Housekeeping;
  /** GET /metrics and /healthz on metrics_listen, when set */
  private metricsHttp: Server | undefined;
  /** restore drills run one at a time across servers (each is a whole restore); stopped with the service */
  private readonly drills = new Turns();
  private readonly drillAbort = new AbortController();

  /** the catalog's storage, opened at start */
  private storage: Storage | undefined;

  constructor(readonly config: ReceiverConfig, private readonly log: Logger) {
    this.admission = new Admission(log);
  }

  async start(): Promise<AddressInfo> {
    try {
      const storage = await openCatalogStorage(this.config);
      this.storage = storage;
      // a missing bucket, refused credentials or an unreachable endpoint stop the start, with their hint
      await storage.check();
      this.makeContexts(storage);
      for (const ctx of this.servers.values()) {
        const lock = await this.lockCatalog(ctx);
        this.locks.push({ ctx, lock });
        // fail closed: a receiver that lost its lease writes nothing more for that server
        lock.watch((err) => ctx.fence(err));
        await ctx.openForChanges();
      }
      return await this.open();
    } catch (err) {
      await this.releaseLocks();
      await this.storage?.close().catch(() => undefined);
      throw err;
    }
  }

  /** Each server's context on the catalog's storage, with its drills, metrics and housekeeping. */
  private makeContexts(storage: Storage): void {
    const { config, log } = this;
    for (const server of config.servers.values()) {
      const ctx = new ServerContext(storage, config, server, log);
      ctx.drillRunner = (options) => this.drills.run(() => drillBackup(config, server.name, { ...options, signal: this.drillAbort.signal, log }));
      this.servers.set(server.name, ctx);
    }
    const contexts = [...this.servers.values()];
    this.metrics = new ReceiverMetrics(contexts, log);
    this.housekeeping = new Housekeeping(contexts, config.housekeepingIntervalSeconds * 1000, log);
  }

  /** With every catalog locked: tidies them up after a stop, then listens. */
  private async open(): Promise<AddressInfo> {
    for (const ctx of this.servers.values()) {
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
    await this.metrics.start();
    const metricsHere = !this.config.metricsListen;
    http.on('request', (req, res) => void this.answerHttp(req, res, metricsHere));
    http.on('connection', (socket) => this.admission.accept(socket));
    await listenOn(http, this.config.listen, 'listen');
    if (this.config.metricsListen) {
      const metricsHttp = tls ? createHttpsServer({ cert: readFileSync(tls.cert), key: readFileSync(tls.key) }) : createHttpServer();
      metricsHttp.on('request', (req, res) => void this.answerHttp(req, res, true));
      try {
        await listenOn(metricsHttp, this.config.metricsListen, 'metrics_listen');
      } catch (err) {
        http.close();
        throw err;
      }
      this.metricsHttp = metricsHttp;
    }
    this.housekeeping.start();
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
    const metricsAddress = this.metricsHttp?.address() as AddressInfo | undefined;
    this.log.info({ address: address.address, port: address.port, tls: Boolean(tls), servers: [...this.servers.keys()], metrics: metricsAddress ? `${metricsAddress.address}:${metricsAddress.port}` : 'on listen' }, 'receiver listening');
    return address;
  }

  /**
   * A plain HTTP(S) request: GET /metrics and /healthz where metrics are served (`metrics`), and
   * on the WebSocket port otherwise a 426 saying what the port speaks.
   */
  private async answerHttp(req: IncomingMessage, res: ServerResponse, metrics: boolean): Promise<void> {
    const path = (req.url ?? '').split('?')[0];
    const read = req.method === 'GET' || req.method === 'HEAD';
    // on the WebSocket port a plain HTTP connection is one request long: it is not an agent, and
    // Admission would cut an idle one anyway (a scraper then reconnects cleanly each time)
    const headers = (type: string) => ({ 'content-type': type, ...(this.config.metricsListen ? {} : { connection: 'close' }) });
    try {
      if (metrics && read && path === '/metrics') {
        const body = await this.metrics.render();
        res.writeHead(200, headers(this.metrics.contentType)).end(req.method === 'HEAD' ? undefined : body);
      } else if (metrics && read && path === '/healthz') {
        const serving = this.http !== undefined;
        res.writeHead(serving ? 200 : 503, headers('text/plain')).end(serving ? 'ok\n' : 'stopping\n');
      } else if (metrics && this.config.metricsListen) {
        res.writeHead(404, headers('text/plain')).end('barman-receiver serves GET /metrics and GET /healthz here\n');
      } else {
        res.writeHead(426, headers('text/plain')).end(`barman-receiver speaks WebSocket only${metrics ? ' (and GET /metrics, /healthz)' : ''}\n`);
      }
    } catch (err) {
      this.log.error({ err: String(err) }, 'cannot answer a metrics request');
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
      res.end('metrics are not available: see the receiver log\n');
    }
  }

  /**
   * Takes a server's catalog lock before touching the catalog (a second serve would otherwise fail
   * the first one's running backup and interleave its writes). Another serve holding it is a
   * refusal at once; a command (keep, delete, cron) holding it is waited for a while.
   */
  private async lockCatalog(ctx: ServerContext): Promise<CatalogLock> {
    const deadline = Date.now() + COMMAND_LOCK_WAIT_MS;
    for (;;) {
      try {
        return await ctx.catalog.locker().acquire('serve');
      } catch (err) {
        if (!(err instanceof CatalogLockedError) || err.holder?.purpose === 'serve' || Date.now() > deadline) throw err;
        this.log.info({ server: ctx.config.name, holder: err.holder }, 'waiting for a command that holds the catalog');
        await new Promise((r) => setTimeout(r, 250));
      }
    }
  }

  private async releaseLocks(): Promise<void> {
    for (const { ctx, lock } of this.locks.splice(0)) {
      await ctx.closeForChanges().catch(() => undefined);
      await lock.release().catch((err: unknown) => this.log.warn({ server: ctx.config.name, err: String(err) }, 'releasing a catalog lock failed'));
    }
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
    // a drill in progress is stopped (its copy shut down, its scratch directory removed), not recorded
    this.drillAbort.abort();
    const housekeepingDone = this.housekeeping.stop();
    this.metrics.stop();
    this.metricsHttp?.closeAllConnections?.();
    this.metricsHttp?.close();
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
    // a drill still restoring is not waited for long: what it leaves, the next drill removes
    await Promise.race([Promise.all([housekeepingDone, this.drills.idle()]), new Promise((r) => setTimeout(r, DRILL_STOP_WAIT_MS).unref())]);
    await this.releaseLocks();
    await this.storage?.close().catch(() => undefined);
    this.log.info('receiver stopped');
  }
}

/** Listens on host:port; a port in use or an address that is not ours is a configuration error naming `key`. */
async function listenOn(server: Server, at: { host: string; port: number }, key: string): Promise<void> {
  const { host, port } = at;
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(new BarmanError(ErrorCode.CONFIG_INVALID, `cannot listen on ${host}:${port} (${err.code ?? err.message})`, err.code === 'EADDRINUSE' ? `Another process uses that port (another barman-receiver serve?): stop it or change ${key} = in [barman].` : `Check ${key} = in [barman].`, { cause: err })),
    );
    server.listen(port, host, () => resolve());
  });
}
