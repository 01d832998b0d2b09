import { describe, expect, it } from 'vitest';
import { parseStoredWalFile } from '../../../../receiver/catalog/catalog';

const SHA = '0123456789abcdef'.repeat(4);

describe('parseStoredWalFile', () => {
  it.each([
    [`000000010000000000000003-${SHA}`, { name: '000000010000000000000003', sha256: SHA, compression: 'none' }],
    [`000000010000000000000003-${SHA}.gz`, { name: '000000010000000000000003', sha256: SHA, compression: 'gzip' }],
    [`000000010000000000000003.partial-${SHA}`, { name: '000000010000000000000003.partial', sha256: SHA, compression: 'none' }],
    [`00000002.history-${SHA}`, { name: '00000002.history', sha256: SHA, compression: 'none' }],
    [`000000010000000000000002.00000028.backup-${SHA}`, { name: '000000010000000000000002.00000028.backup', sha256: SHA, compression: 'none' }],
  ])('reads %s: the WAL file, the checksum recorded with it, how it is stored', (file, expected) => {
    expect(parseStoredWalFile(file)).toEqual(expected);
  });

  it('reads a file stored before checksums: no checksum', () => {
    expect(parseStoredWalFile('000000010000000000000003')).toEqual({ name: '000000010000000000000003', sha256: undefined, compression: 'none' });
    expect(parseStoredWalFile('000000010000000000000003.gz')).toEqual({ name: '000000010000000000000003', sha256: undefined, compression: 'gzip' });
    expect(parseStoredWalFile('00000002.history')).toMatchObject({ name: '00000002.history', sha256: undefined });
  });

  it.each([
    ['a temporary file', `000000010000000000000003-${SHA}.1234.tmp`],
    ['an upper-case checksum', `000000010000000000000003-${SHA.toUpperCase()}`],
    ['a short checksum', '000000010000000000000003-0123456789abcdef'],
    ['no WAL name', `garbage-${SHA}`],
    ['a conflict copy', '000000010000000000000003.0123456789abcdef.conflict'],
  ])('is not fooled by %s', (_what, file) => {
    expect(parseStoredWalFile(file)).toBeUndefined();
  });
});
