// Streamed WAL on the receiver: the bytes the agent daemon reads from PostgreSQL's replication
// protocol are appended to streaming/<segment>.partial and fsynced; the position flushed is what
// the agent reports to PostgreSQL as the standby's flush LSN, so the replication slot (and a
// synchronous commit) only moves past WAL that is durable here. The partial segment is local state
// of this receiver host (barman_home/<srv>/streaming/, whatever the storage): a segment filled to
// its end is checked and stored into the catalog, compressed as the server says, through the same
// door as a push (or compared with the copy archive_command already delivered), then removed here.
// Its checksum is of the bytes as they arrived, hashed while they were written, not of a re-read
// of the file; only bytes an earlier receiver process wrote are read back, once, on resuming.

import type { Hash } from 'node:crypto';
import { createReadStream, promises as fs } from 'node:fs';
import { fsyncDir } from '../../shared/durable';
import type { Logger } from 'pino';
import { newHash, readChunks } from '../../shared/checksum';
import { BarmanError, ErrorCode } from '../../shared/errors';
import type { StreamingState } from '../../shared/protocol/frames';
import { Turns } from '../../shared/turns';
import { readLongHeader } from '../../shared/wal/header';
import { formatLsn, type Lsn } from '../../shared/wal/lsn';
import { segmentForLsn, segmentStartLsn, segmentTimeline } from '../../shared/wal/names';
import type { ServerCatalog } from './catalog';
import { readStoredWal, type WalArchive } from './wal-archive';

/** A segment's bytes hashed so far, in order from its start. */
interface SegmentHash {
  name: string;
  hash: Hash;
  /** bytes hashed: everything before this offset */
  hashed: number;
  /** a write landed before `hashed` (never expected): the file is hashed again at completion */
  broken: boolean;
}

interface OpenSegment extends SegmentHash {
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
  /** the open segment's hash when the stream closed: a reconnect within this process goes on with it */
  private parked: SegmentHash | undefined;
  /** complete segments being stored into the catalog, in order */
  private readonly storing = new Turns();
  /**
   * open, append and close, one at a time in the order called: an append still writing when its
   * connection went (the close) or when the daemon came back (the next open) finishes first. Else
   * it went on writing after the close, holding a segment open that nothing flushed any more, and
   * moved the write position under the next stream's feet.
   */
  private readonly turns = new Turns();

  constructor(private readonly catalog: ServerCatalog, private readonly log: Logger, private readonly archive: WalArchive) {}

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
  open(timeline: number, systemIdentifier: string, segmentSize: number, serverLsn: Lsn, branch?: { parent: number; switchLsn: Lsn }): Promise<Lsn | undefined> {
    return this.turns.run(() => this.openNow(timeline, systemIdentifier, segmentSize, serverLsn, branch));
  }

  private async openNow(timeline: number, systemIdentifier: string, segmentSize: number, serverLsn: Lsn, branch?: { parent: number; switchLsn: Lsn }): Promise<Lsn | undefined> {
    const identity = await this.catalog.identity();
    if (identity && identity.systemIdentifier !== systemIdentifier) {
      throw new BarmanError(ErrorCode.WAL_FOREIGN, `the streaming cluster has system identifier ${systemIdentifier}, this server's WAL comes from ${identity.systemIdentifier}`, `Check that the agent's server = ${this.catalog.server} is right; a new cluster needs its own server section.`);
    }
    await this.closeNow();
    await fs.mkdir(this.dir, { recursive: true, mode: 0o750 });
    this.segmentSize = segmentSize;
    this.serverLsn = serverLsn;
    const partials = (await this.partialSegments()).map((p) => p.segment);
    const onTimeline = partials.filter((p) => segmentTimeline(p) === timeline);
    const newestArchived = (await this.catalog.listSegments()).filter((s) => segmentTimeline(s) === timeline).pop();
    let resume: Lsn | undefined;
    if (newestArchived) resume = segmentStartLsn(newestArchived, segmentSize) + BigInt(segmentSize);
    const partial = onTimeline[onTimeline.length - 1];
    if (partial) {
      const size = (await fs.stat(this.partialPath(partial))).size;
      const end = segmentStartLsn(partial, segmentSize) + BigInt(size);
      if (resume === undefined || end > resume) resume = end;
    }
    // partials whose segment is archived meanwhile are done with
    for (const p of partials) if (p !== partial && (await this.catalog.findWal(p))) await fs.rm(this.partialPath(p), { force: true });
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
  append(timeline: number, start: Lsn, walEnd: Lsn, data: Uint8Array): Promise<void> {
    return this.turns.run(() => this.appendNow(timeline, start, walEnd, data));
  }

  private async appendNow(timeline: number, start: Lsn, walEnd: Lsn, data: Uint8Array): Promise<void> {
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
      hashAt(seg, data.subarray(offset, offset + take), within);
      offset += take;
      this.writePos += BigInt(take);
      if (within + take === this.segmentSize) await this.completeSegment();
    }
    this.scheduleFlush();
  }

  /** Stops the stream once the append in progress (if any) is written; nothing is written after. */
  close(): Promise<void> {
    return this.turns.run(() => this.closeNow());
  }

  private async closeNow(): Promise<void> {
    this.active = false;
    await this.parkCurrent();
  }

  /** The open segment fsynced and closed, its hash kept for a resume in this process. */
  private async parkCurrent(): Promise<void> {
    await this.flushing;
    await this.storing.idle();
    if (this.current) {
      const { name, hash, hashed, broken } = this.current;
      this.parked = { name, hash, hashed, broken };
      await this.current.fh.sync().catch(() => undefined);
      await this.current.fh.close().catch(() => undefined);
      this.current = undefined;
    }
  }

  /** The partial segment (if any) recovery may use for `segment`: its path, or undefined. */
  async partialFor(segment: string): Promise<string | undefined> {
    const path = this.partialPath(segment);
    return (await fs.stat(path).catch(() => undefined)) ? path : undefined;
  }

  private get dir(): string {
    return this.catalog.layout.streamingDir(this.catalog.barmanHome);
  }

  private partialPath(segment: string): string {
    return this.catalog.layout.streamingPartialPath(this.catalog.barmanHome, segment);
  }

  /** The streamed partial segments on this host, oldest first (also what recovery replays last). */
  partialSegments(): Promise<StreamedPartial[]> {
    return streamedPartials(this.catalog);
  }

  private async segmentFor(lsn: Lsn): Promise<OpenSegment> {
    const name = segmentForLsn(this.timeline, lsn, this.segmentSize);
    if (this.current?.name === name) return this.current;
    if (this.current) await this.parkCurrent();
    const path = this.partialPath(name);
    const fh = await fs.open(path, 'a+', 0o640).then(async (h) => {
      await h.close();
      return fs.open(path, 'r+');
    });
    const size = (await fh.stat()).size;
    let hashed: SegmentHash;
    if (size === 0) {
      hashed = { name, hash: newHash(), hashed: 0, broken: false };
      if (this.prefix?.segment === name) {
        const prefix = await this.copyPrefix(fh, this.prefix);
        if (prefix) hashAt(hashed, prefix, 0);
      }
    } else if (this.parked?.name === name && this.parked.hashed === size) {
      hashed = this.parked;
    } else {
      // written by an earlier receiver process: its bytes are read back once to go on hashing
      hashed = { name, hash: newHash(), hashed: 0, broken: false };
      for await (const chunk of readChunks(path)) hashAt(hashed, chunk, hashed.hashed);
    }
    this.parked = undefined;
    await fsyncDir(this.dir);
    this.current = { ...hashed, start: segmentStartLsn(name, this.segmentSize), fh };
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
    // into the catalog beside the stream, one segment after the other: compressing and storing
    // it (or reading a pushed copy back to compare) must not hold up the next segment's bytes
    // on the daemon's connection. Until stored it stays here; archive_command delivers it too.
    this.storing.run(() => this.storeSegment(seg)).catch((err: unknown) => this.log.error({ wal: seg.name, err: String(err) }, 'storing the streamed segment into the catalog failed; it stays in streaming/ and archive_command delivers it'));
  }

  /** A complete segment's local file into the catalog: checked, through the same door as pushes. */
  private async storeSegment(seg: SegmentHash & { start: Lsn }): Promise<void> {
    const partialPath = this.partialPath(seg.name);
    let sha256: string;
    if (seg.broken || seg.hashed !== this.segmentSize) {
      this.log.warn({ wal: seg.name }, 'the streamed segment was not written in order; hashing the file instead of the bytes as received');
      const rehash = newHash();
      for await (const chunk of readChunks(partialPath)) rehash.update(chunk);
      sha256 = rehash.digest('hex');
    } else {
      sha256 = seg.hash.digest('hex');
    }
    const head = Buffer.alloc(40);
    const fh = await fs.open(partialPath, 'r');
    await fh.read(head, 0, 40, 0);
    await fh.close();
    const header = readLongHeader(head);
    const identity = await this.catalog.identity();
    const storage = this.catalog.storage;
    const compression = this.archive.compressionFor({ kind: 'segment', name: seg.name, timeline: this.timeline, segment: seg.name });
    /** the segment's bytes from the local file into the catalog, under `key` */
    const upload = async (key: string) => {
      await storage.put(key, createReadStream(partialPath, { highWaterMark: 1 << 20 }), { compression, sizeHint: compression === 'none' ? this.segmentSize : undefined });
      await fs.rm(partialPath, { force: true });
      await fsyncDir(this.dir);
    };
    if (typeof header === 'string' || header.pageAddress !== seg.start || (identity && identity.systemIdentifier !== header.systemIdentifier)) {
      const aside = this.catalog.layout.errorKey(seg.name, 'streamed-invalid');
      await upload(aside);
      this.log.error({ wal: seg.name, aside: this.catalog.where(aside) }, `streamed segment failed its header check (${typeof header === 'string' ? header : 'address or system identifier'}); kept aside`);
      return;
    }
    // through the same door as pushes of the same server: never two copies under one name
    const result = await this.archive.store(seg.name, sha256, {
      hashed: true,
      beforePlace: async () => {
        await this.catalog.learnIdentity({ systemIdentifier: header.systemIdentifier, segmentSize: header.segmentSize, walMagic: header.magic, pgVersion: header.pgVersion });
      },
      place: upload,
      drop: () => fs.rm(partialPath, { force: true }),
    });
    if (result.outcome === 'conflict') {
      const aside = this.catalog.layout.errorKey(seg.name, 'streamed-conflict');
      await upload(aside);
      this.log.error({ wal: seg.name, aside: this.catalog.where(aside) }, 'streamed segment differs from the archived one; kept aside');
      return;
    }
    if (result.damagedAside) this.log.warn({ wal: seg.name, aside: result.damagedAside }, 'the stored copy was damaged; replaced by the identical streamed segment, the damaged copy kept aside');
    const stored = result.outcome === 'stored';
    if (!stored) return;
    this.log.info({ wal: seg.name }, 'streamed segment complete');
    await this.onSegment?.(seg.name, sha256);
  }

  /**
   * Copies the parent timeline's bytes before the branch point (streamed, archived .partial or
   * archived segment; an archived one only if it still matches its checksum). Returns the bytes
   * written, or undefined when none of them is here yet.
   */
  private async copyPrefix(fh: fs.FileHandle, prefix: { parentSegment: string; bytes: number }): Promise<Buffer | undefined> {
    const sources: Array<() => AsyncIterable<Buffer>> = [() => readChunks(this.partialPath(prefix.parentSegment))];
    for (const name of [`${prefix.parentSegment}.partial`, prefix.parentSegment]) {
      const stored = await this.catalog.findWal(name);
      if (stored) sources.push(() => readStoredWal(this.catalog, stored));
    }
    for (const source of sources) {
      const buf = Buffer.alloc(prefix.bytes);
      let filled = 0;
      try {
        // read to the end: a stored file is only checked once all of it has been hashed
        for await (const chunk of source()) {
          if (filled < prefix.bytes) filled += chunk.copy(buf, filled, 0, Math.min(chunk.length, prefix.bytes - filled));
        }
      } catch (err) {
        const e = err as NodeJS.ErrnoException;
        if (e.code !== 'ENOENT') this.log.error({ wal: prefix.parentSegment, err: e.message }, 'a copy of the parent timeline\'s segment cannot be used');
        continue;
      }
      if (filled < prefix.bytes) continue;
      await writeAt(fh, buf, 0);
      return buf;
    }
    this.log.warn({ wal: prefix.parentSegment }, 'the parent timeline\'s segment is not here yet; the first streamed segment of the new timeline will be incomplete until archive_command delivers it');
    return undefined;
  }
}

/** Adds bytes written at `offset` to a segment's hash; a gap (never-written bytes) reads as zeros. */
function hashAt(seg: SegmentHash, data: Uint8Array, offset: number): void {
  if (offset < seg.hashed) {
    seg.broken = true;
    return;
  }
  for (let gap = offset - seg.hashed; gap > 0; ) {
    const n = Math.min(gap, ZEROS.length);
    seg.hash.update(ZEROS.subarray(0, n));
    gap -= n;
  }
  seg.hash.update(data);
  seg.hashed = offset + data.length;
}

const ZEROS = Buffer.alloc(64 * 1024);

async function writeAt(fh: fs.FileHandle, data: Uint8Array, position: number): Promise<void> {
  let off = 0;
  while (off < data.length) {
    const { bytesWritten } = await fh.write(data, off, data.length - off, position + off);
    off += bytesWritten;
  }
}

export interface StreamedPartial {
  segment: string;
  /** bytes streamed so far */
  size: number;
  modifiedAt: Date;
}

/** The streamed partial segments this host holds for a server (streaming/<segment>.partial), oldest first. */
export async function streamedPartials(catalog: ServerCatalog): Promise<StreamedPartial[]> {
  const layout = catalog.layout;
  const dir = layout.streamingDir(catalog.barmanHome);
  const out: StreamedPartial[] = [];
  for (const f of (await fs.readdir(dir).catch(() => [] as string[])).sort()) {
    const segment = layout.streamingPartialSegment(f);
    if (!segment) continue;
    const st = await fs.stat(layout.streamingPartialPath(catalog.barmanHome, segment)).catch(() => undefined);
    if (st) out.push({ segment, size: st.size, modifiedAt: st.mtime });
  }
  return out;
}

/** What streaming received of `segment` so far, from this host's partial segment (ENOENT when there is none). */
export function readStreamedPartial(catalog: ServerCatalog, segment: string): AsyncIterable<Buffer> {
  return createReadStream(catalog.layout.streamingPartialPath(catalog.barmanHome, segment), { highWaterMark: 1 << 20 });
}
