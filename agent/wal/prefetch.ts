// WAL fetched ahead for the restore_command: spool_dir/prefetch/<segment>-<sha256>, the SHA-256
// being what the receiver sent (checked as it arrived). `get-wal` answers a segment from here when
// it is present and still whole: moved next to PostgreSQL's destination, read back against its
// checksum and its page header (the timeline and address its name promises), and only then renamed
// into place. Anything else (damaged, another timeline's bytes) is removed and never served; the
// receiver is asked instead. agent/launcher.sh does the same in POSIX sh for a hit, without Node.
//
// Beside each copy the prefetcher records what the file is once in place: .<segment>-<sha256>.id,
// one line `size=<bytes> dev=<st_dev> ino=<st_ino> mtime=<s.ns> ctime=<s.ns>` (as the daemon's acks
// spell a file's identity, agent/wal/spool.ts). The launcher serves a copy whose `stat` still says
// exactly that without reading it back (only its page header): those bytes were hashed as they
// arrived, against what the receiver sent after checking them as they left the catalog, and any
// write since would have moved its mtime and ctime (to the kernel's clock tick: a write within the
// same few milliseconds as the record could pass, and only a program writing into this folder, the
// agent's own, could make one). Where the record is missing or anything differs
// (a copy rewritten, replaced, or moved across filesystems) it hashes the copy, as Node always does.
//
// Fetching ahead runs beside PostgreSQL's replay, in one background process per spool (the
// prefetcher, `barman-agent prefetch-wal`, started by get-wal and holding .prefetcher): it keeps the
// `prefetch` segments after the last one PostgreSQL asked for (.requested, written by every get-wal)
// in the spool over one connection, removes what PostgreSQL no longer needs (older segments, other
// timelines, leftovers of a killed run), and exits once PostgreSQL has stopped asking for a while.
// A get-wal asking for a segment the prefetcher is downloading waits for it rather than fetching
// it a second time.

import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { constants, promises as fs } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { makeDirs } from '../../shared/dirs';
import type { AgentConnection } from '../../shared/protocol/client';
import { readLongHeader, LONG_HEADER_SIZE } from '../../shared/wal/header';
import { isSegmentName, isValidSegmentSize, nextSegment, segmentStartLsn, segmentTimeline } from '../../shared/wal/names';
import { formatIdentity, identityOf } from './spool';

/** the spool's folder below spool_dir (agent/launcher.sh spells it too, and the two names below) */
export const PREFETCH_DIR = 'prefetch';
/** the live prefetcher's pid; refreshed (mtime) while it works */
const LOCK = '.prefetcher';
/** the last segment PostgreSQL asked for */
const REQUESTED = '.requested';
/** the cluster's WAL segment size, as the first segment fetched stated it */
const SEGMENT_SIZE = '.segment-size';
/** a prefetcher that has not refreshed its lock for this long is gone */
const LOCK_STALE_MS = 10_000;
/** the prefetcher exits once PostgreSQL has asked for nothing new for this long */
const IDLE_EXIT_MS = 3_000;
/** a temporary file older than this is a killed run's leftover */
const STALE_TMP_MS = 10 * 60 * 1000;

const ENTRY = /^([0-9A-F]{24})-([0-9a-f]{64})$/;
/** the record of what a copy is on disk (its identity), beside it */
const IDENTITY = /^\.([0-9A-F]{24}-[0-9a-f]{64})\.id$/;
const identityFile = (entry: string) => `.${entry}.id`;

export class WalPrefetch {
  readonly dir: string;

  constructor(spoolDir: string) {
    this.dir = join(spoolDir, PREFETCH_DIR);
  }

  /** Spooled segments: name and checksum. */
  async entries(): Promise<Array<{ name: string; sha256: string; file: string }>> {
    const out: Array<{ name: string; sha256: string; file: string }> = [];
    for (const f of await fs.readdir(this.dir).catch(() => [] as string[])) {
      const m = ENTRY.exec(f);
      if (m) out.push({ name: m[1]!, sha256: m[2]!, file: f });
    }
    return out;
  }

  /**
   * Answers `name` from the spool into `dest`: true once it is there, verified. A spooled copy
   * that fails its checks is removed (reported through `warn`), and false sends the caller to the receiver.
   */
  async take(name: string, dest: string, warn: (text: string) => void = () => undefined): Promise<boolean> {
    for (const e of (await this.entries()).filter((x) => x.name === name)) {
      const tmp = join(dirname(dest), `.${name}.${process.pid}.spool`);
      try {
        await moveFile(join(this.dir, e.file), tmp);
      } catch {
        continue; // taken by another get-wal meanwhile, or unreadable: the receiver answers
      }
      const problem = await checkSpooled(tmp, name, e.sha256);
      if (problem === undefined) {
        await fs.rename(tmp, dest);
        return true;
      }
      await fs.rm(tmp, { force: true });
      warn(`the prefetched copy of ${name} was not served (${problem}); fetching it from the receiver`);
    }
    return false;
  }

  /**
   * Removes what PostgreSQL will not ask for after `requested`: segments before it, segments of
   * other timelines, entries beyond `keep` ahead of it, and temporary files of killed runs.
   */
  async clean(requested: string, keep: number): Promise<void> {
    const tli = segmentTimeline(requested);
    const ahead = (await this.entries()).filter((e) => segmentTimeline(e.name) === tli && e.name > requested).sort((a, b) => (a.name < b.name ? -1 : 1));
    const keepFiles = new Set(ahead.slice(0, keep).map((e) => e.file));
    const now = Date.now();
    for (const f of await fs.readdir(this.dir).catch(() => [] as string[])) {
      if (keepFiles.has(f)) continue;
      // segments, their records, and downloads a killed run left; the prefetcher's own files (.prefetcher, .requested, ...) stay
      const record = IDENTITY.exec(f);
      if (record) {
        if (keepFiles.has(record[1]!)) continue;
      } else if (f.endsWith('.tmp')) {
        const st = await fs.lstat(join(this.dir, f)).catch(() => undefined);
        if (st && now - st.mtimeMs < STALE_TMP_MS) continue;
      } else if (!ENTRY.test(f)) continue;
      await fs.rm(join(this.dir, f), { force: true, recursive: true });
    }
  }

  /**
   * Records beside spooled copy `entry` what the file is now that it is in place (a rename moves
   * its ctime). A get-wal may have taken the copy already (it waits for a segment being
   * downloaded): then there is nothing to record. A record cut short by a crash matches no file,
   * and the copy is hashed instead.
   */
  async record(entry: string): Promise<void> {
    const st = await fs.lstat(join(this.dir, entry), { bigint: true }).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw err;
    });
    if (st) await fs.writeFile(join(this.dir, identityFile(entry)), `${formatIdentity(identityOf(st))}\n`, { mode: 0o600 });
  }

  /**
   * Fetches `name` into the spool. 'missing' when the receiver does not have it (the file is not
   * made); already spooled counts as 'stored'.
   */
  async fill(conn: AgentConnection, name: string): Promise<'stored' | 'missing'> {
    if ((await this.entries()).some((e) => e.name === name)) return 'stored';
    await makeDirs(this.dir, 0o700);
    const tmp = join(this.dir, `.${name}.${process.pid}.tmp`);
    const fh = await fs.open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_NOFOLLOW, 0o600);
    // the checksum of what arrived, checked against the receiver's by fetch()
    let sha256 = '';
    try {
      for await (const chunk of conn.fetchWal(name, (sha) => (sha256 = sha))) await fh.write(chunk);
      if (!sha256) throw new Error(`${name}: the download ended without its checksum`);
    } catch (err) {
      await fh.close();
      await fs.rm(tmp, { force: true });
      if ((err as { code?: string }).code === 'WAL_NOT_FOUND') return 'missing';
      throw err;
    }
    await fh.close();
    // no fsync: a spooled copy that a crash damaged fails its checksum and is fetched again
    const entry = `${name}-${sha256}`;
    await fs.rename(tmp, join(this.dir, entry));
    await this.record(entry);
    return 'stored';
  }
}

/** get-wal's side of the prefetcher: say what PostgreSQL asked for, start the prefetcher, wait for a download it has under way. */
export class PrefetchControl {
  constructor(readonly spool: WalPrefetch) {}

  /** Records the segment PostgreSQL asked for (the prefetcher keeps the segments after it); returns the one asked for before. */
  async noteRequested(name: string): Promise<string> {
    await makeDirs(this.spool.dir, 0o700);
    const before = (await fs.readFile(join(this.spool.dir, REQUESTED), 'utf8').catch(() => '')).trim();
    const tmp = join(this.spool.dir, `${REQUESTED}.${process.pid}`);
    await fs.writeFile(tmp, `${name}\n`, { mode: 0o600 });
    await fs.rename(tmp, join(this.spool.dir, REQUESTED));
    return before;
  }

  /** The pid of a prefetcher that is alive and working, if any. */
  async alive(): Promise<number | undefined> {
    return livePrefetcher(this.spool.dir);
  }

  /**
   * Waits while the prefetcher downloads `name` (its temporary file is there); true once it is in
   * the spool, false when there is nothing to wait for (or `timeoutMs` passed).
   */
  async waitFor(name: string, timeoutMs: number): Promise<boolean> {
    const until = Date.now() + timeoutMs;
    while (Date.now() < until) {
      const files = await fs.readdir(this.spool.dir).catch(() => [] as string[]);
      if (files.some((f) => f.startsWith(`${name}-`))) return true;
      if (!files.some((f) => f.startsWith(`.${name}.`) && f.endsWith('.tmp')) || (await this.alive()) === undefined) return false;
      await new Promise((r) => setTimeout(r, 10));
    }
    return false;
  }

  /** The segment size recorded by an earlier get-wal, if any. */
  async knownSegmentSize(): Promise<number | undefined> {
    const size = Number((await fs.readFile(join(this.spool.dir, SEGMENT_SIZE), 'utf8').catch(() => '')).trim());
    return isValidSegmentSize(size) ? size : undefined;
  }

  /** Starts the prefetcher (detached: it outlives this get-wal) unless one runs. */
  async ensureRunning(configFile: string, segmentSize: number): Promise<void> {
    if ((await this.knownSegmentSize()) !== segmentSize) await fs.writeFile(join(this.spool.dir, SEGMENT_SIZE), `${segmentSize}\n`, { mode: 0o600 });
    if ((await this.alive()) !== undefined) return;
    const child = spawn(process.execPath, [process.argv[1]!, 'prefetch-wal', String(segmentSize), '-c', resolve(configFile)], { detached: true, stdio: 'ignore', cwd: this.spool.dir });
    child.unref();
  }
}

/** The pid of the prefetcher working in spool folder `dir` (its lock fresh, the process alive), or undefined. */
export async function livePrefetcher(dir: string): Promise<number | undefined> {
  const lock = join(dir, LOCK);
  const [text, st] = await Promise.all([fs.readFile(lock, 'utf8').catch(() => ''), fs.stat(lock).catch(() => undefined)]);
  const pid = Number(text.trim());
  if (!st || !Number.isInteger(pid) || pid <= 0 || Date.now() - st.mtimeMs > LOCK_STALE_MS) return undefined;
  try {
    process.kill(pid, 0);
    return pid;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM' ? pid : undefined;
  }
}

/**
 * The prefetcher: one per spool (a second one exits at once). Keeps the `count` segments after the
 * last one PostgreSQL asked for in the spool, fetched over `conn` in order; stops fetching past a
 * segment the receiver does not have (the end of the archive, for now); exits once PostgreSQL has
 * asked for nothing new for a while, or `signal` aborts.
 */
export async function runPrefetcher(spool: WalPrefetch, open: () => Promise<AgentConnection>, segmentSize: number, count: number, signal?: AbortSignal): Promise<void> {
  await makeDirs(spool.dir, 0o700);
  const lock = join(spool.dir, LOCK);
  for (let attempt = 0; ; attempt++) {
    try {
      await fs.writeFile(lock, `${process.pid}\n`, { flag: 'wx', mode: 0o600 });
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || attempt > 0 || (await livePrefetcher(spool.dir)) !== undefined) return;
      await fs.rm(lock, { force: true });
    }
  }
  let conn: AgentConnection | undefined;
  /** downloads under way, by segment name: a sliding window, topped up as each one lands */
  const inFlight = new Map<string, Promise<unknown>>();
  let failure: unknown;
  try {
    conn = await open();
    let lastRequested = '';
    let lastProgress = Date.now();
    /** no segment at or after this one is asked for until PostgreSQL moves on (the receiver lacks it) */
    let missingAt: string | undefined;
    while (!signal?.aborted && failure === undefined) {
      const now = new Date();
      await fs.utimes(lock, now, now);
      const requested = (await fs.readFile(join(spool.dir, REQUESTED), 'utf8').catch(() => '')).trim();
      if (isSegmentName(requested) && requested !== lastRequested) {
        lastRequested = requested;
        lastProgress = Date.now();
        missingAt = undefined;
        await spool.clean(requested, count);
      }
      if (!lastRequested || Date.now() - lastProgress > IDLE_EXIT_MS) break;
      const have = new Set((await spool.entries()).map((e) => e.name));
      const wanted = segmentsAfter(lastRequested, segmentSize, count).filter((n) => !have.has(n) && !inFlight.has(n) && (missingAt === undefined || n < missingAt));
      for (const name of wanted) {
        const c = conn;
        const download = spool.fill(c, name).then(
          (result) => {
            if (result === 'missing' && (missingAt === undefined || name < missingAt)) missingAt = name;
          },
          (err: unknown) => {
            failure ??= err;
          },
        ).finally(() => inFlight.delete(name));
        inFlight.set(name, download);
      }
      await Promise.race([...inFlight.values(), new Promise((r) => setTimeout(r, inFlight.size > 0 ? 50 : 20))]);
    }
  } finally {
    await Promise.allSettled([...inFlight.values()]);
    conn?.close();
    if ((await fs.readFile(lock, 'utf8').catch(() => '')).trim() === String(process.pid)) await fs.rm(lock, { force: true });
  }
}

/** The `count` segments after `name` (same timeline), for a cluster of `segmentSize`-byte segments. */
export function segmentsAfter(name: string, segmentSize: number, count: number): string[] {
  const out: string[] = [];
  for (let n = name, i = 0; i < count; i++) out.push((n = nextSegment(n, segmentSize)));
  return out;
}

/** The segment size a restored segment's long page header states; undefined when it cannot be read. */
export async function segmentSizeOf(path: string): Promise<number | undefined> {
  const fh = await fs.open(path, constants.O_RDONLY | constants.O_NOFOLLOW).catch(() => undefined);
  if (!fh) return undefined;
  try {
    const buf = Buffer.alloc(LONG_HEADER_SIZE);
    await fh.read(buf, 0, LONG_HEADER_SIZE, 0);
    const header = readLongHeader(buf);
    return typeof header === 'string' ? undefined : header.segmentSize;
  } finally {
    await fh.close();
  }
}

/**
 * Why a file may not stand for segment `name` with checksum `sha256` (a spooled file answering
 * get-wal, a local file answering push from the daemon's ack), or undefined when it may.
 */
export async function checkSpooled(path: string, name: string, sha256: string): Promise<string | undefined> {
  if (!isSegmentName(name)) return 'not a segment name';
  const fh = await fs.open(path, constants.O_RDONLY | constants.O_NOFOLLOW).catch(() => undefined);
  if (!fh) return 'cannot be read';
  try {
    const st = await fh.stat();
    if (!st.isFile()) return 'not a file';
    const hash = createHash('sha256');
    const head = Buffer.alloc(LONG_HEADER_SIZE);
    const buf = Buffer.allocUnsafe(1 << 20);
    let pos = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) break;
      if (pos < LONG_HEADER_SIZE) buf.copy(head, pos, 0, Math.min(bytesRead, LONG_HEADER_SIZE - pos));
      hash.update(buf.subarray(0, bytesRead));
      pos += bytesRead;
    }
    if (hash.digest('hex') !== sha256) return 'its checksum does not match';
    const header = readLongHeader(head);
    if (typeof header === 'string') return header;
    if (header.timeline !== segmentTimeline(name)) return `its pages are of timeline ${header.timeline}`;
    if (pos !== header.segmentSize) return `${pos} bytes, not a whole segment`;
    let start: bigint;
    try {
      start = segmentStartLsn(name, header.segmentSize);
    } catch {
      return 'its name does not fit its segment size';
    }
    if (header.pageAddress !== start) return 'its pages belong to another segment';
    return undefined;
  } finally {
    await fh.close();
  }
}

/** rename, or copy and remove where the spool and the destination are on different filesystems. */
async function moveFile(from: string, to: string): Promise<void> {
  try {
    await fs.rename(from, to);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
    await fs.copyFile(from, to, constants.COPYFILE_EXCL);
    await fs.rm(from, { force: true });
  }
}
