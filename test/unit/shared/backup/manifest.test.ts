import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { buildManifest, type ManifestFile, manifestVersionFor, parseManifest } from '../../../../shared/backup/manifest';

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
