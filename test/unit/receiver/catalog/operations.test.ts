// The catalog's facts for check, metrics and drills: what waits in errors/, the drill record.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { type DrillRecord, ServerCatalog } from '../../../../receiver/catalog/catalog';
import { PosixDriver } from '../../../../receiver/storage/posix-driver';
import { Storage } from '../../../../receiver/storage/storage';

const home = mkdtempSync(join(tmpdir(), 'barman-unit-catalog-'));
afterAll(() => rmSync(home, { recursive: true, force: true }));

/** A server's catalog under `home` on the posix driver (zstd, the default), as serve opens it. */
const catalogOf = (server: string) => new ServerCatalog(new Storage(new PosixDriver(home)), home, server, 'zstd');

describe('ServerCatalog: errors/, drills', () => {
  it('lists what waits in errors/ with the WAL file and the reason its name gives, not what was moved to errors/reviewed/', async () => {
    const catalog = catalogOf('main');
    expect(await catalog.unreviewedErrors()).toEqual([]);
    const { storage, layout } = catalog;
    // a conflicting segment is kept compressed, as segments are stored
    await storage.put(layout.conflictKey('000000010000000000000003', 'ab'.repeat(32)), Buffer.from('x'), { compression: 'zstd' });
    await storage.put(layout.errorKey('000000010000000000000004', 'damaged', new Date('2026-11-30T12:00:00Z')), Buffer.from('x'));
    await storage.put(layout.errorKey('00000002.history', 'streamed-invalid', new Date('2026-11-30T12:00:01Z')), Buffer.from('x'));
    // what a DBA left there by hand
    writeFileSync(join(home, 'main', 'errors', 'something someone left'), 'x');
    await storage.put(`${layout.reviewedErrorsPrefix}000000010000000000000001.abababababababab.conflict`, Buffer.from('x'));
    const found = (await catalog.unreviewedErrors()).map(({ file, wal, reason }) => ({ file, wal, reason })).sort((a, b) => a.file.localeCompare(b.file));
    expect(found).toEqual([
      { file: '000000010000000000000003.abababababababab.conflict.zst', wal: '000000010000000000000003', reason: 'conflict' },
      { file: '000000010000000000000004.20261130T120000.damaged', wal: '000000010000000000000004', reason: 'damaged' },
      { file: '00000002.history.20261130T120001.streamed-invalid', wal: '00000002.history', reason: 'streamed-invalid' },
      { file: 'something someone left', wal: undefined, reason: undefined },
    ]);
  });

  it('records drills, newest last, and keeps the newest 100', async () => {
    const catalog = catalogOf('drilled');
    expect(await catalog.drills()).toEqual([]);
    const record = (n: number): DrillRecord => ({ at: new Date(Date.UTC(2026, 0, 1, 0, 0, n)).toISOString(), backupId: '20260101T000000', passed: n % 2 === 0, rtoSeconds: n % 2 === 0 ? n : null, checks: [], error: n % 2 === 0 ? null : 'restore: broken' });
    for (let n = 0; n < 105; n++) await catalog.recordDrill(record(n));
    const drills = await catalog.drills();
    expect(drills).toHaveLength(100);
    expect(drills[0]).toEqual(record(5));
    expect(drills.at(-1)).toEqual(record(104));
  });

  it('knows the bytes it holds at rest (as stored, compressed) and the room left on its filesystem', async () => {
    const catalog = catalogOf('sized');
    await catalog.storage.put('sized/wals/a', Buffer.alloc(1000));
    await catalog.storage.put('sized/base/b', Buffer.alloc(234));
    const packed = await catalog.storage.put('sized/base/c', Buffer.alloc(100_000), { compression: 'zstd' });
    expect(packed.storedSize).toBeLessThan(1000);
    expect(await catalog.bytesAtRest()).toBe(1234 + packed.storedSize);
    const space = (await catalog.space())!;
    expect(space.totalBytes).toBeGreaterThan(0);
    expect(space.availableBytes).toBeLessThanOrEqual(space.totalBytes);
  });
});
