// WAL fetched ahead for the restore_command: spool_dir/prefetch/<segment>-<sha256>, the SHA-256
// being what the receiver sent (checked as it arrived). `get-wal` answers a segment from here when
// it is present and still whole: moved next to PostgreSQL's destination, read back against its
// checksum and its page header (the timeline and address its name promises), and only then renamed
// into place. Anything else (damaged, another timeline's bytes) is removed and never served; the
// receiver is asked instead. agent/launcher.sh does the same in POSIX sh for a hit, without Node.
//
// The spool holds at most `prefetch` segments beyond the one asked for: each get-wal that goes to
// the receiver first removes what PostgreSQL no longer needs (older segments, other timelines,
// leftovers of a killed run).

import { createHash } from 'node:crypto';
import { constants, promises as fs } from 'node:fs';
import { dirname, join } from 'node:path';
import { makeDirs } from '../../shared/dirs';
import type { AgentConnection } from '../../shared/protocol/client';
import { readLongHeader, LONG_HEADER_SIZE } from '../../shared/wal/header';
import { isSegmentName, nextSegment, segmentStartLsn, segmentTimeline } from '../../shared/wal/names';

/** the spool's folder below spool_dir (agent/launcher.sh spells it too) */
export const PREFETCH_DIR = 'prefetch';
/** a temporary file older than this is a killed run's leftover */
const STALE_TMP_MS = 10 * 60 * 1000;

const ENTRY = /^([0-9A-F]{24})-([0-9a-f]{64})$/;

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
      if (f.endsWith('.tmp')) {
        const st = await fs.lstat(join(this.dir, f)).catch(() => undefined);
        if (st && now - st.mtimeMs < STALE_TMP_MS) continue;
      }
      await fs.rm(join(this.dir, f), { force: true, recursive: true });
    }
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
    const hash = createHash('sha256');
    try {
      for await (const chunk of conn.fetch((id) => ({ type: 'get', id, name }))) {
        hash.update(chunk);
        await fh.write(chunk);
      }
    } catch (err) {
      await fh.close();
      await fs.rm(tmp, { force: true });
      if ((err as { code?: string }).code === 'WAL_NOT_FOUND') return 'missing';
      throw err;
    }
    await fh.close();
    // no fsync: a spooled copy that a crash damaged fails its checksum and is fetched again
    await fs.rename(tmp, join(this.dir, `${name}-${hash.digest('hex')}`));
    return 'stored';
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

/** Why a spooled file may not answer a request for `name`, or undefined when it may. */
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
