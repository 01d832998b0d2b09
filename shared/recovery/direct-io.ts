// Writing a restored file with O_DIRECT: the bytes go from our memory to the disk, never through
// the page cache. A buffered write copies every page into a page-cache page the kernel must first
// find and clear (on a VM whose host reclaims free memory, a first touch of each costs a fault on
// the host too), then writes it back at the fsync; a restore writes each byte once and reads none
// of it back, so the cache only costs. Direct I/O wants the memory, the file offset and the length
// aligned to the device's logical block; Node's buffers are not page-aligned, so the bytes are
// copied into slabs of a WebAssembly.Memory (V8 maps it whole, page-aligned) and written from there.
//
// Any refusal falls back to buffered writes for the rest of the file: a filesystem that rejects
// O_DIRECT at open (the caller opens again without it) or at a write (the file is reopened through
// /proc/self/fd without the flag), and the pool being out of slabs (the caller writes buffered).

import { constants, promises as fs } from 'node:fs';

/** bytes per slab: one write */
const SLAB = 1 << 20;

/** slabs one file may fill while its earlier ones are being written */
const SLABS_PER_FILE = 3;

/** files written directly at once (the writer's parallelism); a file past them is written buffered */
const FILES = 4;

/** offsets and lengths are multiples of this (the largest logical block size in use: 4 KiB) */
const DIRECT_ALIGN = 4096;

export const O_DIRECT: number = constants.O_DIRECT ?? 0;

/** the one part of WebAssembly used here (Node's type definitions for version 20 lack it) */
interface WasmMemory {
  readonly buffer: ArrayBuffer;
}
const { Memory } = (globalThis as unknown as { WebAssembly: { Memory: new (descriptor: { initial: number }) => WasmMemory } }).WebAssembly;

let memory: WasmMemory | undefined;
const freeSets: Buffer[][] = [];
/** false once a write showed direct I/O does not work here: every later file is written buffered */
let usable = O_DIRECT !== 0 && process.platform === 'linux';

/**
 * Slabs for writing a file of `size` bytes directly, or undefined when it cannot be: its size not
 * aligned, direct I/O found not to work here, or every set of slabs in use. They go back to the
 * pool with `releaseSlabs` (DirectOutput does it in `finish`/`release`).
 */
export function reserveSlabs(size: number): Buffer[] | undefined {
  if (!usable || size % DIRECT_ALIGN !== 0) return undefined;
  if (!memory) {
    try {
      memory = new Memory({ initial: (FILES * SLABS_PER_FILE * SLAB) / 65536 });
    } catch {
      // no address space for it (a ulimit -v): written buffered, as everywhere without O_DIRECT
      usable = false;
      return undefined;
    }
    for (let f = 0; f < FILES; f++) {
      const set: Buffer[] = [];
      for (let s = 0; s < SLABS_PER_FILE; s++) set.push(Buffer.from(memory.buffer, (f * SLABS_PER_FILE + s) * SLAB, SLAB));
      freeSets.push(set);
    }
  }
  return freeSets.pop();
}

export function releaseSlabs(slabs: Buffer[]): void {
  freeSets.push(slabs);
}

/** Direct I/O does not work here (a filesystem refused O_DIRECT at open): later files are written buffered. */
export function directRefused(): void {
  usable = false;
}

/**
 * The bytes of one file, appended in order and written with O_DIRECT a slab at a time, one write
 * in flight (the next slab fills meanwhile). `add` copies the chunk before it returns, so a source
 * may reuse its buffer. `finish` writes what is left (a tail that is not aligned is not written:
 * the file's size then differs from the manifest's, and the caller refuses it).
 */
export class DirectOutput {
  private readonly slabs: Buffer[];
  private readonly pending: Array<Promise<void> | undefined>;
  private current = 0;
  private fill = 0;
  private position = 0;
  private last: Promise<void> = Promise.resolve();
  private buffered: fs.FileHandle | undefined;

  constructor(private readonly fh: fs.FileHandle, slabs: Buffer[], private readonly written: (n: number) => void) {
    this.slabs = slabs;
    this.pending = slabs.map(() => undefined);
  }

  async add(chunk: Uint8Array): Promise<void> {
    for (let off = 0; off < chunk.length; ) {
      if (this.fill === 0) await this.pending[this.current];
      const slab = this.slabs[this.current]!;
      const n = Math.min(chunk.length - off, SLAB - this.fill);
      slab.set(chunk.subarray(off, off + n), this.fill);
      this.fill += n;
      off += n;
      if (this.fill === SLAB) this.submit();
    }
  }

  /** Writes the rest and waits for every write; the slabs go back to the pool. */
  async finish(): Promise<void> {
    try {
      const tail = this.fill - (this.fill % DIRECT_ALIGN);
      if (tail > 0) this.submit(tail);
      await this.last;
    } finally {
      await this.release();
    }
  }

  /** Waits for the writes in flight (their errors are the caller's to have seen) and gives the slabs back. */
  async release(): Promise<void> {
    await this.last.catch(() => undefined);
    await this.buffered?.close();
    this.buffered = undefined;
    if (this.slabs.length) releaseSlabs(this.slabs.splice(0));
  }

  private submit(length = this.fill): void {
    const slab = this.slabs[this.current]!.subarray(0, length);
    const position = this.position;
    const write = this.last.then(() => this.write(slab, position));
    write.catch(() => undefined); // seen through `last` by finish()
    this.pending[this.current] = write;
    this.last = write;
    this.position += length;
    this.current = (this.current + 1) % this.slabs.length;
    this.fill = 0;
  }

  private async write(slab: Buffer, position: number): Promise<void> {
    if (!this.buffered) {
      try {
        await writeAll(this.fh, slab, position);
        this.written(slab.length);
        return;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
        // the filesystem takes O_DIRECT at open but not these writes: the rest goes buffered,
        // through a second handle on the same file (never the path, which could have changed)
        usable = false;
        this.buffered = await fs.open(`/proc/self/fd/${this.fh.fd}`, constants.O_WRONLY);
      }
    }
    await writeAll(this.buffered, slab, position);
    this.written(slab.length);
  }
}

/** Writes all of `chunk` at `position` (a short write is continued, never lost). */
export async function writeAll(fh: fs.FileHandle, chunk: Uint8Array, position: number): Promise<void> {
  for (let off = 0; off < chunk.length; ) {
    const { bytesWritten } = await fh.write(chunk, off, chunk.length - off, position + off);
    off += bytesWritten;
  }
}
