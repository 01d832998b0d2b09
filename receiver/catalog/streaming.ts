// Streamed WAL on the receiver: the bytes the agent daemon reads from PostgreSQL's replication
// protocol are appended to streaming/<segment>.partial and fsynced; the position flushed is what
// the agent reports to PostgreSQL as the standby's flush LSN, so the replication slot (and a
// synchronous commit) only moves past WAL that is durable here. A segment filled to its end is
// checked and moved into wals/ (or compared with the copy archive_command already delivered).

import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { sha256File } from '../../shared/checksum';
import { BarmanError, ErrorCode } from '../../shared/errors';
import type { StreamingState } from '../../shared/protocol/frames';
import { readLongHeader } from '../../shared/wal/header';
import { formatLsn, type Lsn } from '../../shared/wal/lsn';
import { parseWalFileName, segmentForLsn, segmentStartLsn, segmentTimeline } from '../../shared/wal/names';
import { ensureDir, fsyncDir } from '../storage/posix';
import type { ServerCatalog } from './catalog';
import { hashStoredWal } from './wal-archive';

interface OpenSegment {
  name: string;
  start: Lsn;
  fh: fs.FileHandle;
}

export class WalStream {
  private timeline = 0;
  /** the cluster's, told by the daemon at open() (the catalog's identity agrees: ServerContext.openStream) */
  private segmentSize = 0;
  private current: OpenSegment | undefined;
  /** next byte expected */
  private writePos: Lsn = 0n;
  private flushed: Lsn = 0n;
  private serverLsn: Lsn = 0n;
  private flushing: Promise<void> | undefined;
  private lastFlushAt: Date | undefined;
  private active = false;
  /** the first segment of a new timeline begins with its parent's bytes up to the branch point */
  private prefix: { segment: string; parentSegment: string; bytes: number } | undefined;
  /** called after every fsync with the position now durable */
  onFlushed: ((timeline: number, lsn: Lsn) => void) | undefined;
  /** called when a completed segment entered wals/ */
  onSegment: ((name: string, sha256: string) => Promise<void>) | undefined;

  constructor(private readonly catalog: ServerCatalog, private readonly log: Logger) {}

  /** The positions; whether the stream is still heard from is the server context's to say. */
  state(): Omit<StreamingState, 'lastHeardAt' | 'caughtUpAt'> {
    const lsn = (v: Lsn) => (v === 0n ? '' : formatLsn(v));
    return { state: this.active ? 'streaming' : this.writePos > 0n ? 'stopped' : 'off', timeline: this.timeline, receivedLsn: lsn(this.writePos), flushLsn: lsn(this.flushed), serverLsn: lsn(this.serverLsn), lastFlushAt: this.lastFlushAt?.toISOString() ?? '' };
  }

  /** Everything PostgreSQL is known to have sent is flushed here. */
  get caughtUp(): boolean {
    return this.flushed >= this.serverLsn;
  }

  /** PostgreSQL's WAL reaches at least `lsn` (a keepalive of the stream, on its timeline). */
  noteServerLsn(timeline: number, lsn: Lsn): void {
    if (this.active && timeline === this.timeline && lsn > this.serverLsn) this.serverLsn = lsn;
  }

  /** A daemon starts streaming: where should it start? ('' when nothing was streamed on that timeline) */
  async open(timeline: number, systemIdentifier: string, segmentSize: number, serverLsn: Lsn, branch?: { parent: number; switchLsn: Lsn }): Promise<Lsn | undefined> {
    const identity = await this.catalog.identity();
    if (identity && identity.systemIdentifier !== systemIdentifier) {
      throw new BarmanError(ErrorCode.WAL_FOREIGN, `the streaming cluster has system identifier ${systemIdentifier}, this server's WAL comes from ${identity.systemIdentifier}`, `Check that the agent's server = ${this.catalog.server} is right; a new cluster needs its own server section.`);
    }
    await this.close();
    await ensureDir(this.catalog.streamingDir);
    this.segmentSize = segmentSize;
    this.serverLsn = serverLsn;
    const partials = (await fs.readdir(this.catalog.streamingDir)).filter((f) => parseWalFileName(f)?.kind === 'partial').sort();
    const onTimeline = partials.filter((p) => segmentTimeline(p) === timeline);
    const newestArchived = (await this.catalog.listSegments()).filter((s) => segmentTimeline(s) === timeline).pop();
    let resume: Lsn | undefined;
    if (newestArchived) resume = segmentStartLsn(newestArchived, segmentSize) + BigInt(segmentSize);
    const partial = onTimeline[onTimeline.length - 1];
    if (partial) {
      const seg = partial.slice(0, 24);
      const size = (await fs.stat(join(this.catalog.streamingDir, partial))).size;
      const end = segmentStartLsn(seg, segmentSize) + BigInt(size);
      if (resume === undefined || end > resume) resume = end;
    }
    // partials whose segment is archived meanwhile are done with
    for (const p of partials) if (p !== partial && (await this.catalog.findWal(p.slice(0, 24)))) await fs.rm(join(this.catalog.streamingDir, p), { force: true });
    // a new timeline starts at its branch point, inside a segment whose beginning is the parent's
    this.prefix = undefined;
    if (resume === undefined && branch && branch.switchLsn % BigInt(segmentSize) !== 0n) {
      resume = branch.switchLsn;
      this.prefix = { segment: segmentForLsn(timeline, branch.switchLsn, segmentSize), parentSegment: segmentForLsn(branch.parent, branch.switchLsn, segmentSize), bytes: Number(branch.switchLsn % BigInt(segmentSize)) };
    }
    this.timeline = timeline;
    this.active = true;
    this.writePos = resume ?? 0n;
    this.flushed = this.writePos;
    return resume;
  }

  /** Appends WAL from `start`; bytes before the write position (a resend after reconnect) are skipped. */
  async append(timeline: number, start: Lsn, walEnd: Lsn, data: Uint8Array): Promise<void> {
    if (!this.active || timeline !== this.timeline) throw new BarmanError(ErrorCode.PROTOCOL, `WAL for timeline ${timeline} while streaming ${this.active ? `timeline ${this.timeline}` : 'nothing'}`, 'Restart the agent daemon.');
    if (walEnd > this.serverLsn) this.serverLsn = walEnd;
    if (this.writePos === 0n) this.writePos = start - (start % BigInt(this.segmentSize));
    if (start > this.writePos) {
      throw new BarmanError(ErrorCode.PROTOCOL, `streamed WAL jumps from ${formatLsn(this.writePos)} to ${formatLsn(start)} (a gap)`, 'Restart the agent daemon; it resumes from the receiver\'s position.');
    }
    let offset = Number(this.writePos - start);
    while (offset < data.length) {
      const seg = await this.segmentFor(this.writePos);
      const within = Number(this.writePos - seg.start);
      const take = Math.min(data.length - offset, this.segmentSize - within);
      await writeAt(seg.fh, data.subarray(offset, offset + take), within);
      offset += take;
      this.writePos += BigInt(take);
      if (within + take === this.segmentSize) await this.completeSegment();
    }
    this.scheduleFlush();
  }

  async close(): Promise<void> {
    this.active = false;
    await this.flushing;
    if (this.current) {
      await this.current.fh.sync().catch(() => undefined);
      await this.current.fh.close().catch(() => undefined);
      this.current = undefined;
    }
  }

  /** The partial segment (if any) recovery may use for `segment`: its path, or undefined. */
  async partialFor(segment: string): Promise<string | undefined> {
    const path = join(this.catalog.streamingDir, `${segment}.partial`);
    return (await fs.stat(path).catch(() => undefined)) ? path : undefined;
  }

  private async segmentFor(lsn: Lsn): Promise<OpenSegment> {
    const name = segmentForLsn(this.timeline, lsn, this.segmentSize);
    if (this.current?.name === name) return this.current;
    if (this.current) await this.close().then(() => (this.active = true));
    const path = join(this.catalog.streamingDir, `${name}.partial`);
    const fh = await fs.open(path, 'a+', 0o640).then(async (h) => {
      await h.close();
      return fs.open(path, 'r+');
    });
    if (this.prefix?.segment === name && (await fh.stat()).size === 0) await this.copyPrefix(fh, this.prefix);
    await fsyncDir(this.catalog.streamingDir);
    this.current = { name, start: segmentStartLsn(name, this.segmentSize), fh };
    return this.current;
  }

  /** Group commit: one fsync in flight; whatever arrives meanwhile goes with the next. */
  private scheduleFlush(): void {
    if (this.flushing || !this.current) return;
    const seg = this.current;
    const upTo = this.writePos;
    this.flushing = seg.fh
      .datasync()
      .then(() => {
        if (upTo > this.flushed) this.flushed = upTo;
        this.lastFlushAt = new Date();
        this.onFlushed?.(this.timeline, this.flushed);
      })
      .catch((err: unknown) => this.log.error({ err: String(err) }, 'fsync of the streamed segment failed'))
      .finally(() => {
        this.flushing = undefined;
        if (this.writePos > this.flushed && this.current) this.scheduleFlush();
      });
  }

  /** A segment is full: fsync it, then move it into wals/ unless archive_command got there first. */
  private async completeSegment(): Promise<void> {
    const seg = this.current!;
    await this.flushing;
    await seg.fh.sync();
    await seg.fh.close();
    this.current = undefined;
    if (this.writePos > this.flushed) {
      this.flushed = this.writePos;
      this.lastFlushAt = new Date();
      this.onFlushed?.(this.timeline, this.flushed);
    }
    const partialPath = join(this.catalog.streamingDir, `${seg.name}.partial`);
    const head = Buffer.alloc(40);
    const fh = await fs.open(partialPath, 'r');
    await fh.read(head, 0, 40, 0);
    await fh.close();
    const header = readLongHeader(head);
    const identity = await this.catalog.identity();
    if (typeof header === 'string' || header.pageAddress !== seg.start || (identity && identity.systemIdentifier !== header.systemIdentifier)) {
      const aside = this.catalog.errorPath(seg.name, 'streamed-invalid');
      await fs.rename(partialPath, aside);
      this.log.error({ wal: seg.name, aside }, `streamed segment failed its header check (${typeof header === 'string' ? header : 'address or system identifier'}); kept aside`);
      return;
    }
    const existing = await this.catalog.findWal(seg.name);
    if (existing) {
      if ((await hashStoredWal(existing)) === (await sha256File(partialPath)).sha256) {
        await fs.rm(partialPath);
      } else {
        const aside = this.catalog.errorPath(seg.name, 'streamed-conflict');
        await fs.rename(partialPath, aside);
        this.log.error({ wal: seg.name, aside }, 'streamed segment differs from the archived one; kept aside');
      }
      return;
    }
    await this.catalog.learnIdentity({ systemIdentifier: header.systemIdentifier, segmentSize: header.segmentSize, walMagic: header.magic, pgVersion: header.pgVersion });
    const { sha256 } = await sha256File(partialPath);
    const final = this.catalog.walPath(seg.name);
    await ensureDir(join(final, '..'));
    await fs.rename(partialPath, final);
    await fsyncDir(join(final, '..'));
    await fsyncDir(this.catalog.streamingDir);
    this.log.info({ wal: seg.name }, 'streamed segment complete');
    await this.onSegment?.(seg.name, sha256);
  }

  /** Copies the parent timeline's bytes before the branch point (streamed, archived .partial or archived segment). */
  private async copyPrefix(fh: fs.FileHandle, prefix: { parentSegment: string; bytes: number }): Promise<void> {
    const candidates = [join(this.catalog.streamingDir, `${prefix.parentSegment}.partial`)];
    for (const name of [`${prefix.parentSegment}.partial`, prefix.parentSegment]) {
      const stored = await this.catalog.findWal(name);
      if (stored?.compression === 'none') candidates.push(stored.path);
    }
    for (const path of candidates) {
      const src = await fs.open(path, 'r').catch(() => undefined);
      if (!src) continue;
      try {
        const buf = Buffer.alloc(prefix.bytes);
        const { bytesRead } = await src.read(buf, 0, prefix.bytes, 0);
        if (bytesRead < prefix.bytes) continue;
        await writeAt(fh, buf, 0);
        return;
      } finally {
        await src.close();
      }
    }
    this.log.warn({ wal: prefix.parentSegment }, 'the parent timeline\'s segment is not here yet; the first streamed segment of the new timeline will be incomplete until archive_command delivers it');
  }
}

async function writeAt(fh: fs.FileHandle, data: Uint8Array, position: number): Promise<void> {
  let off = 0;
  while (off < data.length) {
    const { bytesWritten } = await fh.write(data, off, data.length - off, position + off);
    off += bytesWritten;
  }
}
