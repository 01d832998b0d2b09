// A DBA's day with the agent daemon (`barman-agent daemon`, streaming = on): it pushes WAL ahead
// of PostgreSQL's archive_command and streams every byte through a replication slot as it is
// written. Under pgbench the archive never falls behind; a primary that dies without a WAL switch
// loses no committed row; the receiver crashing, the network failing and the daemon itself being
// killed leave no gap and no duplicate byte; an ack lost on the way back does not hang
// archive_command; and synchronous_standby_names makes a commit wait for the backup host.
// (One daemon per server, stale streams and shutdown: daemon-lifecycle.test.ts.)
//
// The agent reaches the receiver through a TCP relay (test/harness/relay.ts), so the network can
// fail mid-segment without touching either process: cut (every open connection reset, as by a
// router restart), silenced (forwarding stopped with both sockets left open: no FIN, no RST,
// only the heartbeats can tell), or losing the receiver's answer to one upload.

import { existsSync, readdirSync, readFileSync, statSync, watch } from 'node:fs';
import { dirname, join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  type AgentDaemon, type Cluster, createCluster, expectFailure, expectSuccess, listDir, pgBin, type Receiver, receiverStatus, runAgent,
  runOk, sha256Of, startDaemon, startReceiver, startRelay, type TcpRelay, waitFor, waitStreamCaughtUp, writeAgentConfig,
} from '../harness';
import { backupAndWait, recoverInto } from '../harness/backups';
import { startBackground, startRecovered } from '../harness/recovered';

const SERVER = 'main';
const APPLICATION_NAME = 'barman_receive_main';
const SLOT = 'barman_main';
/** how PostgreSQL prints an LSN */
const LSN = /^[0-9A-F]{1,8}\/[0-9A-F]{1,8}$/;

describe("a DBA's day with the agent daemon: async archiving and WAL streaming", () => {
  let receiver: Receiver;
  let relay: TcpRelay;
  let cluster: Cluster;
  let daemon: AgentDaemon;

  const serverDir = () => receiver.serverDir(SERVER);
  const pgbenchTarget = () => ['-h', cluster.socketDir, '-p', String(cluster.port), 'postgres'];

  beforeAll(async () => {
    receiver = await startReceiver({ servers: [{ name: SERVER }] });
    relay = await startRelay({ host: receiver.host, port: receiver.port });
    cluster = await createCluster({
      name: 'primary',
      archive: true,
      agentConfig: {
        receiver: { url: relay.url, tokens: receiver.tokens },
        server: SERVER,
        extra: { streaming: 'on', slot_name: SLOT, create_slot: 'auto', application_name: APPLICATION_NAME },
      },
      // every segment stays in pg_wal, so the catalog can be compared with PostgreSQL's own files
      extraConf: { wal_keep_size: '4GB' },
    });
    await cluster.start();
    await cluster.psql('create table marker (id int primary key, note text not null)');
    daemon = startDaemon(cluster.agentConfigPath!);
    await daemon.waitStreaming();
  });

  /**
   * Every segment in the catalog is byte for byte the primary's (where pg_wal still has it),
   * nothing was set aside under errors/, and the streamed partial segment is exactly the
   * beginning of the primary's segment. Returns how many segments were compared.
   */
  async function expectCatalogIdenticalToPrimary(): Promise<number> {
    let compared = 0;
    for (const name of receiver.segments(SERVER)) {
      if (!/^[0-9A-F]{24}$/.test(name) || !existsSync(cluster.walFile(name))) continue;
      expect(receiver.walSha256(SERVER, name), `${name} in the catalog and in the primary's pg_wal`).toBe(await sha256Of(cluster.walFile(name)));
      compared++;
    }
    expect(listDir(join(serverDir(), 'errors')), 'files the receiver set aside').toEqual([]);
    for (const partial of listDir(join(serverDir(), 'streaming')).filter((f) => f.endsWith('.partial'))) {
      const segment = partial.slice(0, 24);
      let streamed: Buffer;
      try {
        streamed = readFileSync(join(serverDir(), 'streaming', partial));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        // pgbench writes on: the segment was completed, archived and its partial removed since the listing
        expect(receiver.walSha256(SERVER, segment), `${segment}, completed while the catalog was compared`).toBe(await sha256Of(cluster.walFile(segment)));
        continue;
      }
      const primary = readFileSync(cluster.walFile(segment));
      expect(streamed.equals(primary.subarray(0, streamed.length)), `streaming/${partial} (${streamed.length} bytes) is the start of the primary's segment`).toBe(true);
    }
    return compared;
  }

  /**
   * Once caught up: the receiver holds exactly the bytes before its received LSN, no more and no
   * less (the partial segment's size is that LSN's offset in its segment, as PostgreSQL computes it).
   */
  async function expectStreamEndsAtReceivedLsn(): Promise<void> {
    const status = await waitStreamCaughtUp(receiver, SERVER, cluster);
    const [file, offset] = (await cluster.psql(`select file_name, file_offset from pg_walfile_name_offset('${status.streaming.received_lsn}')`)).split('|');
    if (offset === '0') return; // exactly at a segment boundary: the segment is complete, nothing partial
    const partial = join(serverDir(), 'streaming', `${file}.partial`);
    expect(existsSync(partial), `${partial} holds the stream's last bytes`).toBe(true);
    expect(statSync(partial).size, `streaming/${file}.partial against received_lsn ${status.streaming.received_lsn}`).toBe(Number(offset));
  }

  /** Pino lines of the receiver at level error (50) or above. */
  function receiverErrors(): string[] {
    return receiver.logs().split('\n').filter((l) => l.startsWith('{') && (JSON.parse(l) as { level: number }).level >= 50);
  }

  it('shows the stream on the backup host: agent connected, streaming, LSNs as PostgreSQL prints them, RPO 0 once caught up', async () => {
    await cluster.psql("insert into marker values (0, 'the day begins')");
    const caughtUp = await waitStreamCaughtUp(receiver, SERVER, cluster);
    expect(caughtUp.rpo_seconds).toBe(0);

    // PostgreSQL sees the daemon as a standby under its application_name, on the configured slot
    const standby = await waitFor('PostgreSQL to list the daemon in pg_stat_replication', async () => {
      const row = await cluster.psql(`select state, flush_lsn from pg_stat_replication where application_name = '${APPLICATION_NAME}'`);
      return row.startsWith('streaming|') ? row.split('|')[1]! : false;
    });
    expect(await cluster.psql(`select slot_type, active from pg_replication_slots where slot_name = '${SLOT}'`)).toBe('physical|t');

    const status = await receiverStatus(receiver, SERVER);
    expect(status.server).toBe(SERVER);
    expect(status.agent.connected).toBe(true);
    expect(status.streaming.state).toBe('streaming');
    expect(status.streaming.received_lsn).toMatch(LSN);
    expect(status.streaming.flush_lsn).toMatch(LSN);
    expect(typeof status.streaming.lag_bytes).toBe('number');
    // the slot only ever moves to what the receiver has flushed: PostgreSQL's idea of the
    // standby's flush position never runs ahead of the receiver's own
    expect(await cluster.psql(`select '${status.streaming.flush_lsn}'::pg_lsn >= '${standby}'::pg_lsn`)).toBe('t');
    expect(await cluster.psql(`select '${status.streaming.flush_lsn}'::pg_lsn >= restart_lsn from pg_replication_slots where slot_name = '${SLOT}'`)).toBe('t');
  });

  it('keeps up with pgbench: the .ready backlog stays small, no archive_command fails, every segment is the primary\'s, and push answers every one from the daemon\'s ack', async () => {
    const statusDir = join(cluster.pgdata, 'pg_wal', 'archive_status');
    const ackDir = join(dirname(cluster.agentConfigPath!), 'spool', 'acked');
    const readyCounts: number[] = [];
    const sample = (): void => {
      readyCounts.push(readdirSync(statusDir).filter((f) => f.endsWith('.ready')).length);
    };
    // every ack the daemon writes (each lives only until PostgreSQL has used it)
    const acked = new Set<string>();
    const acks = watch(ackDir, (_event, file) => {
      if (file && /^[0-9A-F]{24}$/.test(file)) acked.add(file);
    });
    const sampler = setInterval(sample, 500);
    try {
      await runOk(pgBin('pgbench'), ['-i', '-s', '10', '-q', ...pgbenchTarget()], { asPostgres: true });
      await runOk(pgBin('pgbench'), ['-n', '-c', '2', '-j', '2', '-T', '20', ...pgbenchTarget()], { asPostgres: true });
    } finally {
      clearInterval(sampler);
    }
    sample();
    const last = await cluster.switchWal();
    await cluster.waitArchived(last);
    const stats = await cluster.waitArchiverIdle();
    acks.close();

    expect(readyCounts.length, 'samples of archive_status taken under load').toBeGreaterThan(40);
    expect(Math.max(...readyCounts), `.ready files in archive_status, sampled every 500 ms: ${readyCounts.join(' ')}`).toBeLessThan(8);
    expect(stats.failedCount).toBe(0);
    expect(stats.archivedCount, 'segments pgbench made PostgreSQL archive').toBeGreaterThanOrEqual(8);

    // what PostgreSQL counts as archived is in the catalog, byte for byte
    const done = readdirSync(statusDir).filter((f) => /^[0-9A-F]{24}\.done$/.test(f)).map((f) => f.slice(0, 24));
    expect(receiver.segments(SERVER)).toEqual(done.sort());
    expect(await expectCatalogIdenticalToPrimary()).toBeGreaterThanOrEqual(done.length);
    await expectStreamEndsAtReceivedLsn();

    // PostgreSQL's own `barman-agent push` answered every segment from the daemon's durable ack
    // (it waits for the ack while the daemon is connected) and sent none of them again: every
    // segment PostgreSQL archived had its ack written, and the receiver saw no push session for any
    expect(done.filter((name) => !acked.has(name)), `segments archived without an ack in ${ackDir} (acks written: ${acked.size})`).toEqual([]);
    const sentByPush = new Set(
      receiver.logs().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { role?: string; wal?: string })
        .filter((l) => l.role === 'push' && l.wal).map((l) => l.wal!),
    );
    expect(done.filter((name) => sentByPush.has(name)), 'segments archive_command sent itself instead of answering from the daemon\'s ack').toEqual([]);
  }, 240_000);

  it('loses no committed row when the primary dies without a WAL switch: recover latest replays the streamed partial segment', async () => {
    const backup = await backupAndWait(receiver, SERVER, cluster);
    await cluster.psql("insert into marker values (1, 'committed just before the crash')");
    const segment = await cluster.psql('select pg_walfile_name(pg_current_wal_flush_lsn())');
    await waitStreamCaughtUp(receiver, SERVER, cluster);
    // the marker's segment was never completed, so never archived: only the stream has it
    expect(existsSync(receiver.walPath(SERVER, segment))).toBe(false);
    expect(existsSync(join(serverDir(), 'streaming', `${segment}.partial`))).toBe(true);

    await cluster.stop('immediate');
    const recovery = await recoverInto(receiver, SERVER, 'latest');
    expectSuccess(recovery.result);
    expect(recovery.result.stdout).toContain(backup);
    // the primary comes back (crash recovery) and goes on with its day while the copy starts
    await cluster.start();
    const copy = await startRecovered(recovery.dest, recovery.dir);
    await copy.waitPromoted();
    expect(await copy.psql('select id, note from marker order by id')).toBe("0|the day begins\n1|committed just before the crash");
    await copy.dispose();

    // the daemon picks the restarted primary up again by itself
    await waitStreamCaughtUp(receiver, SERVER, cluster, { timeoutMs: 90_000 });
  });

  it('streams on through a receiver crash, a network cut, a silent network and a daemon crash: no gap, no duplicate byte', async () => {
    const bench = startBackground(pgBin('pgbench'), ['-n', '-c', '1', '-T', '600', ...pgbenchTarget()]);
    const history = async () => Number(await cluster.psql('select count(*) from pgbench_history'));
    const writing = async (what: string) => {
      const before = await history();
      await waitFor(`pgbench to commit more (${what})`, async () => {
        if (!bench.running) throw new Error(`pgbench exited:\n${bench.output()}`);
        return (await history()) > before;
      });
    };
    /** the fault hits while a segment is half streamed: waits until streaming/ holds a partial segment with bytes in it */
    const midSegment = () =>
      waitFor('a partial segment being streamed', () =>
        listDir(join(serverDir(), 'streaming')).some((f) => f.endsWith('.partial') && statSync(join(serverDir(), 'streaming', f)).size > 0));
    /** streaming resumed after the fault and PostgreSQL's new WAL reaches the receiver */
    const resumed = async (streamsBefore: number, what: string) => {
      await daemon.waitStreaming(streamsBefore, { timeoutMs: 90_000 });
      await writing(what);
      await waitStreamCaughtUp(receiver, SERVER, cluster, { timeoutMs: 90_000 });
      await expectCatalogIdenticalToPrimary();
    };
    await writing('before the faults');

    // 1. the receiver is SIGKILLed mid-segment and started again on the same port
    let streams = daemon.linesMatching(/^streaming WAL$/).length;
    await midSegment();
    await receiver.kill();
    await receiver.start();
    await resumed(streams, 'after the receiver crash');

    // 2. the network resets every connection mid-segment (both processes live on)
    streams = daemon.linesMatching(/^streaming WAL$/).length;
    await midSegment();
    expect(relay.cut(), 'connections the cut reset').toBeGreaterThan(0);
    await resumed(streams, 'after the network cut');

    // 3. the network goes silent (no FIN, no RST): the heartbeat notices and the daemon reconnects
    streams = daemon.linesMatching(/^streaming WAL$/).length;
    const lost = daemon.linesMatching(/connection lost/).length;
    await midSegment();
    expect(relay.freeze(), 'connections silenced').toBeGreaterThan(0);
    await daemon.waitForLog(/connection lost/, lost, { timeoutMs: 60_000 });
    await resumed(streams, 'after the silent network');

    // 4. the daemon is SIGKILLed mid-segment and started again
    streams = daemon.linesMatching(/^streaming WAL$/).length;
    await midSegment();
    await daemon.kill();
    daemon.restart();
    await resumed(streams, 'after the daemon crash');

    await bench.stop('SIGTERM');
    const last = await cluster.switchWal();
    await cluster.waitArchived(last);
    await waitStreamCaughtUp(receiver, SERVER, cluster);
    await expectStreamEndsAtReceivedLsn();
    expect(await expectCatalogIdenticalToPrimary()).toBeGreaterThan(0);
    // segments the stream completed during the faults (not only what archive_command sent)
    const streamedComplete = receiver.logs().split('\n').filter((l) => l.includes('"streamed segment complete"'));
    expect(streamedComplete.length, 'segments completed from the stream').toBeGreaterThan(0);
    expect(receiverErrors(), 'error lines in the receiver log').toEqual([]);
    const status = await receiverStatus(receiver, SERVER);
    expect(status).toMatchObject({ agent: { connected: true }, streaming: { state: 'streaming', lag_bytes: 0 }, rpo_seconds: 0 });
  }, 300_000);

  it('does not let an ack lost on a silent network hang archive_command: the push fails within the agent\'s timeout, the retry succeeds', async () => {
    // a path of its own, so no other connection takes the lossy one
    const lossy = await startRelay({ host: receiver.host, port: receiver.port });
    const config = writeAgentConfig({ receiver: { url: lossy.url, tokens: receiver.tokens }, server: SERVER, pgdata: cluster.pgdata, conninfo: cluster.conninfo, timeout: 4 }).path;
    const segment = await cluster.switchWal();
    // the segment goes through; the receiver's answer never comes back, and nothing says so (the
    // daemon may have archived the segment already: then the answer, duplicate, comes as soon as
    // the put arrives, before the segment's compressed bytes have crossed; it is lost as well)
    lossy.loseRepliesAfterHandshake();
    const lost = await runAgent(['push', '-c', config, cluster.walFile(segment)]);
    expectFailure(lost, 1, /did not answer/);
    // PostgreSQL retries; the segment is there, byte for byte
    expectSuccess(await runAgent(['push', '-c', config, cluster.walFile(segment)]));
    await waitFor(`${segment} in the catalog`, () => existsSync(receiver.walPath(SERVER, segment)));
    expect(receiver.walSha256(SERVER, segment)).toBe(await sha256Of(cluster.walFile(segment)));
  });

  it('with synchronous_standby_names, a commit does not return while the receiver is down, and returns once it is back', async () => {
    await cluster.psql(`alter system set synchronous_standby_names = '${APPLICATION_NAME}'`);
    await cluster.reload();
    try {
      await waitFor('PostgreSQL to take the daemon for its synchronous standby', async () =>
        (await cluster.psql(`select sync_state from pg_stat_replication where application_name = '${APPLICATION_NAME}'`)) === 'sync', { timeoutMs: 90_000 });
      await cluster.psql("insert into marker values (10, 'synchronous, receiver up')");

      await receiver.kill();
      let returned = false;
      const insert = cluster.psql("set statement_timeout = 0; insert into marker values (11, 'synchronous, committed while the receiver was down')");
      void insert.then(() => (returned = true), () => (returned = true));
      const waitingForStandby = "select count(*) from pg_stat_activity where wait_event = 'SyncRep' and query like 'insert into marker%'";
      await waitFor('the INSERT to wait for the synchronous standby', async () => (await cluster.psql(waitingForStandby)) === '1');
      // a couple of seconds later it still waits (a state looked at twice, not a time measured)
      await new Promise((resolve) => setTimeout(resolve, 2_000));
      expect(returned, 'the INSERT returned while the receiver was down').toBe(false);
      expect(await cluster.psql(waitingForStandby)).toBe('1');

      await receiver.start();
      await insert;

      // a synchronous commit that returned is on the backup host: the primary dies at once, and
      // recovery from the catalog has the row
      await cluster.stop('immediate');
      const recovery = await recoverInto(receiver, SERVER, 'latest');
      expectSuccess(recovery.result);
      await cluster.start();
      const copy = await startRecovered(recovery.dest, recovery.dir);
      await copy.waitPromoted();
      expect(await copy.psql('select id, note from marker where id >= 10 order by id')).toBe('10|synchronous, receiver up\n11|synchronous, committed while the receiver was down');
      await copy.dispose();
    } finally {
      if (!cluster.isRunning()) await cluster.start();
      await cluster.psql('alter system reset synchronous_standby_names');
      await cluster.reload();
    }
  });
});
