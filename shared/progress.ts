// How long commands (backup, recover, restore) show how far they are, on stderr: for a person at
// a terminal a bar redrawn in place (cli-progress), for a log, a pipe or a cron mail one plain line
// per phase and nothing in between. Also how sizes and rates are spelled for people.
// Imported only by the commands that show progress: archive_command's `push` never loads it.

import { SingleBar } from 'cli-progress';
import type { RecoveryProgressEvent } from './recovery/writer';

/** Where a phase stands: files (and bytes) done of how many, and for how long. */
export interface PhaseCounts {
  /** what is being counted, e.g. `backup 20261125T120005`, `data files` */
  label: string;
  done: number;
  /** files in the phase, when known */
  total?: number;
  bytes: number;
  /** bytes in the phase, when known: the bar then measures bytes (big files move it too) */
  totalBytes?: number;
  seconds: number;
}

export type ProgressStream = NodeJS.WritableStream & { isTTY?: boolean; columns?: number };

export class Progress {
  private bar: SingleBar | undefined;
  private barLabel = '';

  constructor(private readonly out: ProgressStream = process.stderr) {}

  /** A terminal is watching: live bars; otherwise phase lines only. */
  get live(): boolean {
    return this.out.isTTY === true;
  }

  /** A line of its own (a phase began or ended); a bar on screen is finished first. */
  line(text: string): void {
    this.end();
    this.out.write(`${text}\n`);
  }

  /** Live counters of a phase: on a terminal a bar; elsewhere nothing (the phase's closing line tells the result). */
  update(c: PhaseCounts): void {
    if (!this.live) return;
    const byBytes = c.totalBytes !== undefined && c.totalBytes > 0;
    const value = byBytes ? c.bytes : c.done;
    const total = byBytes ? c.totalBytes! : c.total;
    const payload = { label: c.label, files: c.total === undefined ? `${c.done} files` : `${c.done}/${c.total} files`, size: humanSize(c.bytes), rate: rate(c.bytes, c.seconds) };
    if (this.bar && this.barLabel === c.label) {
      if (total !== undefined) this.bar.setTotal(total);
      this.bar.update(value, payload);
      return;
    }
    this.end();
    this.barLabel = c.label;
    this.bar = new SingleBar({
      stream: this.out,
      format: total === undefined ? '{label}  {files}  {size}  {rate}  {duration_formatted}' : '{label} [{bar}] {percentage}%  {files}  {size}  {rate}  ETA {eta_formatted}',
      barsize: 20,
      // a finished bar makes room for the phase's closing line (or an ERROR line)
      clearOnComplete: true,
      // leave the terminal's modes alone (a Ctrl-C must not leave the cursor hidden or line
      // wrapping off); cli-progress then cuts the line at the terminal's width itself
      hideCursor: null,
      linewrap: true,
      fps: 5,
    });
    this.bar.start(total ?? 0, value, payload);
  }

  /** Ends the bar on screen, if any (before an error is printed, or at a phase's end). */
  end(): void {
    this.bar?.stop();
    this.bar = undefined;
    this.barLabel = '';
  }
}

/** What is known of a backup's files at a moment: from the agent's own counters, or the receiver's backup-progress. */
export interface BackupFileCounts {
  files: number;
  bytes: number;
  seconds: number;
  totalFiles?: number;
  totalBytes?: number;
}

/**
 * A backup as both programs show it: `backup <id> started`, a bar while the files go (terminal
 * only), one closing line for the files (`967/967 files, 120.3 MiB in 2.1 s (57.3 MiB/s)`), and
 * `backup <id>: <STATUS>` for each status after that (WAITING_FOR_WALS, DONE, FAILED).
 */
export class BackupReport {
  private last: { backupId: string; counts: BackupFileCounts } | undefined;
  private filesReported = false;

  constructor(private readonly progress = new Progress()) {}

  status(backupId: string, status: string, reason?: string): void {
    if (status === 'STARTED') return this.progress.line(`backup ${backupId} started`);
    if (status !== 'FAILED') this.filesDone();
    this.progress.line(`backup ${backupId}: ${status}${reason ? ` (${reason})` : ''}`);
  }

  files(backupId: string, counts: BackupFileCounts): void {
    if (this.filesReported) return;
    this.last = { backupId, counts };
    if (counts.totalFiles !== undefined && counts.files >= counts.totalFiles) return this.filesDone();
    // the ID is on the `started` line above: the bar keeps to 80 columns
    this.progress.update({ label: 'backup', done: counts.files, total: counts.totalFiles, bytes: counts.bytes, totalBytes: counts.totalBytes, seconds: counts.seconds });
  }

  /** Every file is sent (or as many as will be: some may vanish while the backup runs): their closing line, once. */
  filesDone(): void {
    if (this.filesReported || !this.last) return;
    this.filesReported = true;
    const c = this.last.counts;
    this.progress.line(countsLine({ done: c.files, total: c.totalFiles, bytes: c.bytes, seconds: c.seconds }));
  }

  /** A line of the caller's own, in order with the report's. */
  line(text: string): void {
    this.progress.line(text);
  }

  end(): void {
    this.progress.end();
  }
}

/**
 * The recovery writer's events (data files, then WAL files) as both programs show them: a bar per
 * phase on a terminal (by bytes against the manifest's total, with rate and ETA), and one closing
 * line per phase, `data files: 967/967 files, 120.3 MiB in 2.1 s (...)` (a delta adds how many of
 * them were found unchanged and not written).
 */
export function recoveryProgress(progress: Progress): (e: RecoveryProgressEvent) => void {
  let phaseStart = Date.now();
  const closed = new Set<string>();
  return (e) => {
    if (closed.has(e.phase)) return;
    const label = e.phase === 'files' ? 'data files' : 'WAL files';
    const counts = { label, done: e.done, total: e.total, bytes: e.bytes, totalBytes: e.totalBytes, seconds: (Date.now() - phaseStart) / 1000 };
    if (e.done < e.total) return progress.update(counts);
    closed.add(e.phase);
    progress.line(`${label}: ${countsLine(counts)}${e.unchanged !== undefined ? `, ${e.unchanged} of them unchanged (not written)` : ''}`);
    phaseStart = Date.now();
  };
}

/** `967/967 files, 120.3 MiB in 2.1 s (57.3 MiB/s)`: a phase's closing line. */
export function countsLine(c: Omit<PhaseCounts, 'label' | 'totalBytes'>): string {
  return `${c.total === undefined ? c.done : `${c.done}/${c.total}`} files, ${humanSize(c.bytes)} in ${c.seconds.toFixed(1)} s (${rate(c.bytes, c.seconds)})`;
}

export function humanSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

function rate(bytes: number, seconds: number): string {
  return seconds > 0 ? `${humanSize(Math.round(bytes / seconds))}/s` : '-';
}
