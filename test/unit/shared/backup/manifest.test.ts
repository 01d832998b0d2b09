import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { buildManifest, crc32cManifestHex, crc32cWireHex, describeChecksum, fileChecksum, type ManifestFile, manifestVersionFor, parseManifest } from '../../../../shared/backup/manifest';

const files: ManifestFile[] = [
  { path: 'backup_label', size: 227, mtime: 1764500000, checksumAlgorithm: 'SHA256', checksum: 'a'.repeat(64) },
  { path: 'base/1/1259', size: 8192, mtime: 1764499990, checksumAlgorithm: 'SHA256', checksum: 'b'.repeat(64) },
  { path: 'global/pg_control', size: 8192, mtime: 1764500001, checksumAlgorithm: 'SHA256', checksum: 'c'.repeat(64) },
];
const walRanges = [{ timeline: 1, startLsn: '0/2000028', endLsn: '0/2000138' }];
/** above 2^63: a JS number would round it */
const SYSID = '17712075971341596236';

describe('backup_manifest by PostgreSQL version', () => {
  it('is version 1 up to PostgreSQL 16 and version 2 from 17, as each version\'s pg_basebackup writes it', () => {
    expect(manifestVersionFor(130023)).toBe(1);
    expect(manifestVersionFor(160014)).toBe(1);
    expect(manifestVersionFor(170000)).toBe(2);
    expect(manifestVersionFor(180004)).toBe(2);
  });

  it('version 1 opens with the version and the file list, no system identifier', () => {
    const text = buildManifest({ pgVersion: 160014, systemIdentifier: SYSID }, files, walRanges);
    expect(text.startsWith('{ "PostgreSQL-Backup-Manifest-Version": 1,\n"Files": [\n{ "Path": "backup_label", ')).toBe(true);
    expect(text).not.toContain('System-Identifier');
  });

  it('version 2 carries the system identifier as an unquoted 64-bit number on its second line', () => {
    const text = buildManifest({ pgVersion: 170010, systemIdentifier: SYSID }, files, walRanges);
    expect(text.startsWith(`{ "PostgreSQL-Backup-Manifest-Version": 2,\n"System-Identifier": ${SYSID},\n"Files": [\n{ "Path": "backup_label", `)).toBe(true);
  });

  it.each([160014, 170010])('checksums every byte before "Manifest-Checksum" (server %i) and reads back exactly', (pgVersion) => {
    const text = buildManifest({ pgVersion, systemIdentifier: SYSID }, files, walRanges);
    const at = text.lastIndexOf('"Manifest-Checksum"');
    expect(text.slice(at)).toBe(`"Manifest-Checksum": "${createHash('sha256').update(text.slice(0, at)).digest('hex')}"}\n`);
    const parsed = parseManifest(text);
    expect(parsed.version).toBe(manifestVersionFor(pgVersion));
    expect(parsed.systemIdentifier).toBe(pgVersion >= 170000 ? SYSID : undefined);
    expect(parsed.files).toEqual(files);
    expect(parsed.walRanges).toEqual(walRanges);
  });

  it('refuses to write a version 2 manifest without a numeric system identifier', () => {
    expect(() => buildManifest({ pgVersion: 170010, systemIdentifier: '' }, files, walRanges)).toThrow(RangeError);
  });

  it('refuses a manifest whose system identifier was changed (the checksum no longer matches)', () => {
    const text = buildManifest({ pgVersion: 180004, systemIdentifier: SYSID }, files, walRanges);
    expect(() => parseManifest(text.replace(SYSID, '7712075971341596236'))).toThrow(/checksum mismatch/);
  });

  it('refuses an unknown manifest version and a version 2 manifest without a system identifier', () => {
    const rewrite = (text: string) => {
      const at = text.lastIndexOf('"Manifest-Checksum"');
      const head = text.slice(0, at);
      return `${head}"Manifest-Checksum": "${createHash('sha256').update(head).digest('hex')}"}\n`;
    };
    const v1 = buildManifest({ pgVersion: 160014, systemIdentifier: SYSID }, files, walRanges);
    expect(() => parseManifest(rewrite(v1.replace('Version": 1', 'Version": 3')))).toThrow(/unknown manifest version 3/);
    expect(() => parseManifest(rewrite(v1.replace('Version": 1', 'Version": 2')))).toThrow(/without a System-Identifier/);
  });
});

describe('backup_manifest file checksums', () => {
  /** a manifest text whose head was edited, its own checksum made right again */
  const rewrite = (text: string) => {
    const at = text.lastIndexOf('"Manifest-Checksum"');
    const head = text.slice(0, at);
    return `${head}"Manifest-Checksum": "${createHash('sha256').update(head).digest('hex')}"}\n`;
  };
  const bytes = Buffer.from('15\n');

  it('writes a CRC-32C as PostgreSQL does: the hex of the value\'s little-endian bytes', () => {
    // CRC-32C of "123456789" is 0xe3069283 (the check value of the Castagnoli polynomial)
    const crc = fileChecksum('CRC32C');
    crc.update(Buffer.from('12345'));
    crc.update(Buffer.from('6789'));
    expect(crc.digest()).toBe('839206e3');
    expect(crc32cManifestHex(0xe3069283)).toBe('839206e3');
    // the wire carries the value's own hex; one turns into the other
    expect(crc32cWireHex('839206e3')).toBe('e3069283');
    const sha = fileChecksum('SHA256');
    sha.update(bytes);
    expect(sha.digest()).toBe(createHash('sha256').update(bytes).digest('hex'));
  });

  it('names each entry\'s algorithm and reads back entries of either algorithm in one manifest', () => {
    const mixed: ManifestFile[] = [
      { path: 'backup_label', size: 227, mtime: 1764500000, checksumAlgorithm: 'CRC32C', checksum: '0a1b2c3d' },
      { path: 'base/1/1259', size: 8192, mtime: 1764499990, checksumAlgorithm: 'SHA256', checksum: 'b'.repeat(64) },
      { path: 'global/pg_control', size: 8192, mtime: 1764500001, checksumAlgorithm: undefined, checksum: '' },
    ];
    const text = buildManifest({ pgVersion: 150018, systemIdentifier: SYSID }, mixed, walRanges);
    expect(text).toContain('{ "Path": "backup_label", "Size": 227, "Last-Modified": "2025-11-30 10:53:20 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "0a1b2c3d" }');
    expect(text).toContain('"Checksum-Algorithm": "SHA256", "Checksum": "bbbb');
    // an entry without a checksum has neither key, as pg_basebackup --manifest-checksums=none writes it
    expect(text).toContain('{ "Path": "global/pg_control", "Size": 8192, "Last-Modified": "2025-11-30 10:53:21 GMT" }');
    expect(parseManifest(text).files).toEqual(mixed);
  });

  it('refuses to write a checksum that is not of its algorithm', () => {
    expect(() => buildManifest({ pgVersion: 150018, systemIdentifier: SYSID }, [{ path: 'PG_VERSION', size: 3, mtime: 0, checksumAlgorithm: 'CRC32C', checksum: 'a'.repeat(64) }], walRanges)).toThrow(RangeError);
    expect(() => buildManifest({ pgVersion: 150018, systemIdentifier: SYSID }, [{ path: 'PG_VERSION', size: 3, mtime: 0, checksumAlgorithm: 'SHA256', checksum: '0a1b2c3d' }], walRanges)).toThrow(RangeError);
  });

  it('refuses an algorithm it cannot verify and a checksum of the wrong shape, naming the file', () => {
    const text = buildManifest({ pgVersion: 150018, systemIdentifier: SYSID }, [{ path: 'PG_VERSION', size: 3, mtime: 0, checksumAlgorithm: 'CRC32C', checksum: '0a1b2c3d' }], walRanges);
    expect(() => parseManifest(rewrite(text.replace('"CRC32C"', '"SHA512"')))).toThrow(/PG_VERSION: checksum algorithm SHA512 is not one barman-ts verifies/);
    expect(() => parseManifest(rewrite(text.replace('"0a1b2c3d"', '"0a1b2c"')))).toThrow(/PG_VERSION: "0a1b2c" is not a CRC32C checksum/);
    expect(parseManifest(rewrite(text.replace('"CRC32C"', '"NONE"'))).files[0]).toMatchObject({ checksumAlgorithm: undefined, checksum: '' });
  });

  it('describes a checksum in messages by its algorithm and first digits', () => {
    expect(describeChecksum('CRC32C', '839206e3')).toBe('CRC-32C 839206e3');
    expect(describeChecksum('SHA256', 'ab'.repeat(32))).toBe(`SHA-256 ${'ab'.repeat(6)}…`);
    expect(describeChecksum(undefined, '')).toBe('no checksum');
  });
});
