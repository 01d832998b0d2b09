// The agent's record of what the receiver has durably acknowledged: spool_dir/acked/<name>, one
// line written by the daemon after the receiver fsynced the file and its checksum matched. It
// names the bytes it stands for, so that an answer taken from it can only be for those bytes:
//
//   barman-ack-1 server=<server> receiver=<url> name=<name> size=<bytes> dev=<st_dev> ino=<st_ino>
//     mtime=<s.ns> ctime=<s.ns> sysid=<system identifier, 16 hex> sha256=<what the receiver confirmed>
//
// (one line; fields in this order). dev, ino, size, mtime and ctime are what fstat said of the
// descriptor the daemon read, before the first byte and again after the receiver's answer; the
// daemon records nothing when they differ. A WAL file recycled by rename keeps its inode but gets
// a new name and ctime, and any write moves mtime and ctime, so the installed launcher
// (agent/launcher.sh) answers PostgreSQL's `push` from this line, in POSIX sh and without reading
// the 16 MB, when `stat` of the file PostgreSQL hands over prints the same five values, its page
// header names the same system identifier (and the segment its name says), and the configuration
// names the same server and receiver. Anything else goes to Node, which hashes the file and
// compares with sha256=, or pushes it in full. A segment the receiver got through streaming is
// recorded once the daemon has hashed its pg_wal copy and found the bytes the receiver confirmed.
//
// Beside the acks: `<name>.failed` (the daemon's push of it failed: PostgreSQL's push should not
// wait for it) and `.daemon` (the pid of a daemon connected to the receiver, its mtime refreshed
// while it is; the launcher waits for an ack only while that daemon lives).

import { promises as fs } from 'node:fs';
import type { BigIntStats } from 'node:fs';
import { join } from 'node:path';
import { makeDirs } from '../../shared/dirs';
import { BarmanError, ErrorCode } from '../../shared/errors';
import { parseWalFileName } from '../../shared/wal/names';

/** first word of every ack line (agent/launcher.sh spells it too) */
export const ACK_FORMAT = 'barman-ack-1';
/** the spool's folder below spool_dir (agent/launcher.sh spells it too, and DAEMON_FILE) */
export const ACK_DIR = 'acked';
/** the pid of the daemon while it is connected to the receiver */
export const DAEMON_FILE = '.daemon';
/** how often a connected daemon refreshes DAEMON_FILE (the launcher takes it for gone after 10 s) */
export const DAEMON_BEAT_MS = 2_000;

/** What fstat says of a file: the launcher compares these with `stat -L -c '%d %i %s %.9Y %.9Z'`. */
export interface FileIdentity {
  dev: string;
  ino: string;
  size: string;
  /** seconds.nanoseconds, as GNU stat's %.9Y prints it */
  mtime: string;
  ctime: string;
}

export interface Ack {
  server: string;
  /** the receiver's URL (URL.href) */
  receiver: string;
  name: string;
  size: number;
  identity: FileIdentity;
  /** 16 hex digits from the segment's page header; undefined for .history and .backup files */
  sysid?: string;
  sha256: string;
}

function seconds(ns: bigint): string {
  const s = ns / 1_000_000_000n;
  const frac = ns % 1_000_000_000n;
  return `${s}.${frac.toString().padStart(9, '0')}`;
}

export function identityOf(st: BigIntStats): FileIdentity {
  return { dev: String(st.dev), ino: String(st.ino), size: String(st.size), mtime: seconds(st.mtimeNs), ctime: seconds(st.ctimeNs) };
}

/** An identity as the ack and the prefetch spool's records spell it (agent/launcher.sh builds the same line from `stat`). */
export function formatIdentity(id: FileIdentity): string {
  return `size=${id.size} dev=${id.dev} ino=${id.ino} mtime=${id.mtime} ctime=${id.ctime}`;
}

export function sameIdentity(a: FileIdentity, b: FileIdentity): boolean {
  return a.dev === b.dev && a.ino === b.ino && a.size === b.size && a.mtime === b.mtime && a.ctime === b.ctime;
}

/** A system identifier (decimal, as PostgreSQL prints it) as the ack spells it: 16 hex digits. */
export function sysidHex(systemIdentifier: string): string {
  return BigInt(systemIdentifier).toString(16).padStart(16, '0');
}

export function formatAck(ack: Ack): string {
  return [
    ACK_FORMAT, `server=${ack.server}`, `receiver=${ack.receiver}`, `name=${ack.name}`, formatIdentity({ ...ack.identity, size: String(ack.size) }),
    `sysid=${ack.sysid ?? '-'}`, `sha256=${ack.sha256}`,
  ].join(' ') + '\n';
}

const ACK_LINE = new RegExp(
  `^${ACK_FORMAT} server=(\\S+) receiver=(\\S+) name=(\\S+) size=(\\d+) dev=(\\d+) ino=(\\d+) mtime=(\\d+\\.\\d{9}) ctime=(\\d+\\.\\d{9}) sysid=([0-9a-f]{16}|-) sha256=([0-9a-f]{64})\\n?$`,
);

/** Parses an ack line; undefined for anything else (another format, a torn write). */
export function parseAck(text: string): Ack | undefined {
  const m = ACK_LINE.exec(text);
  if (!m) return undefined;
  const [, server, receiver, name, size, dev, ino, mtime, ctime, sysid, sha256] = m as unknown as string[];
  const identity = { dev: dev!, ino: ino!, size: size!, mtime: mtime!, ctime: ctime! };
  return { server: server!, receiver: receiver!, name: name!, size: Number(size), identity, sysid: sysid === '-' ? undefined : sysid, sha256: sha256! };
}

export class AckSpool {
  readonly dir: string;
  /** failures this process recorded (the daemon's) */
  private readonly failed = new Set<string>();

  constructor(spoolDir: string) {
    this.dir = join(spoolDir, ACK_DIR);
  }

  async ensure(): Promise<void> {
    try {
      await makeDirs(this.dir, 0o700);
    } catch (err) {
      throw new BarmanError(ErrorCode.LOCAL_FILE, `cannot create ${this.dir} (${(err as NodeJS.ErrnoException).code})`, 'Set spool_dir = in the agent configuration to a directory the postgres user may write.');
    }
  }

  /**
   * Written under a temporary name and renamed: a reader sees the whole line or none. Not
   * fsynced: the ack only repeats what the receiver holds durably, and a line lost or torn by a
   * crash of this host reads as no ack, which sends PostgreSQL's push the long way.
   */
  async record(ack: Ack): Promise<void> {
    const path = join(this.dir, ack.name);
    const tmp = join(this.dir, `.${ack.name}.${process.pid}.tmp`);
    await fs.writeFile(tmp, formatAck(ack), { mode: 0o600 });
    await fs.rename(tmp, path);
    if (this.failed.delete(ack.name)) await fs.rm(join(this.dir, `${ack.name}.failed`), { force: true });
  }

  async lookup(name: string): Promise<Ack | undefined> {
    try {
      const ack = parseAck(await fs.readFile(join(this.dir, name), 'utf8'));
      return ack?.name === name ? ack : undefined;
    } catch {
      return undefined;
    }
  }

  /** The daemon could not push `name`: PostgreSQL's push goes ahead at once instead of waiting for an ack. */
  async markFailed(name: string, reason: string): Promise<void> {
    this.failed.add(name);
    await fs.writeFile(join(this.dir, `${name}.failed`), `${reason.replace(/\n/g, ' ')}\n`, { mode: 0o600 });
  }

  /** A daemon starting retries everything: failures an earlier run recorded no longer hold. */
  async clearFailures(): Promise<void> {
    for (const f of await fs.readdir(this.dir).catch(() => [] as string[])) if (f.endsWith('.failed')) await fs.rm(join(this.dir, f), { force: true });
  }

  async remove(name: string): Promise<void> {
    await fs.rm(join(this.dir, name), { force: true });
    this.failed.delete(name);
    await fs.rm(join(this.dir, `${name}.failed`), { force: true });
  }

  /** Names with an ack or a failure recorded. */
  async list(): Promise<string[]> {
    const names = new Set<string>();
    for (const f of await fs.readdir(this.dir).catch(() => [] as string[])) {
      const name = f.endsWith('.failed') ? f.slice(0, -'.failed'.length) : f;
      if (parseWalFileName(name)) names.add(name);
    }
    return [...names];
  }

  /** This daemon is connected to the receiver: PostgreSQL's push may wait for its acks. Refreshed every DAEMON_BEAT_MS. */
  async beat(): Promise<void> {
    const path = join(this.dir, DAEMON_FILE);
    const tmp = join(this.dir, `${DAEMON_FILE}.${process.pid}.tmp`);
    await fs.writeFile(tmp, `${process.pid}\n`, { mode: 0o600 });
    await fs.rename(tmp, path);
  }

  /** This daemon is no longer connected (or stops): PostgreSQL's push waits for nothing. */
  async unbeat(): Promise<void> {
    const path = join(this.dir, DAEMON_FILE);
    const pid = await fs.readFile(path, 'utf8').catch(() => '');
    if (pid.trim() === String(process.pid)) await fs.rm(path, { force: true });
  }
}
