// The posix driver's sync: deferred writes made durable, and a file that cannot be synced named
// in the error (not whichever key was started last).

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { PosixDriver } from '../../../../receiver/storage/posix-driver';
import { Storage } from '../../../../receiver/storage/storage';
import { BarmanError, ErrorCode } from '../../../../shared/errors';

const root = mkdtempSync(join(tmpdir(), 'barman-unit-posix-sync-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('PosixDriver.sync', () => {
  it('names the missing file among those it syncs', async () => {
    const storage = new Storage(new PosixDriver(root));
    const kept = await Promise.all(['a', 'c', 'd'].map((n) => storage.put(`main/base/b1/${n}`, Buffer.from(n), { sync: false })));
    const keys = [kept[0]!.key, 'main/base/b1/missing', kept[1]!.key, kept[2]!.key];
    const err = await storage.sync(keys).then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(BarmanError);
    expect((err as BarmanError).code).toBe(ErrorCode.STORAGE_NOT_FOUND);
    expect((err as BarmanError).message).toMatch(/syncing main\/base\/b1\/missing in /);
    await storage.sync(kept.map((k) => k.key));
  });
});
