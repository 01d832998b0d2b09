// Every byte that leaves the catalog for a recovery is checked against the checksum the catalog
// recorded for it, on both ways out: `barman-receiver recover` (many files written at once on the
// backup host) and `barman-agent restore` (the receiver sends the recorded checksum with each file,
// the agent hashes what arrives and compares). The damage here is the kind no decompressor
// notices: one plain byte flipped inside a stored file that is still valid zstd.

import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { compress, decompress } from '@mongodb-js/zstd';
import { beforeAll, describe, expect, it } from 'vitest';
import { crc32cManifestHex, crc32cWireHex } from '../../shared/backup/manifest';
import { crc32c } from '../../shared/checksum';
import { CHUNK_SIZE } from '../../shared/protocol/frames';
import { type Cluster, createCluster, expectFailure, expectSuccess, listDir, makeDir, makeTempDir, type Receiver, runAgent, runReceiverCli, startReceiver, startRelay, writeAgentConfig } from '../harness';
import { backupAndWait, storedFileOf } from '../harness/backups';
import { RawClient } from '../harness/raw-client';
import { startRecovered } from '../harness/recovered';
import { waitFor } from '../harness/wait';
import { sampleValue, scrapeMetrics } from '../harness/metrics';

describe('a recovery refuses a stored backup file whose bytes differ from the recorded checksum', () => {
  let receiver: Receiver;
  let cluster: Cluster;
  let id: string;
  let relation: string;
  let stored: string;
  let intact: Buffer;

  beforeAll(async () => {
    receiver = await startReceiver({ servers: [{ name: 'main' }] });
    cluster = await createCluster({ name: 'main', archive: true, agentConfig: { receiver, server: 'main' } });
    await cluster.start();
    // a table of about 80 MB, so its file is read and written in many chunks, beside many small
    // files, and takes long enough to send that a small file asked for after it ends first
    await cluster.psql("create table ledger (id int primary key, note text not null); insert into ledger select g, md5(g::text) from generate_series(1, 1200000) g;");
    id = await backupAndWait(receiver, 'main', cluster);
    relation = await cluster.psql("select pg_relation_filepath('ledger')");
    // the catalog's default compression is zstd
    stored = join(receiver.serverDir('main'), 'base', id, 'data', `${relation}.zst`);
    intact = readFileSync(stored);
  });

  /** the stored file, still valid zstd, with one plain byte flipped at `at` */
  const flipPlainByte = async (at: number) => {
    const plain = Buffer.from(await decompress(intact));
    expect(plain.length).toBeGreaterThan(at);
    plain[at] = plain[at]! ^ 0x01;
    writeFileSync(stored, await compress(plain, 1));
  };
  const repair = () => writeFileSync(stored, intact);
  /** the stored file as the catalog writes it (one frame per MiB of plain bytes), with one plain byte flipped at `at` */
  const flipPlainByteFramed = async (at: number) => {
    const plain = Buffer.from(await decompress(intact));
    plain[at] = plain[at]! ^ 0x01;
    const frames: Buffer[] = [];
    for (let i = 0; i < plain.length; i += CHUNK_SIZE) frames.push(await compress(plain.subarray(i, i + CHUNK_SIZE), 1));
    writeFileSync(stored, Buffer.concat(frames));
  };

  it('recover names the file, writes no pg_control and leaves the destination empty', async () => {
    await flipPlainByte(3 * 1024 * 1024 + 17);
    try {
      const dest = makeDir(join(makeTempDir('flipped-recover', 'postgres', 0o755), 'pgdata'), 'postgres', 0o700);
      const r = await runReceiverCli(['recover', '-c', receiver.configPath, 'main', id, dest]);
      expectFailure(r, 1, new RegExp(`${relation} in the catalog does not match its manifest`));
      expect(r.stderr).toMatch(/verify-backup/);
      expect(listDir(dest)).toEqual([]);
    } finally {
      repair();
    }
  });

  it('agent restore names the file, writes no pg_control and leaves the destination empty', async () => {
    await flipPlainByte(100);
    try {
      const dest = makeDir(join(makeTempDir('flipped-restore', 'postgres', 0o755), 'pgdata'), 'postgres', 0o700);
      const r = await runAgent(['restore', '-c', cluster.agentConfigPath!, id, dest]);
      // the receiver finds its stored copy no longer decompresses, and names it (the agent passes that on as it is)
      expectFailure(r, 1, new RegExp(`^ERROR \\[CHECKSUM_MISMATCH\\]: backup ${id}: ${relation} in the catalog does not match its manifest: it no longer decompresses`, 'm'));
      expect(r.stderr).toMatch(/verify-backup/);
      expect(listDir(dest)).toEqual([]);
    } finally {
      repair();
    }
  });

  it('agent restore decompresses the stored frames itself and refuses, naming the file, the ones that are not what the manifest records', async () => {
    await flipPlainByteFramed(5 * 1024 * 1024 + 99);
    try {
      const dest = makeDir(join(makeTempDir('flipped-frames', 'postgres', 0o755), 'pgdata'), 'postgres', 0o700);
      const r = await runAgent(['restore', '-c', cluster.agentConfigPath!, id, dest]);
      // found by the agent's own check of the plain bytes (the receiver sent the frames as they are)
      expectFailure(r, 1, new RegExp(`backup ${id}: ${relation} does not match the checksum its manifest records \\(get-backup-file: received \\d+ of \\d+ bytes, checksum differs\\)`));
      expect(r.stderr).toMatch(/verify-backup/);
      expect(listDir(dest)).toEqual([]);
      // the agent told the receiver, which read its copy again, answered, and logged it damaged, with what to do
      expect(r.stderr).toMatch(/checksum differs\), and the receiver found the same reading its copy back$/m);
      expect(r.stderr).toMatch(new RegExp(`^HINT: Run barman-receiver verify-backup main ${id} on the backup host; recover or restore from another backup \\(list-backups\\)\\.$`, 'm'));
      const damaged = () => receiver.logs().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { level: number; msg: string; file?: string; backup?: string; hint?: string; agent?: string }).filter((l) => l.file === relation && /and its copy in the catalog is damaged/.test(l.msg));
      await waitFor('the receiver to log the damaged copy', () => damaged().length > 0, { timeoutMs: 15_000 });
      expect(sampleValue(await scrapeMetrics(receiver.httpUrl), 'barman_refused_files_total', { server: 'main', file: 'backup-file', found: 'damaged' })).toBe(1);
      expect(damaged()).toEqual([expect.objectContaining({ level: 50, backup: id, msg: `the agent refused ${relation} of backup ${id}, and its copy in the catalog is damaged: checksum mismatch`, hint: `Run barman-receiver verify-backup main ${id} on the backup host; recover or restore from another backup (list-backups).`, agent: expect.stringMatching(/checksum differs/) })]);
    } finally {
      repair();
    }
  });

  it('agent restore of a file whose bytes change on the way says so: the receiver read its copy back intact, retry', async () => {
    // the relation's first MiB made again as one zstd frame with a byte flipped: valid zstd, other bytes
    const block = Buffer.from(await decompress(intact)).subarray(0, CHUNK_SIZE);
    block[8192 + 11] = block[8192 + 11]! ^ 0x01;
    const changed = await compress(block, 1);
    const relay = await startRelay({ host: receiver.host, port: receiver.port });
    let asked: number | undefined;
    let rewritten = 0;
    relay.interceptNext({
      fromClient: (frame) => {
        if (frame.type === 'get-backup-file' && frame.path === relation) asked = frame.id;
        return frame;
      },
      rewriteFromReceiver: (frame) => {
        if (frame.type !== 'chunk' || frame.id !== asked || rewritten > 0) return frame;
        rewritten++;
        return { ...frame, data: changed };
      },
    });
    const viaRelay = writeAgentConfig({ receiver: relay.url, server: 'main', token: receiver.tokens.get('main')!, pgdata: cluster.pgdata, conninfo: cluster.conninfo }).path;
    const dest = makeDir(join(makeTempDir('changed-restore', 'postgres', 0o755), 'pgdata'), 'postgres', 0o700);
    const r = await runAgent(['restore', '-c', viaRelay, id, dest]);
    expect(rewritten).toBe(1);
    expectFailure(r, 1, new RegExp(`^ERROR \\[CHECKSUM_MISMATCH\\]: backup ${id}: ${relation} does not match the checksum its manifest records \\(get-backup-file: received \\d+ of \\d+ bytes, checksum differs\\), and the receiver read its copy back intact$`, 'm'));
    expect(r.stderr).toMatch(/^HINT: Nothing in the catalog is damaged: the bytes changed on the way or on this host\. Retry;/m);
    expect(listDir(dest)).toEqual([]);
    const logged = () => receiver.logs().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { level: number; msg: string; file?: string }).filter((l) => l.file === relation && /reads back intact/.test(l.msg));
    // (logged before the agent was answered; the line may still be on its way through the pipe)
    await waitFor('the receiver to log the intact copy', () => logged().length > 0, { timeoutMs: 15_000 });
    expect(logged()).toEqual([expect.objectContaining({ level: 40, msg: `the agent refused ${relation} of backup ${id}; its copy in the catalog reads back intact: the bytes changed on the way or on the agent's host` })]);
    expect(sampleValue(await scrapeMetrics(receiver.httpUrl), 'barman_refused_files_total', { server: 'main', file: 'backup-file', found: 'intact' })).toBe(1);
  });

  it('sends the stored zstd frames as they are to an agent that asks for them, and plain bytes to one that does not', async () => {
    const client = await RawClient.authenticated(receiver.url, 'main', receiver.tokens.get('main')!, 'restore');
    const member = await cluster.psql("select pg_relation_filepath('pg_class')");
    expect(storedFileOf(receiver, 'main', id, member).bundled).toBe(true);
    const manifest = JSON.parse(readFileSync(join(receiver.serverDir('main'), 'base', id, 'backup_manifest'), 'utf8')) as { Files: Array<{ Path: string; Size: number; Checksum: string }> };
    const entry = (path: string) => manifest.Files.find((f) => f.Path === path)!;
    try {
      let n = 0;
      for (const [path, accept] of [[relation, true], [member, true], [relation, false], [member, false]] as const) {
        const reqId = ++n;
        client.send({ type: 'get-backup-file', id: reqId, backupId: id, path, ...(accept ? { accept: 'zstd' as const } : {}) });
        const file = await client.nextFrame();
        expect(file).toMatchObject({ type: 'file', id: reqId, size: entry(path).Size, checksum: 'crc32c' });
        expect(file.type === 'file' && file.encoding).toBe(accept ? 'zstd' : undefined);
        const crc = crc32c();
        let value = 0;
        let size = 0;
        const flagged: boolean[] = [];
        for (;;) {
          const frame = await client.nextFrame();
          if (frame.type === 'end') break;
          expect(frame.type).toBe('chunk');
          if (frame.type !== 'chunk') return;
          flagged.push(frame.plain === true);
          // a frame: one whole zstd frame of at most a chunk's plain bytes; a plain chunk as it is
          const plain = accept && !frame.plain ? Buffer.from(await decompress(Buffer.from(frame.data))) : Buffer.from(frame.data);
          if (accept && !frame.plain) expect(frame.data.length).toBeLessThan(plain.length);
          expect(plain.length).toBeLessThanOrEqual(CHUNK_SIZE);
          value = crc(plain, value);
          size += plain.length;
        }
        expect(size).toBe(entry(path).Size);
        expect(crc32cManifestHex(value)).toBe(entry(path).Checksum);
        expect(flagged.every((f) => !f)).toBe(true);
      }
    } finally {
      client.close();
    }
  });

  it('serves the files of a restore side by side, each ending with the checksum its manifest records', async () => {
    const client = await RawClient.authenticated(receiver.url, 'main', receiver.tokens.get('main')!, 'restore');
    try {
      // the big table's file first, then a small one: the small one is not held back behind it
      client.send({ type: 'get-backup-file', id: 1, backupId: id, path: relation });
      client.send({ type: 'get-backup-file', id: 2, backupId: id, path: 'PG_VERSION' });
      const crc = crc32c();
      const crcs = new Map([[1, 0], [2, 0]]);
      const announced = new Map<number, string | undefined>();
      const ended: Array<{ id: number; crc32c: string | undefined; sha256: string | undefined }> = [];
      while (ended.length < 2) {
        const frame = await client.nextFrame();
        if (frame.type === 'chunk') crcs.set(frame.id, crc(frame.data, crcs.get(frame.id)));
        else if (frame.type === 'end') ended.push({ id: frame.id, crc32c: frame.crc32c, sha256: frame.sha256 });
        else if (frame.type === 'file') {
          announced.set(frame.id, frame.checksum);
          // not asked for frames: plain bytes
          expect(frame.encoding).toBeUndefined();
        }
        else expect(frame.type).toBe('file');
      }
      expect(ended.map((e) => e.id)).toEqual([2, 1]);
      const manifest = JSON.parse(readFileSync(join(receiver.serverDir('main'), 'base', id, 'backup_manifest'), 'utf8')) as { Files: Array<{ Path: string; 'Checksum-Algorithm': string; Checksum: string }> };
      const entry = (path: string) => manifest.Files.find((f) => f.Path === path)!;
      // the default: the manifest records CRC-32C, as pg_basebackup does; the file frame says so
      expect(entry(relation)['Checksum-Algorithm']).toBe('CRC32C');
      expect([announced.get(1), announced.get(2)]).toEqual(['crc32c', 'crc32c']);
      // the end frame says what the catalog recorded, and the bytes sent are those bytes
      for (const [n, path] of [[1, relation], [2, 'PG_VERSION']] as const) {
        const e = ended.find((x) => x.id === n)!;
        expect(e.sha256).toBeUndefined();
        expect(e.crc32c).toBe(crc32cWireHex(entry(path).Checksum));
        expect(crc32cManifestHex(crcs.get(n)!)).toBe(entry(path).Checksum);
      }
    } finally {
      client.close();
    }
  });

  it('a damaged member of a bundle (read once for all its members) is named by both ways, and nothing is left behind', async () => {
    // pg_class of the postgres database: a small file, stored as a member of a bundle
    const member = await cluster.psql("select pg_relation_filepath('pg_class')");
    const where = storedFileOf(receiver, 'main', id, member);
    expect(where.bundled).toBe(true);
    const bundle = readFileSync(where.file);
    const damaged = Buffer.from(bundle);
    // silent damage in the middle of its compressed bytes, its size kept (the members after it stay where they are)
    const at = where.offset + Math.floor(where.length / 2);
    for (let i = at; i < at + 16; i++) damaged[i] = damaged[i]! ^ 0xff;
    writeFileSync(where.file, damaged);
    try {
      const dir = makeTempDir('bundle-damage', 'postgres', 0o755);
      const recoverDest = makeDir(join(dir, 'recovered'), 'postgres', 0o700);
      const recovered = await runReceiverCli(['recover', '-c', receiver.configPath, 'main', id, recoverDest]);
      expectFailure(recovered, 1, new RegExp(`${member} in the catalog does not match its manifest`));
      expect(listDir(recoverDest)).toEqual([]);
      const restoreDest = makeDir(join(dir, 'restored'), 'postgres', 0o700);
      const restored = await runAgent(['restore', '-c', cluster.agentConfigPath!, id, restoreDest]);
      expectFailure(restored, 1, new RegExp(`backup ${id}: ${member} (in the catalog )?does not match`));
      expect(listDir(restoreDest)).toEqual([]);
    } finally {
      writeFileSync(where.file, bundle);
    }
  });

  it('with the stored file intact again, both ways write a cluster that starts with every row', async () => {
    const expected = await cluster.psql('select count(*), sum(id) from ledger');
    const dir = makeTempDir('intact', 'postgres', 0o755);
    const viaRecover = join(dir, 'recovered');
    expectSuccess(await runReceiverCli(['recover', '-c', receiver.configPath, 'main', id, viaRecover]));
    const viaRestore = join(dir, 'restored');
    expectSuccess(await runAgent(['restore', '-c', cluster.agentConfigPath!, id, viaRestore]));
    for (const dest of [viaRecover, viaRestore]) {
      const copy = await startRecovered(dest, dir);
      await copy.waitPromoted();
      expect(await copy.psql('select count(*), sum(id) from ledger')).toBe(expected);
      await copy.dispose();
    }
  });
});
