// The checksum each file of a backup has in its backup_manifest: CRC-32C by default (what
// pg_basebackup writes by default, and what PostgreSQL's own pg_verifybackup checks), SHA-256 with
// backup_checksum = sha256, as every backup taken before CRC-32C became the default has it. Every
// reader verifies a file with the algorithm its manifest entry records: verify-backup, recover and
// the agent's restore, so backups of either kind verify and recover side by side.

import { chownSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { compress, decompress } from '@mongodb-js/zstd';
import { beforeAll, describe, expect, it } from 'vitest';
import { crc32cManifestHex } from '../../shared/backup/manifest';
import { crc32c } from '../../shared/checksum';
import { type Cluster, createCluster, describeRun, expectFailure, expectSuccess, listDir, makeDir, makeTempDir, postgresUser, type Receiver, runAgent, runReceiverCli, sha256OfBytes, startReceiver } from '../harness';
import { backupAndWait, recoverInto, storedFileOf } from '../harness/backups';
import { verifyRecoveredDirectory } from '../harness/recovered';

interface ManifestEntry { Path: string; 'Checksum-Algorithm'?: string; Checksum?: string }

describe('backup_manifest checksums: CRC-32C by default, SHA-256 where backup_checksum = sha256', () => {
  let receiver: Receiver;
  let current: Cluster;
  let legacy: Cluster;
  let currentId: string;
  let legacyId: string;

  const manifestOf = (server: string, id: string) => JSON.parse(readFileSync(join(receiver.serverDir(server), 'base', id, 'backup_manifest'), 'utf8')) as { Files: ManifestEntry[] };

  beforeAll(async () => {
    receiver = await startReceiver({ servers: [{ name: 'current' }, { name: 'legacy', extra: { backup_checksum: 'sha256' } }] });
    current = await createCluster({ name: 'current', archive: true, agentConfig: { receiver, server: 'current' } });
    legacy = await createCluster({ name: 'legacy', archive: true, agentConfig: { receiver, server: 'legacy' } });
    await Promise.all([current.start(), legacy.start()]);
    // a table of several MB beside the catalog's small files: some files of their own, most bundled
    const table = 'create table ledger (id int primary key, note text not null); insert into ledger select g, md5(g::text) from generate_series(1, 100000) g;';
    await Promise.all([current.psql(table), legacy.psql(table)]);
    [currentId, legacyId] = await Promise.all([backupAndWait(receiver, 'current', current), backupAndWait(receiver, 'legacy', legacy)]);
  });

  it('records a CRC-32C for every file by default, in the byte order PostgreSQL writes it, and pg_verifybackup accepts the recovered directory', async () => {
    const files = manifestOf('current', currentId).Files;
    expect(new Set(files.map((f) => f['Checksum-Algorithm']))).toEqual(new Set(['CRC32C']));
    // PostgreSQL hex-encodes the uint32 as it lies in memory: little-endian bytes
    const version = readFileSync(join(current.pgdata, 'PG_VERSION'));
    expect(files.find((f) => f.Path === 'PG_VERSION')!.Checksum).toBe(crc32cManifestHex(crc32c()(version)));
    expect(crc32cManifestHex(0x12345678)).toBe('78563412');
    expectSuccess(await runReceiverCli(['verify-backup', '-c', receiver.configPath, 'current', currentId]));
    // PostgreSQL's own tool checks every file's CRC-32C in the manifest the recovery wrote
    const recovery = await recoverInto(receiver, 'current', currentId);
    expectSuccess(recovery.result);
    const verified = await verifyRecoveredDirectory(recovery.dest);
    expect(verified.code, describeRun(verified)).toBe(0);
  });

  it('records SHA-256 with backup_checksum = sha256; such a backup verifies, recovers and restores as before', async () => {
    const files = manifestOf('legacy', legacyId).Files;
    expect(new Set(files.map((f) => f['Checksum-Algorithm']))).toEqual(new Set(['SHA256']));
    expect(files.find((f) => f.Path === 'PG_VERSION')!.Checksum).toBe(sha256OfBytes(readFileSync(join(legacy.pgdata, 'PG_VERSION'))));
    expectSuccess(await runReceiverCli(['verify-backup', '-c', receiver.configPath, 'legacy', legacyId]));
    const recovery = await recoverInto(receiver, 'legacy', legacyId);
    expectSuccess(recovery.result);
    const verified = await verifyRecoveredDirectory(recovery.dest);
    expect(verified.code, describeRun(verified)).toBe(0);
    const dest = makeDir(join(makeTempDir('restored-sha256', 'postgres', 0o755), 'pgdata'), 'postgres', 0o700);
    expectSuccess(await runAgent(['restore', '-c', legacy.agentConfigPath!, legacyId, dest]));
    const restored = await verifyRecoveredDirectory(dest);
    expect(restored.code, describeRun(restored)).toBe(0);
  });

  /** flips one plain byte of a file of its own in a backup (still valid zstd: only the checksum can tell); returns the undo */
  const flipPlainByte = async (server: string, id: string, path: string): Promise<() => void> => {
    const stored = storedFileOf(receiver, server, id, path);
    expect(stored.bundled).toBe(false);
    expect(stored.file).toMatch(/\.zst$/);
    const intact = readFileSync(stored.file);
    const plain = Buffer.from(await decompress(intact));
    plain[plain.length >> 1] = plain[plain.length >> 1]! ^ 0x01;
    writeFileSync(stored.file, await compress(plain, 1));
    return () => writeFileSync(stored.file, intact);
  };

  it.each(['current', 'legacy'])('a flipped plain byte in a backup of server %s is named by verify-backup, recover and restore', async (server) => {
    const [cluster, id] = server === 'current' ? [current, currentId] : [legacy, legacyId];
    const relation = await cluster.psql("select pg_relation_filepath('ledger')");
    const undo = await flipPlainByte(server, id, relation);
    try {
      const verify = await runReceiverCli(['verify-backup', '-c', receiver.configPath, server, id]);
      expectFailure(verify, 1, new RegExp(`backup ${id} does not match its manifest`));
      expect(verify.stdout, describeRun(verify)).toMatch(new RegExp(`^FAILED: ${relation}: checksum mismatch$`, 'm'));
      const recovered = makeDir(join(makeTempDir('flipped-recover', 'postgres', 0o755), 'pgdata'), 'postgres', 0o700);
      const recover = await runReceiverCli(['recover', '-c', receiver.configPath, server, id, recovered]);
      expectFailure(recover, 1, new RegExp(`${relation} in the catalog does not match its manifest \\(\\d+ bytes, ${server === 'current' ? 'CRC-32C' : 'SHA-256'} `));
      expect(listDir(recovered)).toEqual([]);
      const restored = makeDir(join(makeTempDir('flipped-restore', 'postgres', 0o755), 'pgdata'), 'postgres', 0o700);
      const restore = await runAgent(['restore', '-c', cluster.agentConfigPath!, id, restored]);
      // the receiver finds its stored frame is not one the catalog writes, and names it (the agent passes that on as it is)
      expectFailure(restore, 1, new RegExp(`^ERROR \\[CHECKSUM_MISMATCH\\]: backup ${id}: ${relation} in the catalog does not match its manifest: a stored zstd frame `, 'm'));
      expect(restore.stderr).toContain(`HINT: Run barman-receiver verify-backup ${server} ${id} on the backup host`);
      expect(listDir(restored)).toEqual([]);
    } finally {
      undo();
    }
    expectSuccess(await runReceiverCli(['verify-backup', '-c', receiver.configPath, server, id]));
  });

  it('backs up and restores a file whose 1 MiB blocks do not compress (their zstd frames are longer than the block)', async () => {
    // random bytes: zstd level 1 makes each 1 MiB block a frame a little over 1 MiB, which once
    // failed the backup as a malformed chunk frame
    const noise = randomBytes(3 * 1024 * 1024 + 12345);
    const path = join(current.pgdata, 'incompressible.bin');
    writeFileSync(path, noise);
    chownSync(path, postgresUser().uid, postgresUser().gid);
    try {
      const id = await backupAndWait(receiver, 'current', current);
      expectSuccess(await runReceiverCli(['verify-backup', '-c', receiver.configPath, 'current', id]));
      const recovery = await recoverInto(receiver, 'current', id);
      expectSuccess(recovery.result);
      expect(readFileSync(join(recovery.dest, 'incompressible.bin')).equals(noise)).toBe(true);
      const dest = makeDir(join(makeTempDir('restored-noise', 'postgres', 0o755), 'pgdata'), 'postgres', 0o700);
      expectSuccess(await runAgent(['restore', '-c', current.agentConfigPath!, id, dest]));
      expect(readFileSync(join(dest, 'incompressible.bin')).equals(noise)).toBe(true);
    } finally {
      rmSync(path, { force: true });
    }
  });
});
