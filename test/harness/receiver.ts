// A real barman-receiver service (`serve`) on a free port, with its own configuration, tokens and
// barman_home in a temp folder. It runs as root, as a service user would own its catalog.

import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { appendFileSync, chmodSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { freePort, makeDir, makeTempDir, type Owner, chownTo, productEnv, receiverBin } from './env';
import { listDir } from './fs';
import { track } from './resources';
import { waitFor } from './wait';

export interface ReceiverServerOptions {
  name: string;
  description?: string;
  /** the shared secret; a random one when omitted */
  token?: string;
  /** more keys of the server's section */
  extra?: Record<string, string>;
}

export interface ReceiverOptions {
  servers: ReceiverServerOptions[];
  /** PEM files; both set => wss:// */
  tls?: { cert: string; key: string };
  compression?: 'none' | 'gzip' | 'lz4' | 'zstd';
  logLevel?: string;
  /** more keys of [barman] */
  extra?: Record<string, string>;
}

export function newToken(): string {
  return randomBytes(32).toString('hex');
}

/** Writes a secret as a 0600 file owned by `owner` (postgres for the agent's copy). */
export function writeTokenFile(path: string, token: string, owner: Owner): string {
  writeFileSync(path, `${token}\n`, { mode: 0o600 });
  chmodSync(path, 0o600);
  chownTo(path, owner);
  return path;
}

export function iniText(sections: Array<[string, Record<string, string | number | undefined>]>): string {
  return sections
    .map(([name, values]) => [`[${name}]`, ...Object.entries(values).filter(([, v]) => v !== undefined).map(([k, v]) => `${k} = ${v}`)].join('\n'))
    .join('\n\n') + '\n';
}

export class Receiver {
  readonly host = '127.0.0.1';
  readonly barmanHome: string;
  readonly configPath: string;
  readonly tokens = new Map<string, string>();
  private child: ChildProcess | undefined;
  private exited: Promise<number | null> = Promise.resolve(null);
  private output = '';

  private constructor(readonly dir: string, readonly port: number, readonly options: ReceiverOptions) {
    this.barmanHome = join(dir, 'barman_home');
    this.configPath = join(dir, 'barman.conf');
    const tokenDir = makeDir(join(dir, 'tokens'), 'root', 0o700);
    const sections: Array<[string, Record<string, string | number | undefined>]> = [
      ['barman', { barman_home: this.barmanHome, listen: `${this.host}:${port}`, log_level: options.logLevel ?? 'info', compression: options.compression ?? 'none', tls_cert: options.tls?.cert, tls_key: options.tls?.key, ...options.extra }],
    ];
    for (const s of options.servers) {
      const token = s.token ?? newToken();
      this.tokens.set(s.name, token);
      const tokenFile = writeTokenFile(join(tokenDir, `${s.name}.token`), token, 'root');
      sections.push([s.name, { description: s.description ?? `${s.name} PostgreSQL server`, token_file: tokenFile, ...s.extra }]);
    }
    writeFileSync(this.configPath, iniText(sections), { mode: 0o644 });
    track({
      what: `receiver in ${dir}`,
      dispose: async () => {
        await this.kill();
      },
      killNow: () => this.child?.kill('SIGKILL'),
    });
  }

  static async start(options: ReceiverOptions): Promise<Receiver> {
    const dir = makeTempDir('receiver', 'root', 0o755);
    const receiver = new Receiver(dir, await freePort(), options);
    await receiver.start();
    return receiver;
  }

  get url(): string {
    return `${this.options.tls ? 'wss' : 'ws'}://${this.host}:${this.port}`;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Everything the service printed (pino JSON on stderr), across restarts; also in <dir>/receiver.log. */
  logs(): string {
    return this.output;
  }

  /** Starts `serve` and waits until the port accepts connections. */
  async start(): Promise<void> {
    if (this.running) throw new Error('receiver is already running');
    const child = spawn(process.execPath, [receiverBin(), 'serve', '-c', this.configPath], { cwd: this.dir, env: productEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    this.output += `--- serve started (pid ${child.pid})\n`;
    const logFile = join(this.dir, 'receiver.log');
    const record = (b: Buffer): void => {
      this.output += b.toString('utf8');
      appendFileSync(logFile, b);
    };
    child.stdout!.on('data', record);
    child.stderr!.on('data', record);
    this.exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
    let listening = false;
    const exitedEarly = this.exited.then((code) => {
      if (!listening) throw new Error(`receiver exited (${code ?? child.signalCode}) before it listened:\n${this.output}`);
    });
    exitedEarly.catch(() => undefined);
    try {
      await Promise.race([waitFor(`the receiver to listen on ${this.host}:${this.port}`, () => canConnect(this.host, this.port), { timeoutMs: 30_000, intervalMs: 50 }), exitedEarly]);
      listening = true;
    } catch (err) {
      child.kill('SIGKILL');
      throw new Error(`${(err as Error).message}\n${this.output}`);
    }
  }

  /** SIGTERM: the service drains and exits; resolves with its exit code. */
  async stop(): Promise<number | null> {
    return this.signal('SIGTERM');
  }

  /** SIGKILL: the service dies wherever it is, as in a crash. */
  async kill(): Promise<number | null> {
    return this.signal('SIGKILL');
  }

  /** Starts it again on the same port with the same configuration (after stop or kill). */
  async restart(): Promise<void> {
    if (this.running) await this.stop();
    await this.start();
  }

  private async signal(signal: NodeJS.Signals): Promise<number | null> {
    if (this.running) this.child!.kill(signal);
    return this.exited;
  }

  /** <barman_home>/<server>, spelled from docs/catalog.md (not from the catalog module it checks). */
  serverDir(server: string): string {
    return join(this.barmanHome, server);
  }

  /** Where docs/catalog.md puts an archived WAL file: segments below wals/<first 16 hex>/, others in wals/. */
  walPath(server: string, name: string): string {
    const wals = join(this.serverDir(server), 'wals');
    return /^[0-9A-F]{24}$/.test(name) ? join(wals, name.slice(0, 16), name) : join(wals, name);
  }

  /** Every archived segment file name of a server, sorted. */
  segments(server: string): string[] {
    const wals = join(this.serverDir(server), 'wals');
    return listDir(wals)
      .filter((d) => /^[0-9A-F]{16}$/.test(d))
      .flatMap((d) => listDir(join(wals, d)))
      .sort();
  }
}

function canConnect(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

export function startReceiver(options: ReceiverOptions): Promise<Receiver> {
  return Receiver.start(options);
}
