// One writer per server catalog. `serve` holds the lock of every server it serves for as long as
// it runs; keep, delete and cron hold it while they change a catalog (or, while a serve holds it,
// ask that serve to make the change: receiver/commands/catalog-change.ts). Two receivers on one
// barman_home would otherwise both acknowledge different bytes under one WAL name.
//
// The catalog asks a CatalogLocker for the lock; a storage driver brings its own (an object store
// a lease object with an expiry). The posix one below needs no flock, which Node lacks:
// - a Unix socket bound in Linux's abstract namespace, named after the catalog's real path, is the
//   lock itself on this host: binding is atomic, only one process can hold the name, and the
//   kernel frees it the moment the holder dies, kill -9 included;
// - <catalog>/catalog.lock says who holds it (pid, host, what for, since when, and the process's
//   start time and the boot ID, so that a reused PID or a reboot is not mistaken for the holder).
//   It names the holder in the refusal, and catches a holder the socket cannot see: another host
//   sharing barman_home (taken as alive: a PID there cannot be checked) or the same directory
//   reached through another path (a live PID with the same start time).
// A lock file left by a dead holder on this host is simply taken over.

import { createHash, randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { hostname } from 'node:os';
import { dirname } from 'node:path';
import { BarmanError, ErrorCode } from '../../shared/errors';
import { fsyncDir } from '../../shared/durable';
import { ownerOfThisProcess } from '../storage/lease';
import type { Storage } from '../storage/storage';

/** What a holder uses the catalog for: serve for its whole life, the others for one change. */
export type LockPurpose = 'serve' | 'keep' | 'delete' | 'cron' | 'drill';

export interface LockHolder {
  pid: number;
  host: string;
  purpose: LockPurpose;
  /** ISO 8601 */
  since: string;
  /** the process's start time, field 22 of /proc/<pid>/stat (clock ticks since boot) */
  startTicks?: string;
  /** /proc/sys/kernel/random/boot_id when it took the lock */
  bootId?: string;
}

export interface CatalogLock {
  readonly holder: LockHolder;
  release(): Promise<void>;
  /**
   * `onLost` hears, once, that the lock is no longer this process's (a lease that could not be
   * renewed in time, or was taken over): from then on it must not write the catalog. A lock that
   * cannot be lost while its process lives (posix) never calls it.
   */
  watch(onLost: (err: BarmanError) => void): void;
}

/** Takes a catalog's lock; refuses with CatalogLockedError while another live process holds it. */
export interface CatalogLocker {
  acquire(purpose: LockPurpose): Promise<CatalogLock>;
}

/** The refusal: the catalog is held, by `holder` when known. */
export class CatalogLockedError extends BarmanError {
  /** `expiresAt`: when a lease on object storage lapses unless renewed (a dead holder's can be taken over then) */
  constructor(readonly server: string, readonly holder: LockHolder | undefined, lockPath: string, expiresAt?: string) {
    const who = holder ? `barman-receiver ${holder.purpose} (pid ${holder.pid} on host ${holder.host}, since ${holder.since})` : 'another barman-receiver process on this host';
    const sameHost = !holder || holder.host === hostname();
    const gone = expiresAt ? ` If that process is gone, its lease lapses at ${expiresAt}; start this one again after that.` : ` If that process is gone, remove ${lockPath}.`;
    super(
      ErrorCode.CATALOG_LOCKED,
      `the catalog of server ${server} is in use by ${who}; one writer per catalog`,
      holder?.purpose === 'serve' || !holder
        ? `Stop the other receiver first${holder ? ` (kill ${holder.pid}${sameHost ? '' : ` on ${holder.host}`})` : ''}, or give this one its own ${expiresAt ? 's3_prefix' : 'barman_home'}.${sameHost && !expiresAt ? '' : gone}`
        : `Wait for that command to finish and run this again.${sameHost && !expiresAt ? '' : gone}`,
    );
    this.name = 'CatalogLockedError';
  }
}

async function readHolder(path: string): Promise<LockHolder | undefined> {
  let text: string;
  try {
    text = await fs.readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  try {
    const h = JSON.parse(text) as LockHolder;
    if (typeof h.pid === 'number' && typeof h.host === 'string') return h;
  } catch {
    // not ours to read: treated like a holder that is gone
  }
  return { pid: 0, host: hostname(), purpose: 'serve', since: '?' };
}

async function readProc(path: string): Promise<string | undefined> {
  return fs.readFile(path, 'utf8').then((t) => t.trim(), () => undefined);
}

/** State and start time of a process, from /proc/<pid>/stat (the command name may hold spaces and parentheses). */
async function processStat(pid: number): Promise<{ state: string; startTicks: string } | undefined> {
  const stat = await readProc(`/proc/${pid}/stat`);
  if (!stat) return undefined;
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { state: fields[0]!, startTicks: fields[19]! };
}

/** Could `holder` still be holding the catalog? Only a process on this host can be checked. */
async function isAlive(holder: LockHolder): Promise<boolean> {
  if (holder.host !== hostname()) return true;
  if (holder.pid <= 0) return false;
  if (holder.bootId && holder.bootId !== (await readProc('/proc/sys/kernel/random/boot_id'))) return false;
  const stat = await processStat(holder.pid);
  // gone, dead but not yet reaped (a zombie keeps its PID, not its locks), or the PID reused
  if (!stat || stat.state === 'Z' || stat.state === 'X') return false;
  return holder.startTicks === undefined || holder.startTicks === stat.startTicks;
}

/** Binds the abstract socket that is the lock on this host; false when another process holds it. */
function bindLockSocket(name: string): Promise<Server | undefined> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', (err: NodeJS.ErrnoException) => (err.code === 'EADDRINUSE' ? resolve(undefined) : reject(err)));
    server.listen(name, () => {
      server.removeAllListeners('error');
      server.on('connection', (socket) => socket.destroy());
      server.unref();
      resolve(server);
    });
  });
}

export class PosixCatalogLocker implements CatalogLocker {
  constructor(private readonly server: string, private readonly root: string, private readonly lockPath: string) {}

  async acquire(purpose: LockPurpose): Promise<CatalogLock> {
    await fs.mkdir(this.root, { recursive: true, mode: 0o750 });
    const real = await fs.realpath(this.root);
    const socket = await bindLockSocket(`\0barman-ts/catalog/${createHash('sha256').update(real).digest('hex').slice(0, 40)}`);
    if (!socket) throw new CatalogLockedError(this.server, await readHolder(this.lockPath).catch(() => undefined), this.lockPath);
    try {
      const me: LockHolder = {
        pid: process.pid,
        host: hostname(),
        purpose,
        since: new Date().toISOString(),
        startTicks: (await processStat(process.pid))?.startTicks,
        bootId: await readProc('/proc/sys/kernel/random/boot_id'),
      };
      await this.writeHolder(me);
      return {
        holder: me,
        release: async () => {
          const now = await readHolder(this.lockPath).catch(() => undefined);
          if (now?.pid === me.pid && now.since === me.since) {
            await fs.rm(this.lockPath, { force: true });
            await fsyncDir(dirname(this.lockPath));
          }
          await new Promise<void>((resolve) => socket.close(() => resolve()));
        },
        watch: () => undefined,
      };
    } catch (err) {
      socket.close();
      throw err;
    }
  }

  /** Records `me` as the holder: created only where none is, or over one that is gone. */
  private async writeHolder(me: LockHolder): Promise<void> {
    const tmp = `${this.lockPath}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
    const fh = await fs.open(tmp, 'wx', 0o644);
    try {
      await fh.writeFile(JSON.stringify(me) + '\n');
      await fh.sync();
    } finally {
      await fh.close();
    }
    try {
      for (let attempt = 0; ; attempt++) {
        const existing = await readHolder(this.lockPath);
        if (existing && (await isAlive(existing))) throw new CatalogLockedError(this.server, existing, this.lockPath);
        if (existing) {
          await fs.rename(tmp, this.lockPath);
          break;
        }
        try {
          // link, not rename: fails if another process created the file meanwhile
          await fs.link(tmp, this.lockPath);
          break;
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || attempt >= 2) throw err;
        }
      }
      await fsyncDir(dirname(this.lockPath));
    } finally {
      await fs.rm(tmp, { force: true });
    }
  }
}

/** how long a lease on object storage lives without renewal; renewed every third of it */
export const LEASE_TTL_MS = 30_000;

/**
 * The lock on object storage: a lease under the catalog (receiver/storage/lease.ts), so two
 * receivers on different hosts pointed at one bucket and prefix cannot both write a server's
 * catalog. A holder that dies leaves a lease that expires after LEASE_TTL_MS; the next receiver
 * then takes it over. Clocks of the receivers must agree (NTP) to well within that.
 */
export class LeaseCatalogLocker implements CatalogLocker {
  constructor(private readonly server: string, private readonly storage: Storage, private readonly key: string, private readonly ttlMs = LEASE_TTL_MS) {}

  async acquire(purpose: LockPurpose): Promise<CatalogLock> {
    // the purpose travels in the owner's id, so a refusal can name what holds the catalog
    const owner = ownerOfThisProcess(`${purpose}.${randomBytes(8).toString('hex')}`);
    let lease;
    try {
      lease = await this.storage.acquireLease(this.key, owner, this.ttlMs);
    } catch (err) {
      if (err instanceof BarmanError && err.code === ErrorCode.LEASE_HELD) {
        const record = await this.storage.readLease(this.key).catch(() => undefined);
        const holder: LockHolder | undefined = record && { pid: record.owner.pid, host: record.owner.host, purpose: purposeOf(record.owner.id), since: record.acquiredAt };
        throw new CatalogLockedError(this.server, holder, `${this.key} in ${this.storage.location}`, record?.expiresAt);
      }
      throw err;
    }
    const holder: LockHolder = { pid: process.pid, host: hostname(), purpose, since: lease.record.acquiredAt };
    return {
      holder,
      release: () => lease.release(),
      watch: (onLost) => lease.keepAlive(onLost),
    };
  }
}

function purposeOf(ownerId: string): LockPurpose {
  const p = ownerId.split('.')[0];
  return p === 'keep' || p === 'delete' || p === 'cron' || p === 'drill' ? p : 'serve';
}
