// The catalog's facts for check, metrics and drills: what waits in errors/, the drill record.

import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { type DrillRecord, ServerCatalog } from '../../../../receiver/catalog/catalog';

const home = mkdtempSync(join(tmpdir(), 'barman-unit-catalog-'));
afterAll(() => rmSync(home, { recursive: true, force: true }));

describe('ServerCatalog: errors/, drills', () => {
  it('lists what waits in errors/ with the WAL file and the reason its name gives, not what was moved to errors/reviewed/', async () => {
    const catalog = new ServerCatalog(home, 'main');
    await catalog.ensureLayout();
    expect(await catalog.unreviewedErrors()).toEqual([]);
    writeFileSync(catalog.conflictPath('000000010000000000000003', 'ab'.repeat(32)), 'x');
    writeFileSync(join(catalog.errorsDir, '000000010000000000000004.20261130T120000.damaged'), 'x');
    writeFileSync(join(catalog.errorsDir, '00000002.history.20261130T120001.streamed-invalid'), 'x');
    writeFileSync(join(catalog.errorsDir, 'something someone left'), 'x');
    mkdirSync(catalog.reviewedErrorsDir);
    writeFileSync(join(catalog.reviewedErrorsDir, '000000010000000000000001.abababababababab.conflict'), 'x');
    const found = (await catalog.unreviewedErrors()).map(({ file, wal, reason }) => ({ file, wal, reason })).sort((a, b) => a.file.localeCompare(b.file));
    expect(found).toEqual([
      { file: '000000010000000000000003.abababababababab.conflict', wal: '000000010000000000000003', reason: 'conflict' },
      { file: '000000010000000000000004.20261130T120000.damaged', wal: '000000010000000000000004', reason: 'damaged' },
      { file: '00000002.history.20261130T120001.streamed-invalid', wal: '00000002.history', reason: 'streamed-invalid' },
      { file: 'something someone left', wal: undefined, reason: undefined },
    ]);
  });

  it('records drills, newest last, and keeps the newest 100', async () => {
    const catalog = new ServerCatalog(home, 'drilled');
    await catalog.ensureLayout();
    expect(await catalog.drills()).toEqual([]);
    const record = (n: number): DrillRecord => ({ at: new Date(Date.UTC(2026, 0, 1, 0, 0, n)).toISOString(), backupId: '20260101T000000', passed: n % 2 === 0, rtoSeconds: n % 2 === 0 ? n : null, checks: [], error: n % 2 === 0 ? null : 'restore: broken' });
    for (let n = 0; n < 105; n++) await catalog.recordDrill(record(n));
    const drills = await catalog.drills();
    expect(drills).toHaveLength(100);
    expect(drills[0]).toEqual(record(5));
    expect(drills.at(-1)).toEqual(record(104));
  });

  it('knows the bytes it holds at rest and the room left on its filesystem', async () => {
    const catalog = new ServerCatalog(home, 'sized');
    await catalog.ensureLayout();
    writeFileSync(join(catalog.walsDir, 'a'), Buffer.alloc(1000));
    writeFileSync(join(catalog.baseDir, 'b'), Buffer.alloc(234));
    expect(await catalog.bytesAtRest()).toBe(1234);
    const space = await catalog.space();
    expect(space.totalBytes).toBeGreaterThan(0);
    expect(space.availableBytes).toBeLessThanOrEqual(space.totalBytes);
  });
});
