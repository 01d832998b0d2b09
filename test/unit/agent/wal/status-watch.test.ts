// The daemon's watch on pg_wal/archive_status/, on a real folder: it reports a .ready as PostgreSQL
// creates it and the .done it is renamed to, never a .ready that is gone, and says when the folder
// itself went (the archiver's rescan starts it again).

import { mkdirSync, mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { StatusWatch } from '../../../../agent/wal/status-watch';
import { waitFor } from '../../../harness/wait';

const root = mkdtempSync(join(tmpdir(), 'barman-status-watch-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let n = 0;
const SEGMENT = '000000010000000000000007';

function watched() {
  const dir = join(root, String(++n), 'archive_status');
  mkdirSync(dir, { recursive: true });
  const seen: string[] = [];
  const w = new StatusWatch(dir, (name) => seen.push(name), pino({ level: 'silent' }));
  return { dir, seen, w };
}

describe('StatusWatch', () => {
  it('reports a .ready PostgreSQL creates, then the .done it renames it to, and not the .ready once it is gone', async () => {
    const { dir, seen, w } = watched();
    w.start();
    try {
      writeFileSync(join(dir, `${SEGMENT}.ready`), '');
      await waitFor('the .ready to be reported', () => seen.includes(`${SEGMENT}.ready`));
      renameSync(join(dir, `${SEGMENT}.ready`), join(dir, `${SEGMENT}.done`));
      await waitFor('the .done to be reported', () => seen.includes(`${SEGMENT}.done`));
      // the rename names the .ready too: it is gone, so it is not reported again
      writeFileSync(join(dir, 'marker.ready'), '');
      await waitFor('a later event to be reported', () => seen.includes('marker.ready'));
      expect(seen.filter((s) => s === `${SEGMENT}.ready`)).toHaveLength(1);
    } finally {
      w.close();
    }
  });

  it('ignores files PostgreSQL keeps there that are neither .ready nor .done', async () => {
    const { dir, seen, w } = watched();
    w.start();
    try {
      writeFileSync(join(dir, 'something.tmp'), '');
      writeFileSync(join(dir, `${SEGMENT}.ready`), '');
      await waitFor('the .ready to be reported', () => seen.includes(`${SEGMENT}.ready`));
      expect(seen).toEqual([`${SEGMENT}.ready`]);
    } finally {
      w.close();
    }
  });

  it('stops watching when the folder is removed, and watches it again once it is back and started', async () => {
    const { dir, seen, w } = watched();
    w.start();
    expect(w.watching).toBe(true);
    rmSync(dir, { recursive: true });
    await waitFor('the watch to notice the folder went', () => !w.watching);
    mkdirSync(dir);
    w.start();
    try {
      expect(w.watching).toBe(true);
      writeFileSync(join(dir, `${SEGMENT}.ready`), '');
      await waitFor('the .ready in the new folder to be reported', () => seen.includes(`${SEGMENT}.ready`));
    } finally {
      w.close();
    }
  });
});
