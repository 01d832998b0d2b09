// One receiver, three PostgreSQL servers (alpha, beta, gamma), each with its cluster and its agent
// daemon. Their WAL, backups and restores stay apart; alpha's token opens nothing of beta's, with
// any role and any frame kind; and when alpha's catalog disk is full (a small tmpfs mounted at its
// catalog) while gamma's agent sends garbage, beta keeps archiving, backing up and restoring,
// gamma's real agent too, and alpha resumes once space is freed, with nothing lost.

import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { BACKUP_STATUSES } from '../../shared/backup/info';
import { CHUNK_SIZE, type Frame, ROLES } from '../../shared/protocol/frames';
import {
  type AgentDaemon, type Cluster, crc32cOfBytes, createCluster, describeRun, expectCatalogMatchesCluster, expectSuccess, plainBytesOf, RawClient, Receiver, runReceiverCli, snapshotTree,
  startDaemon, waitFor,
} from '../harness';
import { listBackupsJson, recoverInto } from '../harness/backups';
import { sampleValue, scrapeMetrics } from '../harness/metrics';
import { startRecovered } from '../harness/recovered';
import { fillUp, freeUp, mountTmpfs } from '../harness/tmpfs';
import { VALID_FRAMES } from '../unit/shared/protocol/sample-frames';

const SERVERS = ['alpha', 'beta', 'gamma'] as const;
type Name = (typeof SERVERS)[number];

describe('one receiver, three servers: isolation and fault containment', () => {
  let receiver: Receiver;
  const clusters = {} as Record<Name, Cluster>;
  const daemons = {} as Record<Name, AgentDaemon>;
  const backups = {} as Record<Name, string>;
  const countRows = (name: Name) => `select count(*), sum(id) from ${name}_orders`;

  /** Writes rows into a server's own table and completes a segment; returns the segment. */
  async function writeAndSwitch(name: Name, from: number, n = 500): Promise<string> {
    await clusters[name].psql(`insert into ${name}_orders select g, '${name}' from generate_series(${from}, ${from + n - 1}) g`);
    return clusters[name].switchWal();
  }

  beforeAll(async () => {
    receiver = await Receiver.create({ servers: SERVERS.map((name) => ({ name })) });
    // alpha's catalog gets a filesystem of its own, small enough to fill
    mountTmpfs(receiver.serverDir('alpha'), 256);
    await receiver.start();
    for (const name of SERVERS) {
      clusters[name] = await createCluster({ name, archive: true, agentConfig: { receiver, server: name }, extraConf: { wal_keep_size: '1GB' } });
      await clusters[name].start();
      await clusters[name].psql(`create table ${name}_orders (id int primary key, note text)`);
      daemons[name] = startDaemon(clusters[name].agentConfigPath!);
    }
    for (const name of SERVERS) await daemons[name].waitForLog(/^connected to the receiver$/);
  });

  it('keeps WAL, backups and restores apart: each catalog is its own cluster\'s, byte for byte', async () => {
    for (const [i, name] of SERVERS.entries()) await clusters[name].waitArchived(await writeAndSwitch(name, 1, 1000 * (i + 1)));
    for (const name of SERVERS) {
      const r = await runReceiverCli(['backup', '-c', receiver.configPath, name, '--wait']);
      expectSuccess(r);
      backups[name] = r.stdout.trim();
    }
    for (const [i, name] of SERVERS.entries()) await clusters[name].waitArchived(await writeAndSwitch(name, 10_001, 100 * (i + 1)));
    for (const name of SERVERS) {
      // the same segment names on every server; each catalog holds its own cluster's bytes
      await clusters[name].waitArchiverIdle();
      await expectCatalogMatchesCluster(receiver, name, clusters[name]);
      expect(JSON.parse(readFileSync(join(receiver.serverDir(name), 'identity.json'), 'utf8')).systemIdentifier).toBe(await clusters[name].systemIdentifier());
      expect((await listBackupsJson(receiver, name)).map((b) => [b.backup_id, b.status, b.system_identifier])).toEqual([[backups[name], 'DONE', await clusters[name].systemIdentifier()]]);
    }
    // beta restored: beta's rows, nothing of the others
    const recovery = await recoverInto(receiver, 'beta', 'latest');
    expectSuccess(recovery.result);
    const copy = await startRecovered(recovery.dest, recovery.dir);
    await copy.waitPromoted();
    expect(await copy.psql(countRows('beta'))).toBe(await clusters.beta.psql(countRows('beta')));
    expect(await copy.psql("select string_agg(relname, ',' order by relname) from pg_class where relname like '%_orders'")).toBe('beta_orders');
    await copy.dispose();
  });

  it("refuses alpha's token for beta, and on alpha's sessions, whatever the role, no frame kind reaches anything of beta's", async () => {
    const alphaToken = receiver.tokens.get('alpha')!;
    for (const role of ROLES) {
      const c = await RawClient.connect(receiver.url);
      const answers = await c.tryAuthenticate('beta', alphaToken, role);
      expect(answers.at(-1), role).toMatchObject({ type: 'error', code: 'AUTH_FAILED' });
      c.close();
    }

    // what beta holds that nobody else may see: its WAL and backup files (by checksum) and its change key
    const betaDir = receiver.serverDir('beta');
    const betaBefore = await snapshotTree(betaDir);
    const betaSegment = receiver.segments('beta')[0]!;
    const betaSegmentBytes = plainBytesOf(receiver.walPath('beta', betaSegment));
    const betaSegmentSha = createHash('sha256').update(betaSegmentBytes).digest('hex');
    const betaKey = readFileSync(join(betaDir, 'catalog.key'), 'utf8').trim();
    const secrets = new Set([...betaBefore.values()].map((f) => f.sha256).filter((s) => s !== betaSegmentSha));
    secrets.add(betaKey);
    const betaIdentifier = await clusters.beta.systemIdentifier();
    const alphaBackupsBefore = (await listBackupsJson(receiver, 'alpha')).map((b) => b.backup_id);

    /** A frame of every kind, aimed at beta: beta's backup, segment, key and system identifier where it has a field for them. */
    const aimed = (type: Frame['type']): Frame[] => {
      const f = structuredClone(VALID_FRAMES[type]) as unknown as Record<string, unknown>;
      if ('backupId' in f) f.backupId = backups.beta;
      if ('backup' in f) f.backup = backups.beta;
      if ('key' in f) f.key = betaKey;
      if ('systemIdentifier' in f) f.systemIdentifier = betaIdentifier;
      if (type === 'get') f.name = betaSegment;
      if (type === 'get-backup-file') f.path = 'global/pg_control';
      if (type === 'backup-begin') (f.start as Record<string, unknown>).systemIdentifier = betaIdentifier;
      if (type === 'backup-start') f.wait = false;
      if (type !== 'put') return [f as unknown as Frame];
      // beta's own segment, whole, pushed on alpha's session
      const put = { type: 'put', id: 1, target: { kind: 'wal', name: betaSegment, sha256: betaSegmentSha }, size: betaSegmentBytes.length } as const;
      const chunks: Frame[] = [];
      for (let o = 0; o < betaSegmentBytes.length; o += CHUNK_SIZE) chunks.push({ type: 'chunk', id: 1, data: betaSegmentBytes.subarray(o, o + CHUNK_SIZE) });
      return [put, ...chunks, { type: 'end', id: 1, sha256: betaSegmentSha, crc32c: crc32cOfBytes(betaSegmentBytes) }];
    };

    const seen: string[] = [];
    for (const type of Object.keys(VALID_FRAMES) as Array<Frame['type']>) {
      await Promise.all(ROLES.map(async (role) => {
        const c = await RawClient.authenticated(receiver.url, 'alpha', alphaToken, role);
        for (const frame of aimed(type)) c.send(frame);
        // everything it answers until it has been quiet for a moment (or closes)
        for (;;) {
          let frame: Frame;
          try {
            frame = await c.nextFrame(type === 'put' ? 5000 : 300);
          } catch {
            break;
          }
          const data = frame.type === 'chunk' ? { ...frame, data: `<${frame.data.length} bytes>` } : frame;
          seen.push(`${type}/${role}: ${JSON.stringify(data)}`);
        }
        c.close();
      }));
    }
    expect(seen.length).toBeGreaterThan(ROLES.length);
    // nothing of beta's came back, beta's catalog did not change, and beta's segment was refused on alpha's session
    expect(seen.filter((line) => [...secrets].some((s) => line.includes(s)))).toEqual([]);
    expect(seen.some((line) => /^put\/push: .*"code":"WAL_FOREIGN"/.test(line)), seen.filter((l) => l.startsWith('put/')).join('\n')).toBe(true);
    const betaAfter = await snapshotTree(betaDir);
    expect([...betaAfter.keys()].filter((k) => !k.startsWith('wal-verify'))).toEqual([...betaBefore.keys()].filter((k) => !k.startsWith('wal-verify')));
    for (const [path, f] of betaBefore) expect(betaAfter.get(path), path).toEqual(f);
    // alpha still holds exactly its own cluster's WAL (the backup the admin role asked of alpha's daemon aside)
    await waitFor('alpha\'s backups to settle', async () => (await listBackupsJson(receiver, 'alpha')).every((b) => b.status === 'DONE' || b.status === 'FAILED') || (await clusters.alpha.switchWal(), false), { timeoutMs: 120_000, intervalMs: 1000 });
    await clusters.alpha.waitArchiverIdle();
    await expectCatalogMatchesCluster(receiver, 'alpha', clusters.alpha);
    expect((await listBackupsJson(receiver, 'alpha')).map((b) => b.backup_id)).toEqual(expect.arrayContaining(alphaBackupsBefore));
  });

  it("with alpha's disk full and gamma's agent sending garbage, beta archives, backs up and restores, gamma's real agent archives, and alpha resumes with nothing lost", async () => {
    const filler = fillUp(receiver.serverDir('alpha'));
    // gamma: a client with gamma's token that sends garbage on one session after another
    let garbageSessions = 0;
    let stopGarbage = false;
    const garbage = (async () => {
      while (!stopGarbage) {
        const c = await RawClient.authenticated(receiver.url, 'gamma', receiver.tokens.get('gamma')!, 'push');
        garbageSessions++;
        c.sendRaw(Buffer.from('\x00\xff not msgpack at all \x13\x37'));
        c.sendRaw('a text message');
        c.send({ type: 'chunk', id: 99, data: new Uint8Array(1000) });
        await c.closed;
      }
    })();
    try {
      // alpha: PostgreSQL completes segments the receiver cannot store now
      const alphaSegments: string[] = [];
      for (let i = 0; i < 3; i++) alphaSegments.push(await writeAndSwitch('alpha', 20_001 + i * 100, 100));
      await waitFor('alpha\'s archiver to fail for lack of space', async () => (await clusters.alpha.archiverStats()).failedCount > 0, { timeoutMs: 60_000, intervalMs: 250 });

      // beta: archives, takes a backup, restores
      const betaSegments: string[] = [];
      for (let i = 0; i < 3; i++) betaSegments.push(await writeAndSwitch('beta', 20_001 + i * 100, 100));
      await clusters.beta.waitArchived(betaSegments);
      const backup = await runReceiverCli(['backup', '-c', receiver.configPath, 'beta', '--wait']);
      expectSuccess(backup);
      const recovery = await recoverInto(receiver, 'beta', backup.stdout.trim());
      expectSuccess(recovery.result);
      const copy = await startRecovered(recovery.dest, recovery.dir);
      await copy.waitPromoted();
      expect(await copy.psql(countRows('beta'))).toBe(await clusters.beta.psql(countRows('beta')));
      await copy.dispose();
      // gamma's real agent, beside the garbage
      await clusters.gamma.waitArchived(await writeAndSwitch('gamma', 20_001, 100));
      expect(garbageSessions).toBeGreaterThan(3);
      // alpha's segments are still not archived; the failures are counted by their reason
      expect(clusters.alpha.archiveStatus().ready).toEqual(expect.arrayContaining(alphaSegments));
      const m = await scrapeMetrics(receiver.httpUrl);
      expect(sampleValue(m, 'barman_archive_failures_total', { server: 'alpha', reason: 'STORAGE_NO_SPACE' })).toBeGreaterThan(0);
      expect(sampleValue(m, 'barman_archive_failures_total', { server: 'beta', reason: 'STORAGE_NO_SPACE' })).toBeUndefined();
      for (const status of BACKUP_STATUSES) expect(sampleValue(m, 'barman_backups', { server: 'beta', status })).toBe(status === 'DONE' ? 2 : 0);

      // space comes back: alpha catches up by itself, byte for byte, nothing lost and nothing half-written left
      freeUp(filler);
      await clusters.alpha.waitArchived(alphaSegments);
      await clusters.alpha.waitArchiverIdle();
      await expectCatalogMatchesCluster(receiver, 'alpha', clusters.alpha);
      await waitFor('no temporary file of alpha\'s to be left', () => receiver.tempFiles('alpha').length === 0);
    } finally {
      stopGarbage = true;
      freeUp(filler);
      await garbage;
    }
    // and every server passes its check
    for (const name of SERVERS) {
      const r = await runReceiverCli(['check', '-c', receiver.configPath, name]);
      expect(r.code, describeRun(r)).toBe(0);
    }
    // the agents never crashed
    for (const name of SERVERS) expect(daemons[name].running, name).toBe(true);
  });
});
