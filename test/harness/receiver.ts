// A real barman-receiver service (`serve`) on a free port, with its own configuration, tokens and
// barman_home in a temp folder. It runs as root, as a service user would own its catalog.

import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { appendFileSync, chmodSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { basename, join } from 'node:path';
import { freePort, makeDir, makeTempDir, type Owner, chownTo, productEnv, receiverBin } from './env';
import { hiddenFiles, listDir, plainSha256Of } from './fs';
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
  /** [barman] compression; the product's default (zstd) when omitted */
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

/**
 * A receiver configuration for commands run without a service of its own (the service it names
 * listens nowhere): barman_home in `dir`, one server with a throwaway token, more [barman] keys in
 * `extra`. Written as `dir/name`, readable by all; returns its path.
 */
export function commandsOnlyConfig(dir: string, name: string, extra: Record<string, string> = {}, server = 'main'): string {
  const path = join(dir, name);
  writeFileSync(path, iniText([['barman', { barman_home: join(dir, 'barman_home'), listen: '127.0.0.1:1', ...extra }], [server, { token: 'x'.repeat(32) }]]), { mode: 0o644 });
  return path;
}

export class Receiver {
  readonly host = '127.0.0.1';
  readonly barmanHome: string;
  readonly configPath: string;
  readonly tokens = new Map<string, string>();
  private child: ChildProcess | undefined;
  private exited: Promise<number | null> = Promise.resolve(null);
  private output = '';
  /** the configuration file's sections, as written */
  private readonly sections: Array<[string, Record<string, string | number | undefined>]>;
  private variants = 0;

  private constructor(readonly dir: string, readonly port: number, readonly options: ReceiverOptions) {
    this.barmanHome = join(dir, 'barman_home');
    this.configPath = join(dir, 'barman.conf');
    const tokenDir = makeDir(join(dir, 'tokens'), 'root', 0o700);
    const sections: Array<[string, Record<string, string | number | undefined>]> = [
      ['barman', { barman_home: this.barmanHome, listen: `${this.host}:${port}`, log_level: options.logLevel ?? 'info', compression: options.compression, tls_cert: options.tls?.cert, tls_key: options.tls?.key, ...options.extra }],
    ];
    for (const s of options.servers) {
      const token = s.token ?? newToken();
      this.tokens.set(s.name, token);
      const tokenFile = writeTokenFile(join(tokenDir, `${s.name}.token`), token, 'root');
      sections.push([s.name, { description: s.description ?? `${s.name} PostgreSQL server`, token_file: tokenFile, ...s.extra }]);
    }
    writeFileSync(this.configPath, iniText(sections), { mode: 0o644 });
    this.sections = sections;
    track({
      what: `receiver in ${dir}`,
      dispose: async () => {
        await this.kill();
      },
      killNow: () => this.child?.kill('SIGKILL'),
    });
  }

  static async start(options: ReceiverOptions): Promise<Receiver> {
    const receiver = await Receiver.create(options);
    await receiver.start();
    return receiver;
  }

  /** Its configuration and folders, not started yet (a test prepares barman_home first, then calls start()). */
  static async create(options: ReceiverOptions): Promise<Receiver> {
    const dir = makeTempDir('receiver', 'root', 0o755);
    return new Receiver(dir, await freePort(), options);
  }

  get url(): string {
    return `${this.options.tls ? 'wss' : 'ws'}://${this.host}:${this.port}`;
  }

  /** Where plain HTTP(S) requests reach the service on `listen` (GET /metrics, /healthz). */
  get httpUrl(): string {
    return `${this.options.tls ? 'https' : 'http'}://${this.host}:${this.port}`;
  }

  /**
   * Another configuration file for the same service and catalogs, with keys of some sections
   * changed (a command run with other thresholds, say); returns its path.
   */
  configVariant(changes: Record<string, Record<string, string | undefined>>): string {
    const path = join(this.dir, `barman-${++this.variants}.conf`);
    writeFileSync(path, iniText(this.sections.map(([name, values]) => [name, { ...values, ...changes[name] }])), { mode: 0o644 });
    return path;
  }

  /** Changes keys of some sections in the configuration file itself (read again at the next start). */
  rewriteConfig(changes: Record<string, Record<string, string | undefined>>): void {
    for (const [name, values] of this.sections) Object.assign(values, changes[name]);
    writeFileSync(this.configPath, iniText(this.sections), { mode: 0o644 });
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

  /**
   * The stored file of an archived WAL file, where docs/catalog.md puts it: segments (and .partial) below
   * wals/<first 16 hex>/, others in wals/, named <name>-<sha256 of the plain bytes>[.zst|.lz4|.gz].
   * When there is none, the path a copy stored without a checksum would have.
   */
  walPath(server: string, name: string): string {
    const wals = join(this.serverDir(server), 'wals');
    const dir = /^[0-9A-F]{24}(\.partial)?$/.test(name) ? join(wals, name.slice(0, 16)) : wals;
    const stored = listDir(dir).find((f) => storedName(f)?.name === name);
    return join(dir, stored ?? name);
  }

  /** The SHA-256 an archived WAL file's stored name records (undefined when it has none). */
  walChecksum(server: string, name: string): string | undefined {
    return storedName(basename(this.walPath(server, name)))?.sha256;
  }

  /** SHA-256 of the plain bytes of an archived WAL file (decompressed as its name says). */
  walSha256(server: string, name: string): string {
    return plainSha256Of(this.walPath(server, name));
  }

  /** A storage driver's temporary files anywhere in a server's catalog: none once every write ended. */
  tempFiles(server: string): string[] {
    return hiddenFiles(this.serverDir(server));
  }

  /** Every archived segment name of a server, sorted. */
  segments(server: string): string[] {
    const wals = join(this.serverDir(server), 'wals');
    return listDir(wals)
      .filter((d) => /^[0-9A-F]{16}$/.test(d))
      .flatMap((d) => listDir(join(wals, d)))
      .map((f) => storedName(f)?.name ?? f)
      .filter((n) => /^[0-9A-F]{24}$/.test(n))
      .sort();
  }
}

/** A stored WAL file's name: the WAL file it holds and the checksum recorded with it (SPEC §5). */
function storedName(file: string): { name: string; sha256: string | undefined } | undefined {
  const m = /^([0-9A-F]{24}(?:\.partial)?|[0-9A-F]{8}\.history|[0-9A-F]{24}\.[0-9A-F]{8}\.backup)(?:-([0-9a-f]{64}))?(?:\.gz|\.lz4|\.zst)?$/.exec(file);
  return m ? { name: m[1]!, sha256: m[2] } : undefined;
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
