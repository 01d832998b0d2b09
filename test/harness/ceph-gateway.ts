// A real S3 endpoint for tests and benchmarks: a throw-away single-node Ceph cluster (one
// monitor, one OSD on memstore, one RADOS Gateway) in a folder it is given, on loopback ports it
// is given, started without systemd and stopped by PID. The gateway alone can be killed and
// started again (the data stays in the OSD's memory), which is how tests make "the object store
// went away in the middle of an upload". Needs Debian's ceph-mon, ceph-osd and radosgw (.ci/run
// installs them). Free of the test runner, so bench/ starts it too; tests use ceph.ts.

import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import type { StorageConfig } from '../../shared/config/receiver';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, openSync, closeSync, readFileSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { track, untrack } from './resources';
import { waitFor } from './wait';

const execFileAsync = promisify(execFile);

export const CEPH_PROGRAMS = ['ceph-mon', 'ceph-osd', 'radosgw', 'radosgw-admin', 'ceph-authtool', 'monmaptool', 'ceph'];

/** Whether this machine has the Ceph programs (a test that needs them says so instead of failing obscurely). */
export function cephInstalled(): boolean {
  return CEPH_PROGRAMS.every((p) => ['/usr/bin', '/usr/sbin', '/bin'].some((d) => existsSync(join(d, p))));
}

export interface S3Credentials {
  accessKeyId: string;
  secretAccessKey: string;
}

interface Daemon {
  name: string;
  child: ChildProcess;
  exited: Promise<void>;
}

/** Is the process gone (or a zombie nobody reaped yet)? kill -0 succeeds on zombies, /proc tells. */
function processGone(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // the state follows the command name, which is in parentheses and may contain spaces
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}

export class CephGateway {
  readonly endpoint: string;
  readonly credentials: S3Credentials;
  private readonly daemons = new Map<string, Daemon>();
  private readonly conf: string;
  private readonly logDir: string;

  private constructor(readonly dir: string, private readonly monPort: number, readonly port: number, private readonly env: Record<string, string>) {
    this.endpoint = `http://127.0.0.1:${port}`;
    this.conf = join(dir, 'ceph.conf');
    this.logDir = join(dir, 'log');
    this.credentials = { accessKeyId: `BARMAN${randomBytes(7).toString('hex').toUpperCase()}`, secretAccessKey: randomBytes(20).toString('base64url') };
    const resource = track({
      what: `Ceph RADOS Gateway ${this.endpoint} (${dir})`,
      dispose: () => this.stop(),
      killNow: () => {
        for (const d of this.daemons.values()) d.child.kill('SIGKILL');
      },
    });
    this.untrackMe = () => untrack(resource);
  }

  private readonly untrackMe: () => void;

  /**
   * Bootstraps monitor, OSD and gateway in `dir` (an empty folder) on loopback ports `ports`, the
   * programs run with environment `env`; resolves once a signed S3 request can be made.
   */
  static async start(dir: string, ports: { mon: number; gateway: number }, env: Record<string, string>): Promise<CephGateway> {
    const gw = new CephGateway(dir, ports.mon, ports.gateway, env);
    try {
      await gw.bootstrap();
    } catch (err) {
      const tail = gw.logTails();
      await gw.stop();
      throw new Error(`Ceph did not start: ${(err as Error).message}\n${tail}`, { cause: err });
    }
    return gw;
  }

  private async bootstrap(): Promise<void> {
    const { dir } = this;
    for (const sub of ['run', 'log', 'mon', 'osd', 'rgw', 'crash']) mkdirSync(join(dir, sub), { recursive: true });
    const fsid = randomUUID();
    const keyring = join(dir, 'keyring');
    writeFileSync(this.conf, cephConf({ dir, fsid, monPort: this.monPort, rgwPort: this.port, keyring }));
    const tool = async (prog: string, args: string[]) => {
      try {
        await execFileAsync(prog, args, { cwd: dir, env: this.env, timeout: 60_000 });
      } catch (err) {
        const e = err as { stderr?: string; stdout?: string; message: string };
        throw new Error(`${prog} ${args.join(' ')} failed: ${e.message}\n${e.stderr ?? ''}${e.stdout ?? ''}`, { cause: err });
      }
    };

    await tool('ceph-authtool', ['--create-keyring', keyring, '--gen-key', '-n', 'mon.', '--cap', 'mon', 'allow *']);
    const caps: Record<string, string[]> = {
      'client.admin': ['--cap', 'mon', 'allow *', '--cap', 'osd', 'allow *', '--cap', 'mgr', 'allow *'],
      'osd.0': ['--cap', 'mon', 'allow profile osd', '--cap', 'osd', 'allow *'],
      'client.rgw.0': ['--cap', 'mon', 'allow rw', '--cap', 'osd', 'allow rwx'],
    };
    for (const [name, cap] of Object.entries(caps)) await tool('ceph-authtool', [keyring, '--gen-key', '-n', name, ...cap]);
    const monmap = join(dir, 'monmap');
    await tool('monmaptool', ['--create', '--fsid', fsid, '--addv', 'a', `[v2:127.0.0.1:${this.monPort}]`, monmap]);
    await tool('ceph-mon', ['-c', this.conf, '--mkfs', '-i', 'a', '--monmap', monmap, '--keyring', keyring]);
    this.spawnDaemon('mon.a', 'ceph-mon', ['-f', '-c', this.conf, '-i', 'a']);

    const osdUuid = randomUUID();
    await tool('ceph-osd', ['-c', this.conf, '-i', '0', '--mkfs', '--osd-uuid', osdUuid]);
    // also the wait for the monitor: the command retries until it reaches it
    await tool('ceph', ['-c', this.conf, '--connect-timeout', '30', 'osd', 'new', osdUuid, '0']);
    this.spawnDaemon('osd.0', 'ceph-osd', ['-f', '-c', this.conf, '-i', '0']);
    await this.startGateway();
    await tool('radosgw-admin', ['-c', this.conf, 'user', 'create', '--uid=barman', '--display-name=barman-ts tests', `--access-key=${this.credentials.accessKeyId}`, `--secret-key=${this.credentials.secretAccessKey}`]);
  }

  /** Starts the gateway (again) and waits until it answers HTTP. */
  async startGateway(): Promise<void> {
    if (this.daemons.has('client.rgw.0')) throw new Error('the gateway is already running');
    this.spawnDaemon('client.rgw.0', 'radosgw', ['-f', '-c', this.conf, '-n', 'client.rgw.0']);
    await waitFor(`radosgw answering on ${this.endpoint}`, () => this.answers(), { timeoutMs: 90_000, intervalMs: 100 });
  }

  /** Whether the gateway runs now (it was started and not killed). */
  async gatewayRunning(): Promise<boolean> {
    return this.daemons.has('client.rgw.0');
  }

  /** Kills the gateway (SIGKILL: a crash, not a shutdown) and waits until it is gone. */
  async killGateway(): Promise<void> {
    await this.killDaemon('client.rgw.0');
  }

  /**
   * An S3 client of the test's own, with the gateway's user (destroy it when done). The SDK's notice
   * that its later versions need Node 22 (printed once per process, by the first client made) is
   * switched off for this test process only: the variable is put back at once, so the programs a
   * test starts print what they would (the receiver switches it off itself).
   */
  client(): S3Client {
    const name = 'AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED';
    const was = process.env[name];
    process.env[name] = 'true';
    try {
      return new S3Client({ endpoint: this.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: this.credentials, requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED' });
    } finally {
      if (was === undefined) delete process.env[name];
      else process.env[name] = was;
    }
  }

  /** Creates a bucket with the gateway's user. */
  async createBucket(bucket: string): Promise<void> {
    const client = this.client();
    try {
      await client.send(new CreateBucketCommand({ Bucket: bucket }));
    } finally {
      client.destroy();
    }
  }

  /** The receiver's storage settings for a bucket and prefix on this gateway (what [barman] s3_* keys give). */
  storageConfig(bucket: string, prefix = '', credentials: S3Credentials = this.credentials): Extract<StorageConfig, { kind: 's3' }> {
    return { kind: 's3', endpoint: this.endpoint, bucket, region: 'us-east-1', prefix, forcePathStyle: true, credentials: { ...credentials }, ca: undefined };
  }

  /** An S3 credentials file in the AWS shared-credentials format, readable by its owner only. */
  writeCredentialsFile(path: string, credentials: S3Credentials = this.credentials): string {
    writeFileSync(path, `[default]\naws_access_key_id = ${credentials.accessKeyId}\naws_secret_access_key = ${credentials.secretAccessKey}\n`, { mode: 0o600 });
    return path;
  }

  async stop(): Promise<void> {
    for (const name of ['client.rgw.0', 'osd.0', 'mon.a']) await this.killDaemon(name);
    this.untrackMe();
  }

  private spawnDaemon(name: string, program: string, args: string[]): void {
    const log = openSync(join(this.logDir, `${name}.stdout`), 'a');
    const child = spawn(program, args, { cwd: this.dir, env: this.env, stdio: ['ignore', log, log] });
    closeSync(log);
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.once('error', () => undefined);
    this.daemons.set(name, { name, child, exited });
  }

  private async killDaemon(name: string): Promise<void> {
    const d = this.daemons.get(name);
    if (!d) return;
    this.daemons.delete(name);
    const pid = d.child.pid;
    if (pid !== undefined && !processGone(pid)) d.child.kill('SIGKILL');
    // reaped by Node's exit handler; a zombie would still answer kill -0
    await d.exited;
    if (pid !== undefined) await waitFor(`${name} (pid ${pid}) to be gone`, () => processGone(pid), { timeoutMs: 10_000, intervalMs: 20 });
  }

  private answers(): Promise<boolean> {
    for (const [name, d] of this.daemons) {
      if (d.child.exitCode !== null || d.child.signalCode !== null) throw new Error(`${name} exited (${d.child.exitCode ?? d.child.signalCode})`);
    }
    return new Promise((resolve) => {
      const req = request(`${this.endpoint}/`, { method: 'GET', timeout: 2000 }, (res) => {
        res.resume();
        resolve(res.statusCode !== undefined && res.statusCode < 500);
      });
      req.once('error', () => resolve(false));
      req.once('timeout', () => req.destroy());
      req.end();
    });
  }

  private logTails(): string {
    const out: string[] = [];
    for (const name of ['mon.a', 'osd.0', 'client.rgw.0']) {
      for (const file of [`${name}.log`, `${name}.stdout`]) {
        const p = join(this.logDir, file);
        if (!existsSync(p)) continue;
        const lines = readFileSync(p, 'utf8').trimEnd().split('\n');
        out.push(`--- ${file}\n${lines.slice(-15).join('\n')}`);
      }
    }
    return out.join('\n');
  }
}

function cephConf(o: { dir: string; fsid: string; monPort: number; rgwPort: number; keyring: string }): string {
  const { dir } = o;
  return `[global]
fsid = ${o.fsid}
mon host = [v2:127.0.0.1:${o.monPort}]
mon initial members = a
keyring = ${o.keyring}
run dir = ${dir}/run
admin socket = ${dir}/run/$name.asok
pid file = ${dir}/run/$name.pid
log file = ${dir}/log/$name.log
crash dir = ${dir}/crash
log to stderr = false
err to stderr = true
ms bind msgr1 = false
ms bind ipv6 = false
public addr = 127.0.0.1
auth allow insecure global id reclaim = false
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon warn on pool no redundancy = false
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon data avail crit = 0
mon data avail warn = 0
paxos propose interval = 0.05
mon osd full ratio = 0.99
mon osd nearfull ratio = 0.98
osd failsafe full ratio = 0.995

[mon.a]
mon data = ${dir}/mon

[osd.0]
osd data = ${dir}/osd
osd journal = ${dir}/osd/journal
osd objectstore = memstore
memstore device bytes = 3221225472

[client.rgw.0]
rgw frontends = beast endpoint=127.0.0.1:${o.rgwPort}
rgw data = ${dir}/rgw
rgw gc obj min wait = 30
rgw gc processor period = 30
`;
}
