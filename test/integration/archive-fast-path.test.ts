// PostgreSQL's archive_command answered from the daemon's durable ack by the installed launcher
// (dist/barman-agent, POSIX sh) without starting Node, and every way we found to fool that answer:
// a stale ack for the same name over different bytes (even with the mtime put back), a daemon
// killed after its push reached the receiver but before it recorded the ack, a spool left by
// another cluster (another server, another system identifier), and an ack for a recycled segment
// (the inode and mtime kept by a rename). Each falls back to Node and a full, verified push, and
// the receiver's conflict rule still refuses different bytes under an archived name. A receiver
// killed (SIGKILL) in the middle of a burst the daemon is pushing loses nothing either.
//
// Node starts are counted with a `node` on PATH that logs each start and runs the real one: the
// launcher runs `node` from PATH when it hands over.

import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, openSync, readFileSync, renameSync, statSync, writeFileSync, writeSync, closeSync, copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { type Ack, formatAck, identityOf, parseAck, sysidHex } from '../../agent/wal/spool';
import { nextSegment } from '../../shared/wal/names';
import {
  archiveCommandLine, type Cluster, createCluster, describeRun, expectCatalogMatchesCluster, expectFailure, expectSuccess, listDir, makeDir, makeTempDir,
  type Receiver, run, type RunResult, sha256Of, startDaemon, startReceiver, startRelay, waitFor, wireBytesOf,
} from '../harness';
import { agentLauncher } from '../harness/env';

const SEGMENT_SIZE = 16 * 1024 * 1024;

/** A folder with a `node` that records each start (its arguments) and runs the real node. */
function nodeShim(): { path: string; starts: () => string[] } {
  const dir = makeTempDir('node-shim', 'postgres', 0o755);
  const log = join(dir, 'starts.log');
  writeFileSync(log, '');
  chmodSync(log, 0o666);
  writeFileSync(join(dir, 'node'), `#!/bin/sh\nprintf '%s\\n' "$*" >> ${log}\nexec ${process.execPath} "$@"\n`);
  chmodSync(join(dir, 'node'), 0o755);
  return { path: `${dir}:${process.env.PATH ?? '/usr/bin:/bin'}`, starts: () => readFileSync(log, 'utf8').split('\n').filter(Boolean) };
}

describe('push answered from the daemon\'s ack without Node, and never fooled', () => {
  let receiver: Receiver;
  let shim: ReturnType<typeof nodeShim>;

  beforeAll(async () => {
    receiver = await startReceiver({ servers: ['a', 'b', 'c', 'd', 'e', 'f'].map((name) => ({ name })) });
    shim = nodeShim();
  });

  /** A cluster that keeps its .ready segments (archive_mode on, archive_command empty) until a test archives them. */
  async function holdingCluster(name: string, agent: { receiver: Receiver | { url: string; tokens: Map<string, string> }; server: string; spoolDir?: string; extra?: Record<string, string>; timeout?: number }): Promise<Cluster> {
    const cluster = await createCluster({ name, agentConfig: agent, extraConf: { archive_mode: 'on', archive_command: '', wal_keep_size: '1GB' }, env: { PATH: shim.path } });
    await cluster.start();
    await cluster.psql('create table t (id int, note text)');
    return cluster;
  }

  /** Completes one segment (a few rows and a WAL switch); returns its name. */
  async function segment(cluster: Cluster, note: string): Promise<string> {
    await cluster.psql(`insert into t select g, '${note}' from generate_series(1, 2000) g`);
    return cluster.switchWal();
  }

  /** PostgreSQL's archive_command as the archiver runs it: the launcher, as postgres, in the data directory, node from PATH. */
  function archiveCommand(cluster: Cluster, path: string, config = cluster.agentConfigPath!): Promise<RunResult> {
    return run(agentLauncher(), ['-c', config, 'push', path], { asPostgres: true, cwd: cluster.pgdata, env: { PATH: shim.path } });
  }

  /** Runs `fn`; returns how many times Node started meanwhile. */
  async function nodeStartsDuring<T>(fn: () => Promise<T>): Promise<{ result: T; starts: string[] }> {
    const before = shim.starts().length;
    const result = await fn();
    return { result, starts: shim.starts().slice(before) };
  }

  /** spool_dir of the cluster's agent configuration */
  const spoolDir = (cluster: Cluster) => /^spool_dir = (.*)$/m.exec(readFileSync(cluster.agentConfigPath!, 'utf8'))![1]!;
  const ackDir = (cluster: Cluster) => join(spoolDir(cluster), 'acked');
  const ackOf = (cluster: Cluster, name: string): Ack | undefined => (existsSync(join(ackDir(cluster), name)) ? parseAck(readFileSync(join(ackDir(cluster), name), 'utf8')) : undefined);
  /** Writes an ack line into `cluster`'s spool, as postgres would own it. */
  function writeAck(cluster: Cluster, ack: Ack): void {
    makeDir(spoolDir(cluster), 'postgres', 0o700);
    const path = join(makeDir(ackDir(cluster), 'postgres', 0o700), ack.name);
    writeFileSync(path, formatAck(ack), { mode: 0o600 });
    execFileSync('chown', ['postgres:postgres', path]);
  }
  /** Push sessions (PostgreSQL's own push reaching the receiver) for `name`. */
  const pushSessionsFor = (name: string) => receiver.logs().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { role?: string; wal?: string; msg: string }).filter((l) => l.role === 'push' && l.wal === name);

  it('answers PostgreSQL from the daemon\'s ack without starting Node; every segment is in the catalog, byte for byte', async () => {
    const cluster = await createCluster({ name: 'a', archive: true, agentConfig: { receiver, server: 'a' }, extraConf: { wal_keep_size: '1GB' }, env: { PATH: shim.path } });
    const daemon = startDaemon(cluster.agentConfigPath!);
    // the daemon is connected before PostgreSQL archives anything
    await waitFor('the daemon to connect', () => existsSync(join(ackDir(cluster), '.daemon')));
    await cluster.start();
    expect(await cluster.psql('show archive_command')).toBe(archiveCommandLine(cluster.agentConfigPath!));
    await cluster.psql('create table t (id int, note text)');
    const before = shim.starts().length;
    const made: string[] = [];
    for (let i = 0; i < 6; i++) made.push(await segment(cluster, `a${i}`));
    await cluster.waitArchived(made);
    const stats = await cluster.waitArchiverIdle();
    expect(stats.failedCount).toBe(0);

    expect(shim.starts().slice(before), 'Node started by archive_command').toEqual([]);
    for (const name of made) expect(pushSessionsFor(name), `push sessions for ${name}`).toEqual([]);
    expect(await expectCatalogMatchesCluster(receiver, 'a', cluster)).toEqual(expect.arrayContaining(made));
    // PostgreSQL has used them: the daemon retires their acks
    await waitFor('the acks of archived segments to be retired', () => made.every((n) => !existsSync(join(ackDir(cluster), n))));
    expect(await daemon.stop()).toBe(0);
    expect(existsSync(join(ackDir(cluster), '.daemon')), 'a stopped daemon leaves no .daemon behind').toBe(false);
  }, 180_000);

  it('answers from the acks of segments the daemon pushed uncompressed, to a receiver that stores WAL as it is (compression = none)', async () => {
    const plain = await startReceiver({ servers: [{ name: 'p' }], compression: 'none' });
    try {
      const cluster = await holdingCluster('p', { receiver: plain, server: 'p' });
      const made = [await segment(cluster, 'p0'), await segment(cluster, 'p1'), await segment(cluster, 'p2')];
      const daemon = startDaemon(cluster.agentConfigPath!);
      await waitFor('the daemon to ack its segments', () => made.every((n) => ackOf(cluster, n) !== undefined));
      expect(await daemon.stop()).toBe(0);
      for (const name of made) {
        const sha256 = await sha256Of(cluster.walFile(name));
        expect(ackOf(cluster, name)!.sha256).toBe(sha256);
        expect(plain.walChecksum('p', name)).toBe(sha256);
        // stored as it is: the catalog copy is the segment's bytes, no compression suffix
        expect(plain.walPath('p', name)).not.toMatch(/\.(zst|lz4|gz)$/);
        expect(await sha256Of(plain.walPath('p', name))).toBe(sha256);
        const answered = await nodeStartsDuring(() => archiveCommand(cluster, `pg_wal/${name}`));
        expectSuccess(answered.result);
        expect(answered.starts, `Node started for ${name}`).toEqual([]);
      }
    } finally {
      await plain.stop();
    }
  }, 180_000);

  it('does not take a stale ack for the same name over different bytes, even with the mtime put back: Node pushes, and the receiver refuses the conflict', async () => {
    const cluster = await holdingCluster('b', { receiver, server: 'b' });
    const kept = await segment(cluster, 'b0');
    const altered = await segment(cluster, 'b1');
    const daemon = startDaemon(cluster.agentConfigPath!);
    await waitFor('the daemon to ack both segments', () => ackOf(cluster, kept) !== undefined && ackOf(cluster, altered) !== undefined);
    expect(await daemon.stop()).toBe(0);
    const ack = ackOf(cluster, altered)!;
    expect(ack.sha256).toBe(await sha256Of(cluster.walFile(altered)));
    expect(ack.sha256).toBe(receiver.walChecksum('b', altered));

    // the ack as the daemon wrote it answers at once, Node not started
    const untouched = await nodeStartsDuring(() => archiveCommand(cluster, `pg_wal/${kept}`));
    expectSuccess(untouched.result);
    expect(untouched.starts).toEqual([]);

    // one byte changes (past the switch record: the cluster never reads it), and the mtime is put back as it was
    const path = cluster.walFile(altered);
    const fd = openSync(path, 'r+');
    writeSync(fd, Buffer.from([0x5a]), 0, 1, SEGMENT_SIZE - 1);
    closeSync(fd);
    execFileSync('touch', ['-m', '-d', `@${ack.identity.mtime}`, path]);
    expect(identityOf(statSync(path, { bigint: true })).mtime).toBe(ack.identity.mtime);

    const tampered = await nodeStartsDuring(() => archiveCommand(cluster, `pg_wal/${altered}`));
    expectFailure(tampered.result, 1, new RegExp(`^ERROR \\[WAL_CONFLICT\\]: ${altered} is already archived with different content`, 'm'));
    expect(tampered.starts, 'Node pushed it').toHaveLength(1);
    expect(receiver.walChecksum('b', altered), 'the archived copy is the one the daemon pushed').toBe(ack.sha256);
    expect(listDir(join(receiver.serverDir('b'), 'errors')).filter((f) => f.startsWith(altered))).toHaveLength(1);
  }, 180_000);

  it('falls back to a full push when the daemon was killed after its push reached the receiver but before it recorded the ack', async () => {
    const relay = await startRelay({ host: receiver.host, port: receiver.port });
    // streaming off; a long timeout keeps the daemon waiting for the ack the relay swallows
    const cluster = await holdingCluster('c', { receiver: { url: relay.url, tokens: receiver.tokens }, server: 'c', timeout: 300 });
    const name = await segment(cluster, 'c0');
    // the daemon's connection carries the whole segment (compressed, as the catalog stores it), then the receiver's answer is lost
    relay.loseRepliesAfter(await wireBytesOf(cluster.walFile(name)));
    const daemon = startDaemon(cluster.agentConfigPath!);
    await waitFor(`the receiver to store ${name}`, () => existsSync(receiver.walPath('c', name)), { timeoutMs: 60_000 });
    expect(existsSync(join(ackDir(cluster), '.daemon')), 'the daemon is connected').toBe(true);
    expect(ackOf(cluster, name), 'no ack: the answer never reached the daemon').toBeUndefined();

    // PostgreSQL's push starts while the daemon lives (it waits for the ack), then the daemon dies
    const before = shim.starts().length;
    const pushing = archiveCommand(cluster, `pg_wal/${name}`);
    await new Promise((resolve) => setTimeout(resolve, 1000));
    await daemon.kill();
    expect(existsSync(join(ackDir(cluster), '.daemon')), 'a killed daemon leaves its .daemon behind').toBe(true);
    const r = await pushing;
    expectSuccess(r);
    expect(shim.starts().slice(before), 'Node pushed it').toHaveLength(1);
    expect(pushSessionsFor(name).map((l) => l.msg)).toEqual(['WAL already archived with identical content']);
    expect(receiver.walChecksum('c', name)).toBe(await sha256Of(cluster.walFile(name)));
    // and with the dead daemon's file still there, the next push goes to Node at once
    const again = await nodeStartsDuring(() => archiveCommand(cluster, `pg_wal/${name}`));
    expectSuccess(again.result);
    expect(again.starts).toHaveLength(1);
  }, 180_000);

  it('does not take acks of a spool another cluster left: another server, or only another system identifier', async () => {
    const left = await holdingCluster('d', { receiver, server: 'd' });
    const names = [await segment(left, 'd0'), await segment(left, 'd1'), await segment(left, 'd2')];
    const daemon = startDaemon(left.agentConfigPath!);
    await waitFor('the daemon to ack its segments', () => names.every((n) => ackOf(left, n) !== undefined));
    expect(await daemon.stop()).toBe(0);

    // a new cluster whose agent uses the same spool_dir: its first segments have the same names
    const spoolDir = join(left.dir, 'agent', 'spool');
    const cluster = await holdingCluster('e', { receiver, server: 'e', spoolDir });
    const mine = [await segment(cluster, 'e0'), await segment(cluster, 'e1'), await segment(cluster, 'e2')];
    expect(mine).toEqual(names);
    expect(await cluster.systemIdentifier()).not.toBe(await left.systemIdentifier());
    const sysid = sysidHex(await cluster.systemIdentifier());
    const ackOfMine = async (name: string): Promise<Ack> => ({
      ...ackOf(left, name)!, server: 'e', identity: identityOf(statSync(cluster.walFile(name), { bigint: true })), sysid, sha256: await sha256Of(cluster.walFile(name)),
    });

    // the other cluster's ack as it is: another server, another file
    const asLeft = await nodeStartsDuring(() => archiveCommand(cluster, `pg_wal/${mine[0]}`));
    expectSuccess(asLeft.result);
    expect(asLeft.starts, 'Node pushed it').toHaveLength(1);
    expect(receiver.walChecksum('e', mine[0]!)).toBe(await sha256Of(cluster.walFile(mine[0]!)));

    // an ack that says everything of this file right (control: answered without Node)...
    writeAck(cluster, await ackOfMine(mine[1]!));
    const control = await nodeStartsDuring(() => archiveCommand(cluster, `pg_wal/${mine[1]}`));
    expectSuccess(control.result);
    expect(control.starts).toEqual([]);
    // ...but for the other cluster's system identifier (and its bytes' checksum) is not taken
    writeAck(cluster, { ...(await ackOfMine(mine[2]!)), sysid: ackOf(left, mine[2]!)!.sysid, sha256: ackOf(left, mine[2]!)!.sha256 });
    const foreign = await nodeStartsDuring(() => archiveCommand(cluster, `pg_wal/${mine[2]}`));
    expectSuccess(foreign.result);
    expect(foreign.starts, 'Node pushed it').toHaveLength(1);
    expect(pushSessionsFor(mine[2]!).map((l) => l.msg)).toEqual(['WAL archived']);
    expect(receiver.walChecksum('e', mine[2]!)).toBe(await sha256Of(cluster.walFile(mine[2]!)));
  }, 180_000);

  it('does not take an ack for a recycled segment (renamed: same inode and mtime, new name): Node pushes, and the receiver refuses the misnamed bytes', async () => {
    const cluster = await holdingCluster('f', { receiver, server: 'f' });
    const name = await segment(cluster, 'f0');
    await segment(cluster, 'f1');
    // a copy outside pg_wal plays the file PostgreSQL recycles: acked as `name`, then renamed
    const dir = makeDir(join(makeTempDir('recycled', 'postgres', 0o755), 'pg_wal'), 'postgres', 0o755);
    const old = join(dir, name);
    copyFileSync(cluster.walFile(name), old);
    execFileSync('chown', ['postgres:postgres', old]);
    const acked: Ack = {
      server: 'f', receiver: `${receiver.url}/`, name, size: SEGMENT_SIZE, identity: identityOf(statSync(old, { bigint: true })),
      sysid: sysidHex(await cluster.systemIdentifier()), sha256: await sha256Of(old),
    };
    writeAck(cluster, acked);
    const control = await nodeStartsDuring(() => archiveCommand(cluster, old));
    expectSuccess(control.result);
    expect(control.starts, 'control: the ack answers for the file it names').toEqual([]);

    // recycled: renamed to a later segment's name, inode and mtime unchanged
    const recycledName = nextSegment(nextSegment(name, SEGMENT_SIZE), SEGMENT_SIZE);
    const recycled = join(dir, recycledName);
    renameSync(old, recycled);
    const now = identityOf(statSync(recycled, { bigint: true }));
    expect([now.ino, now.mtime]).toEqual([acked.identity.ino, acked.identity.mtime]);
    const refused = new RegExp(`^ERROR \\[WAL_INVALID\\]: ${recycledName}: first page address`, 'm');
    // the old ack carried over to the new name...
    writeAck(cluster, { ...acked, name: recycledName });
    const stale = await nodeStartsDuring(() => archiveCommand(cluster, recycled));
    expectFailure(stale.result, 1, refused);
    expect(stale.starts, 'Node pushed it').toHaveLength(1);
    // ...and even one that matches its identity now: only the page header tells
    writeAck(cluster, { ...acked, name: recycledName, identity: now });
    const forged = await nodeStartsDuring(() => archiveCommand(cluster, recycled));
    expectFailure(forged.result, 1, refused);
    expect(forged.starts, 'Node pushed it').toHaveLength(1);
    expect(existsSync(receiver.walPath('f', recycledName)), describeRun(forged.result)).toBe(false);
  }, 180_000);
});
