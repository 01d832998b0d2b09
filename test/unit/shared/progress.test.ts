import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { BackupReport, countsLine, humanSize, Progress, recoveryProgress } from '../../../shared/progress';

/** stderr as a pipe or a log file sees it, or as a terminal (isTTY) does. */
function stream(tty: boolean): Writable & { isTTY?: boolean; columns?: number; text: () => string } {
  const chunks: string[] = [];
  const out = new Writable({
    write(chunk, _enc, done) {
      chunks.push(String(chunk));
      done();
    },
  }) as Writable & { isTTY?: boolean; columns?: number; text: () => string };
  if (tty) {
    out.isTTY = true;
    out.columns = 160;
  }
  out.text = () => chunks.join('');
  return out;
}

const ID = '20261125T120005';
const MiB = 1024 * 1024;

/** A backup as the receiver reports it to a waiting admin: STARTED, progress, all files in, WAITING_FOR_WALS, DONE. */
function playBackup(report: BackupReport): void {
  report.status(ID, 'STARTED');
  report.files(ID, { files: 100, bytes: 5 * MiB, seconds: 1, totalFiles: 970, totalBytes: 40 * MiB });
  report.files(ID, { files: 500, bytes: 20 * MiB, seconds: 2, totalFiles: 970, totalBytes: 40 * MiB });
  report.files(ID, { files: 970, bytes: 40 * MiB, seconds: 4, totalFiles: 970, totalBytes: 40 * MiB });
  report.status(ID, 'WAITING_FOR_WALS');
  report.status(ID, 'DONE');
  report.end();
}

describe('BackupReport', () => {
  it('writes one plain line per phase when stderr is not a terminal', () => {
    const out = stream(false);
    playBackup(new BackupReport(new Progress(out)));
    expect(out.text()).toBe([
      `backup ${ID} started`,
      '970/970 files, 40.0 MiB in 4.0 s (10.0 MiB/s)',
      `backup ${ID}: WAITING_FOR_WALS`,
      `backup ${ID}: DONE`,
      '',
    ].join('\n'));
  });

  it('closes the files when a status says they are in, even if the counts never reached the total (a file vanished)', () => {
    const out = stream(false);
    const report = new BackupReport(new Progress(out));
    report.status(ID, 'STARTED');
    report.files(ID, { files: 968, bytes: 39 * MiB, seconds: 3, totalFiles: 970, totalBytes: 40 * MiB });
    report.status(ID, 'DONE');
    expect(out.text().split('\n')).toEqual([`backup ${ID} started`, '968/970 files, 39.0 MiB in 3.0 s (13.0 MiB/s)', `backup ${ID}: DONE`, '']);
  });

  it('says nothing of files for a backup that FAILED, only why', () => {
    const out = stream(false);
    const report = new BackupReport(new Progress(out));
    report.status(ID, 'STARTED');
    report.files(ID, { files: 3, bytes: 100, seconds: 1 });
    report.status(ID, 'FAILED', 'the agent connection was lost during the backup');
    expect(out.text()).toBe(`backup ${ID} started\nbackup ${ID}: FAILED (the agent connection was lost during the backup)\n`);
  });

  it('draws a live bar on a terminal, then the same closing lines', () => {
    const out = stream(true);
    playBackup(new BackupReport(new Progress(out)));
    const text = out.text();
    // the bar: label, percentage of the bytes, files, size, rate
    expect(text).toMatch(/backup \[[=-]{20}\] \d+% {2}\d+\/970 files {2}[\d.]+ MiB {2}[\d.]+ MiB\/s {2}ETA \d/);
    expect(text).toContain('970/970 files, 40.0 MiB in 4.0 s (10.0 MiB/s)\n');
    expect(text.trimEnd().endsWith(`backup ${ID}: DONE`)).toBe(true);
  });
});

describe('recoveryProgress', () => {
  it('closes each phase with one line off a terminal', () => {
    const out = stream(false);
    const show = recoveryProgress(new Progress(out));
    show({ phase: 'files', done: 200, total: 967, bytes: 10 * MiB });
    show({ phase: 'files', done: 967, total: 967, bytes: 50 * MiB });
    show({ phase: 'wal', done: 1, total: 2, bytes: 16 * MiB });
    show({ phase: 'wal', done: 2, total: 2, bytes: 32 * MiB });
    expect(out.text()).toMatch(/^data files: 967\/967 files, 50\.0 MiB in [\d.]+ s \([^)]+\)\nWAL files: 2\/2 files, 32\.0 MiB in [\d.]+ s \([^)]+\)\n$/);
  });

  it('on a terminal measures the data files by bytes against the backup\'s total, with an ETA; a delta says how many were unchanged, once', () => {
    const out = stream(true);
    const show = recoveryProgress(new Progress(out));
    show({ phase: 'files', done: 10, total: 967, bytes: 10 * MiB, totalBytes: 40 * MiB, unchanged: 8 });
    show({ phase: 'files', done: 967, total: 967, bytes: 40 * MiB, totalBytes: 40 * MiB, unchanged: 920 });
    show({ phase: 'files', done: 967, total: 967, bytes: 40 * MiB, totalBytes: 40 * MiB, unchanged: 920 });
    const text = out.text();
    expect(text).toMatch(/data files \[[=-]{20}\] 25% {2}10\/967 files {2}10\.0 MiB {2}(-|[\d.]+ \S*B\/s) {2}ETA/);
    expect(text.match(/data files: 967\/967 files, 40\.0 MiB in [\d.]+ s \([^)]+\), 920 of them unchanged \(not written\)\n/g)).toHaveLength(1);
  });
});

describe('sizes for people', () => {
  it.each([
    [0, '0 B'],
    [1023, '1023 B'],
    [1536, '1.5 KiB'],
    [40 * MiB, '40.0 MiB'],
    [3 * 1024 * 1024 * MiB, '3.0 TiB'],
  ])('%d bytes is %s', (bytes, text) => {
    expect(humanSize(bytes)).toBe(text);
  });

  it('gives no rate for no time', () => {
    expect(countsLine({ done: 1, bytes: 10, seconds: 0 })).toBe('1 files, 10 B in 0.0 s (-)');
  });
});
