import { describe, expect, it } from 'vitest';
import { CatalogLayout, encodePathSegment } from '../../../../receiver/catalog/layout';
import { parseStoredKey } from '../../../../receiver/storage/compression';
import type { StoredObject } from '../../../../receiver/storage/storage';

const SHA = '0123456789abcdef'.repeat(4);
const layout = new CatalogLayout('main');

/** A stored object as a listing yields it. */
function listed(key: string): StoredObject {
  const { key: plainKey, compression } = parseStoredKey(key);
  return { key, plainKey, compression, size: 10, mtime: new Date(0) };
}

describe('CatalogLayout.parseWal', () => {
  it.each([
    [`main/wals/0000000100000000/000000010000000000000003-${SHA}`, { name: '000000010000000000000003', sha256: SHA, compression: 'none' }],
    [`main/wals/0000000100000000/000000010000000000000003-${SHA}.gz`, { name: '000000010000000000000003', sha256: SHA, compression: 'gzip' }],
    [`main/wals/0000000100000000/000000010000000000000003-${SHA}.zst`, { name: '000000010000000000000003', sha256: SHA, compression: 'zstd' }],
    [`main/wals/0000000100000000/000000010000000000000003-${SHA}.lz4`, { name: '000000010000000000000003', sha256: SHA, compression: 'lz4' }],
    [`main/wals/0000000100000000/000000010000000000000003.partial-${SHA}`, { name: '000000010000000000000003.partial', sha256: SHA, compression: 'none' }],
    [`main/wals/00000002.history-${SHA}`, { name: '00000002.history', sha256: SHA, compression: 'none' }],
    [`main/wals/000000010000000000000002.00000028.backup-${SHA}`, { name: '000000010000000000000002.00000028.backup', sha256: SHA, compression: 'none' }],
  ])('reads %s: the WAL file, the checksum recorded with it, how it is stored', (key, expected) => {
    expect(layout.parseWal(listed(key))).toMatchObject({ ...expected, key });
  });

  it('reads a file stored before checksums: no checksum', () => {
    expect(layout.parseWal(listed('main/wals/0000000100000000/000000010000000000000003'))).toMatchObject({ name: '000000010000000000000003', sha256: undefined, compression: 'none' });
    expect(layout.parseWal(listed('main/wals/0000000100000000/000000010000000000000003.gz'))).toMatchObject({ name: '000000010000000000000003', sha256: undefined, compression: 'gzip' });
    expect(layout.parseWal(listed('main/wals/00000002.history'))).toMatchObject({ name: '00000002.history', sha256: undefined });
  });

  it.each([
    ['an upper-case checksum', `main/wals/0000000100000000/000000010000000000000003-${SHA.toUpperCase()}`],
    ['a short checksum', 'main/wals/0000000100000000/000000010000000000000003-0123456789abcdef'],
    ['no WAL name', `main/wals/0000000100000000/garbage-${SHA}`],
    ['a conflict copy', 'main/errors/000000010000000000000003.0123456789abcdef.conflict'],
    ['a segment outside its directory', `main/wals/000000010000000000000003-${SHA}`],
    ['a segment in another segment\'s directory', `main/wals/0000000100000001/000000010000000000000003-${SHA}`],
    ['another server\'s WAL', `other/wals/0000000100000000/000000010000000000000003-${SHA}`],
  ])('is not fooled by %s', (_what, key) => {
    expect(layout.parseWal(listed(key))).toBeUndefined();
  });
});

describe('CatalogLayout keys', () => {
  it('puts each thing where docs/catalog.md says', () => {
    expect(layout.walKey('000000010000000000000003', SHA)).toBe(`main/wals/0000000100000000/000000010000000000000003-${SHA}`);
    expect(layout.walKey('00000002.history', SHA)).toBe(`main/wals/00000002.history-${SHA}`);
    expect(layout.backupInfoKey('20261130T120000')).toBe('main/base/20261130T120000/backup.info');
    expect(layout.manifestKey('20261130T120000')).toBe('main/base/20261130T120000/backup_manifest');
    expect(layout.backupFileKey('20261130T120000', 'base/1/1259')).toBe('main/base/20261130T120000/data/base/1/1259');
    expect(layout.conflictKey('000000010000000000000003', SHA)).toBe('main/errors/000000010000000000000003.0123456789abcdef.conflict');
    expect(() => layout.walKey('../etc/passwd', SHA)).toThrow(RangeError);
    expect(() => layout.backupInfoKey('../x')).toThrow(RangeError);
  });

  it('keeps PostgreSQL\'s own file names as they are and maps any other name to one a key may hold', () => {
    for (const plain of ['pg_control', 'PG_VERSION', '1259_fsm', 'postgresql.auto.conf', '16384.1']) expect(encodePathSegment(plain)).toBe(plain);
    const odd = ['a b', '.hidden', '_underscore', 'log.gz', 'naïve', 'é'.repeat(127)];
    const keys = odd.map(encodePathSegment);
    for (const k of keys) expect(k).toMatch(/^_[0-9a-f]{64}$/);
    expect(new Set(keys).size).toBe(odd.length);
  });
});
