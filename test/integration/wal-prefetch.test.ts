// WAL fetch-ahead as PostgreSQL uses it: `restore_command = 'barman-agent get-wal %f %p'` through the
// installed launcher, replaying 128 archived segments (1 MB each) in archive recovery. Every segment
// PostgreSQL applied is byte for byte the archived one, even with a copy of another timeline's
// bytes and a damaged copy waiting in the spool; a segment missing from the archive ends recovery
// exactly there, although the spool holds the segments after it; and an unreachable receiver
// stops recovery (exit 128) instead of letting PostgreSQL promote short of the archive.

import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  type Cluster, createCluster, describeRun, expectSuccess, freePort, makeTempDir, pgBinDir, type Receiver, run, runAgent, runReceiverCli, startReceiver, writeAgentConfig,
} from '../harness';
import { backupAndWait } from '../harness/backups';
import { chownTo, agentLauncher } from '../harness/env';
import { startRecovered } from '../harness/recovered';
import { parseLsn } from '../../shared/wal/lsn';
import { nextSegment, segmentNumber, segmentStartLsn } from '../../shared/wal/names';

const SEGMENT_SIZE = 1 << 20;
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('get-wal with fetch-ahead, in archive recovery', () => {
  let receiver: Receiver;
  let source: Cluster;
  let backupId: string;
  /** for each row id, the segment its insert was completed in */
  const segmentOfRow = new Map<number, string>();
  let firstSegment = '';

  beforeAll(async () => {
    receiver = await startReceiver({ servers: [{ name: 'main' }] });
    source = await createCluster({ name: 'main', archive: true, agentConfig: { receiver, server: 'main' }, walSegmentSizeMB: 1 });
    await source.start();
    await source.psql('create table rows (id int primary key)');
    backupId = await backupAndWait(receiver, 'main', source);
    for (let i = 1; i <= 128; i++) {
      await source.psql(`insert into rows values (${i})`);
      const segment = await source.switchWal();
      segmentOfRow.set(i, segment);
      if (i === 1) firstSegment = segment;
    }
    await source.waitArchiverIdle();
  }, 600_000);

  /** A data directory restored from the backup, its WAL to come through get-wal only; `then` is appended to the restore_command. */
  const restoreForGetWal = async (receiverUrl: string, then = '') => {
    const dir = makeTempDir('replay', 'postgres', 0o755);
    const dest = join(dir, 'pgdata');
    expectSuccess(await runAgent(['restore', '-c', source.agentConfigPath!, backupId, dest]));
    rmSync(join(dest, 'barman_wal'), { recursive: true });
    const agent = writeAgentConfig({ receiver: receiverUrl, server: 'main', token: receiver.tokens.get('main'), dir: makeTempDir('replay-agent', 'postgres', 0o755), timeout: 5 });
    writeFileSync(join(dest, 'postgresql.auto.conf'), `${readFileSync(join(dest, 'postgresql.auto.conf'), 'utf8')}restore_command = '${agentLauncher()} -c ${agent.path} get-wal %f %p${then}'\n`);
    const spool = join(agent.dir, 'spool', 'prefetch');
    return { dir, dest, agent, spool };
  };

  /** an archived segment's plain bytes, as the catalog serves them */
  const archived = async (name: string): Promise<Buffer> => {
    const r = await runReceiverCli(['get-wal', '-c', receiver.configPath, 'main', name]);
    expect(r.code, describeRun(r)).toBe(0);
    return r.stdoutBytes;
  };

  it('replays 128 segments; every segment applied is the archived one, and bad copies in the spool are never served', async () => {
    const seen = makeTempDir('applied', 'postgres', 0o755);
    const { dir, dest, spool } = await restoreForGetWal(receiver.url, ` && cp %p ${seen}/%f`);
    // waiting in the spool before PostgreSQL asks: the 2nd segment of the replay as another
    // timeline's bytes (under a checksum that matches them), the 3rd damaged (under its real checksum)
    mkdirSync(spool, { recursive: true });
    const second = nextSegment(firstSegment, SEGMENT_SIZE);
    const third = nextSegment(second, SEGMENT_SIZE);
    const otherTimeline = Buffer.from(await archived(second));
    otherTimeline.writeUInt32LE(2, 4);
    writeFileSync(join(spool, `${second}-${sha256(otherTimeline)}`), otherTimeline);
    const real = await archived(third);
    const damaged = Buffer.from(real);
    damaged.writeUInt8(damaged.readUInt8(5000) ^ 0xff, 5000);
    writeFileSync(join(spool, `${third}-${sha256(real)}`), damaged);
    // a segment of timeline 2 under its own name, for the same position: never asked for, never served
    writeFileSync(join(spool, `00000002${second.slice(8)}-${sha256(otherTimeline)}`), otherTimeline);
    for (const f of readdirSync(join(spool, '..'), { recursive: true }) as string[]) chownTo(join(spool, '..', f), 'postgres');
    chownTo(join(spool, '..'), 'postgres');

    const copy = await startRecovered(dest, dir);
    await copy.waitPromoted();
    expect(await copy.psql('select count(*), max(id) from rows')).toBe('128|128');
    const applied = readdirSync(seen).filter((f) => /^[0-9A-F]{24}$/.test(f)).sort();
    expect(applied.length).toBeGreaterThanOrEqual(128);
    expect(applied).toContain(segmentOfRow.get(128));
    for (const name of applied) expect(sha256(readFileSync(join(seen, name))), name).toBe(receiver.walChecksum('main', name));
    // what PostgreSQL asked for is gone from the spool, and the spool is bounded
    const spooled = readdirSync(spool).filter((f) => !f.startsWith('.'));
    expect(spooled.filter((f) => f.startsWith(second) || f.startsWith(third))).toEqual([]);
    expect(spooled.length).toBeLessThanOrEqual(8);
    // the prefetcher's records of its copies go with them (a record whose copy was served goes at its next clean-up)
    expect(readdirSync(spool).filter((f) => f.endsWith('.id')).length).toBeLessThanOrEqual(spooled.length + 2);
  });

  it('ends recovery at a segment missing from the archive, not earlier and not later, while the spool holds later ones', async () => {
    const gap = segmentOfRow.get(64)!;
    const { dir, dest, spool } = await restoreForGetWal(receiver.url);
    const stored = receiver.walPath('main', gap);
    const aside = join(receiver.serverDir('main'), 'aside');
    renameSync(stored, aside);
    try {
      const copy = await startRecovered(dest, dir);
      await copy.waitPromoted();
      // rows of the segments before the gap, none of the gap's or after it
      expect(await copy.psql('select count(*), max(id) from rows')).toBe('63|63');
      const history = readFileSync(join(dest, 'pg_wal', '00000002.history'), 'utf8');
      const switchLsn = parseLsn(/^1\s+(\S+)/m.exec(history)![1]!);
      expect(switchLsn > segmentStartLsn(segmentOfRow.get(63)!, SEGMENT_SIZE)).toBe(true);
      expect(switchLsn <= segmentStartLsn(gap, SEGMENT_SIZE)).toBe(true);
      // fetched ahead past the gap, never served
      const ahead = readdirSync(spool).filter((f) => !f.startsWith('.')).map((f) => f.slice(0, 24)).filter((n) => segmentNumber(n, SEGMENT_SIZE) > segmentNumber(gap, SEGMENT_SIZE));
      expect(ahead.length).toBeGreaterThan(0);
    } finally {
      renameSync(aside, stored);
    }
  });

  it('stops recovery (exit 128) while the receiver cannot be reached, instead of promoting short of the archive', async () => {
    const deadUrl = `ws://127.0.0.1:${await freePort()}`;
    const { dir, dest, agent } = await restoreForGetWal(deadUrl);
    const log = join(dir, 'refused.log');
    const start = await run(join(pgBinDir(), 'pg_ctl'), ['-D', dest, '-l', log, '-o', `-p ${await freePort()} -k ${dir} -c listen_addresses=''`, '-w', '-t', '60', 'start'], { asPostgres: true, cwd: dir });
    expect(start.code, describeRun(start)).not.toBe(0);
    expect(readFileSync(log, 'utf8')).toMatch(/exit code 128/);
    expect(existsSync(join(dest, 'recovery.signal'))).toBe(true);
    expect(existsSync(join(dest, 'pg_wal', '00000002.history'))).toBe(false);

    // the receiver back (the configuration fixed): recovery goes on to the end of the archive
    writeFileSync(agent.path, readFileSync(agent.path, 'utf8').replace(deadUrl, receiver.url));
    const copy = await startRecovered(dest, dir);
    await copy.waitPromoted();
    expect(await copy.psql('select count(*) from rows')).toBe('128');
  });

  it('get-wal: a segment the catalog lacks exits 1 without a word, also while the spool holds the one after it', async () => {
    const agent = writeAgentConfig({ receiver, server: 'main', dir: makeTempDir('by-hand', 'postgres', 0o755) });
    const last = segmentOfRow.get(128)!;
    const missing = nextSegment(last, SEGMENT_SIZE);
    const after = nextSegment(missing, SEGMENT_SIZE);
    const spool = join(agent.dir, 'spool', 'prefetch');
    mkdirSync(spool, { recursive: true });
    const bytes = await archived(last);
    writeFileSync(join(spool, `${after}-${sha256(bytes)}`), bytes);
    for (const p of [join(agent.dir, 'spool'), spool, ...readdirSync(spool).map((f) => join(spool, f))]) chownTo(p, 'postgres');
    const out = join(makeTempDir('by-hand-out', 'postgres', 0o755), 'RECOVERYXLOG');
    const r = await run(agentLauncher(), ['get-wal', '-c', agent.path, missing, out], { asPostgres: true });
    expect(r.code, describeRun(r)).toBe(1);
    expect(r.stderr).toBe('');
    expect(existsSync(out)).toBe(false);
  });
});
