// The agent daemon's life, as the backup host sees it: the stream's state tells the truth when
// PostgreSQL dies or the daemon goes away (status says stale or disconnected, the RPO grows,
// check fails) and recovers by itself when they come back; one daemon per server (a second one
// is refused unless told --takeover, and a daemon whose network blipped is let back in); and a
// SIGTERM stops it promptly and cleanly, a backup in flight included, however often PostgreSQL
// restarted under it.
//
// The agent's timeout is short here (TIMEOUT_S): the receiver calls a stream stale once it has
// heard nothing from it for that long, so the tests wait seconds, not minutes.

import { beforeAll, describe, expect, it } from 'vitest';
import {
  type AgentDaemon, type Cluster, createCluster, expectSuccess, pgBin, type Receiver, receiverCheck, receiverStatus, runOk, runReceiverCli,
  startDaemon, startReceiver, startRelay, type StatusJson, type TcpRelay, waitFor, waitStreamCaughtUp,
} from '../harness';
import { showBackupJson } from '../harness/backups';
import { describeRun } from '../harness/run';

const SERVER = 'main';
const APPLICATION_NAME = 'barman_receive_main';
/** the agent's `timeout`: also how long the receiver waits for word from a stream before calling it stale */
const TIMEOUT_S = 6;
/** what a daemon's output must never hold, however it ends */
const CRASH_SIGNS = /uncaught|unhandled|MaxListenersExceeded|Warning:|^\s+at \S+ \(/im;

describe('the agent daemon tells the truth, keeps one writer per server, and stops cleanly', () => {
  let receiver: Receiver;
  let relay: TcpRelay;
  let cluster: Cluster;
  let daemon: AgentDaemon;

  beforeAll(async () => {
    receiver = await startReceiver({ servers: [{ name: SERVER }] });
    relay = await startRelay({ host: receiver.host, port: receiver.port });
    cluster = await createCluster({
      name: 'primary',
      archive: true,
      agentConfig: {
        receiver: { url: relay.url, tokens: receiver.tokens },
        server: SERVER,
        timeout: TIMEOUT_S,
        extra: { streaming: 'on', create_slot: 'auto', application_name: APPLICATION_NAME },
      },
    });
    await cluster.start();
    await cluster.psql('create table marker (id int primary key, note text not null)');
    daemon = startDaemon(cluster.agentConfigPath!);
    await daemon.waitStreaming();
    // a first archived segment, so `check` has WAL to be happy about
    await cluster.waitArchived(await cluster.switchWal());
  });

  const replicationConnections = () => cluster.psql(`select count(*) from pg_stat_replication where application_name = '${APPLICATION_NAME}'`);

  /** Waits until status shows the stream in one of `states` with an RPO above 0; returns that status. */
  async function waitStreamLost(states: string[]): Promise<StatusJson> {
    let last: StatusJson | undefined;
    return waitFor(`status to say ${states.join(' or ')} with an RPO above 0`, async () => {
      last = await receiverStatus(receiver, SERVER);
      return states.includes(last.streaming.state) && last.rpo_seconds !== null && last.rpo_seconds > 0 ? last : false;
    }, { timeoutMs: (TIMEOUT_S + 30) * 1000, intervalMs: 500 }).catch((err: Error) => {
      throw new Error(`${err.message}\n--- last status\n${JSON.stringify(last, null, 2)}`);
    });
  }

  /** `check` passes, every line of it. */
  async function expectCheckPasses(): Promise<void> {
    const r = await receiverCheck(receiver, SERVER);
    expectSuccess(r);
    expect(r.stdout, describeRun(r)).not.toMatch(/FAILED/);
  }

  /**
   * `check` fails (exit 1) on the streaming line, why, and on exactly the other lines the same
   * cause takes down (`alsoFailing`: the daemon and PostgreSQL, which check asks through it).
   */
  async function expectCheckFailsOnStreaming(why: RegExp, alsoFailing: string[]): Promise<void> {
    const r = await receiverCheck(receiver, SERVER);
    expect(r.code, describeRun(r)).toBe(1);
    const failed = r.stdout.split('\n').filter((l) => /: FAILED/.test(l));
    expect(failed.map((l) => l.trim().split(': FAILED')[0]).sort(), describeRun(r)).toEqual(['WAL streaming', ...alsoFailing].sort());
    const streaming = failed.find((l) => /^\s*WAL streaming: FAILED \(/.test(l));
    expect(streaming, describeRun(r)).toMatch(why);
  }

  it('says stale, lets the RPO grow and fails check when PostgreSQL is killed; streams again with RPO 0 once it is back', async () => {
    await cluster.psql("insert into marker values (1, 'before the crash')");
    const before = await waitStreamCaughtUp(receiver, SERVER, cluster);
    expect(before.rpo_seconds).toBe(0);
    await expectCheckPasses();
    const streams = daemon.linesMatching(/^streaming WAL$/).length;

    await cluster.crash();
    const lost = await waitStreamLost(['stale']);
    // the daemon is still connected: it is PostgreSQL that went quiet
    expect(lost.agent.connected).toBe(true);
    await expectCheckFailsOnStreaming(/stale|nothing/i, ['PostgreSQL']);

    await cluster.start();
    await daemon.waitStreaming(streams, { timeoutMs: 90_000 });
    await cluster.psql("insert into marker values (2, 'after the crash')");
    const back = await waitStreamCaughtUp(receiver, SERVER, cluster, { timeoutMs: 90_000 });
    expect(back.rpo_seconds).toBe(0);
    await expectCheckPasses();
    expect(daemon.running).toBe(true);
  });

  it('says disconnected, lets the RPO grow and fails check while no daemon is connected; all well once it is back', async () => {
    await waitStreamCaughtUp(receiver, SERVER, cluster);
    expect(await daemon.stop(), daemon.output().slice(-4000)).toBe(0);
    const lost = await waitStreamLost(['disconnected']);
    expect(lost.agent.connected).toBe(false);
    await expectCheckFailsOnStreaming(/no agent daemon/i, ['agent connected', 'PostgreSQL']);

    daemon.restart();
    await daemon.waitStreaming();
    const back = await waitStreamCaughtUp(receiver, SERVER, cluster);
    expect(back.rpo_seconds).toBe(0);
    await expectCheckPasses();
  });

  it('refuses a second daemon for the same server while the first lives; the first keeps archiving and streaming', async () => {
    await waitStreamCaughtUp(receiver, SERVER, cluster);
    const connects = daemon.linesMatching(/^connected to the receiver$/).length;
    const second = startDaemon(cluster.agentConfigPath!);
    const code = await second.waitExit();
    expect(code, second.output()).toBe(1);
    // it says which daemon holds the server, since when and from where, and how to replace it
    expect(second.output()).toMatch(/already has a live agent daemon.*connected since \S+ from \S+/);
    expect(second.output()).toMatch(/^HINT: .*--takeover/m);
    expect(second.output()).not.toMatch(CRASH_SIGNS);

    // the first never noticed
    expect(daemon.running).toBe(true);
    expect(daemon.linesMatching(/^connected to the receiver$/).length, daemon.output().slice(-4000)).toBe(connects);
    await cluster.psql("insert into marker values (3, 'while a second daemon was refused')");
    const segment = await cluster.switchWal();
    await cluster.waitArchived(segment);
    await waitStreamCaughtUp(receiver, SERVER, cluster);
    expect(await replicationConnections()).toBe('1');
    expect((await receiverStatus(receiver, SERVER)).agent.connected).toBe(true);
  });

  it('lets a daemon started with --takeover replace the live one, which says why and exits 0 (so systemd leaves it stopped)', async () => {
    const first = daemon;
    const second = startDaemon(cluster.agentConfigPath!, ['--takeover']);
    await second.waitStreaming();
    await waitFor('the replaced daemon to exit', () => !first.running);
    expect(await first.waitExit(), first.output().slice(-4000)).toBe(0);
    expect(first.linesMatching(/took over/).length, first.output().slice(-4000)).toBe(1);
    expect(first.output()).not.toMatch(CRASH_SIGNS);

    await cluster.psql("insert into marker values (4, 'streamed by the daemon that took over')");
    await waitStreamCaughtUp(receiver, SERVER, cluster);
    expect(await replicationConnections()).toBe('1');
    expect(second.linesMatching(/connection lost/)).toEqual([]);

    // back to the file's own daemon for the tests that follow
    expect(await second.stop(), second.output().slice(-4000)).toBe(0);
    first.restart();
    await first.waitStreaming();
    await waitStreamCaughtUp(receiver, SERVER, cluster);
  });

  it('lets the same daemon back in after its connection was cut or went silent, while the receiver may still hold the old one', async () => {
    for (const fault of ['cut', 'freeze'] as const) {
      const connects = daemon.linesMatching(/^connected to the receiver$/).length;
      const streams = daemon.linesMatching(/^streaming WAL$/).length;
      expect(fault === 'cut' ? relay.cut() : relay.freeze(), `connections the ${fault} hit`).toBeGreaterThan(0);
      await daemon.waitForLog(/^connected to the receiver$/, connects);
      await daemon.waitStreaming(streams);
      await cluster.psql(`insert into marker values (${fault === 'cut' ? 5 : 6}, 'after the ${fault}')`);
      await waitStreamCaughtUp(receiver, SERVER, cluster);
    }
    expect(daemon.running).toBe(true);
    expect(daemon.linesMatching(/live agent daemon/), daemon.output().slice(-4000)).toEqual([]);
    // after the silence the daemon was back (within its timeout) before the receiver's own heartbeat
    // gave up on the old connection: it was let in as itself, the old connection dropped
    expect(receiver.logs()).toContain('the same agent daemon connected again');
    expect(await replicationConnections()).toBe('1');
  });

  it('resumes streaming after each of 10 PostgreSQL restarts, with no listener piling up', async () => {
    for (let i = 0; i < 10; i++) {
      const streams = daemon.linesMatching(/^streaming WAL$/).length;
      await cluster.restart('fast');
      await daemon.waitStreaming(streams, { timeoutMs: 90_000 });
    }
    await cluster.psql("insert into marker values (7, 'after ten restarts')");
    const status = await waitStreamCaughtUp(receiver, SERVER, cluster, { timeoutMs: 90_000 });
    expect(status.rpo_seconds).toBe(0);
    expect(daemon.running).toBe(true);
    expect(daemon.output()).not.toMatch(CRASH_SIGNS);
  }, 600_000);

  it('stops promptly on SIGTERM during a backup: exit 0, the backup FAILED with the reason, PostgreSQL left with no backup session', async () => {
    await runOk(pgBin('pgbench'), ['-i', '-s', '10', '-q', '-h', cluster.socketDir, '-p', String(cluster.port), 'postgres'], { asPostgres: true });
    await waitStreamCaughtUp(receiver, SERVER, cluster, { timeoutMs: 90_000 });
    // a slow link keeps the backup running long enough to be interrupted (160 MB at 8 MiB/s)
    relay.limit(8 * 1024 * 1024);
    try {
      const started = daemon.linesMatching(/^backup started$/).length;
      const waiting = runReceiverCli(['backup', '-c', receiver.configPath, SERVER, '--wait']);
      const line = await daemon.waitForLog(/^backup started$/, started, { intervalMs: 20 });
      const backupId = String(line.backup);
      expect((await receiverStatus(receiver, SERVER)).backups.running).toBe(backupId);

      const exited = daemon.stop();
      const code = await Promise.race([exited, new Promise<string>((resolve) => setTimeout(() => resolve('still running 20 s after SIGTERM'), 20_000))]);
      expect(code, daemon.output().slice(-4000)).toBe(0);
      expect(daemon.output()).not.toMatch(CRASH_SIGNS);

      // the DBA waiting on the backup hears that it failed, and why
      const waited = await waiting;
      expect(waited.code, describeRun(waited)).toBe(1);
      expect(waited.stderr).toMatch(/SIGTERM/);
      const info = await showBackupJson(receiver, SERVER, backupId);
      expect(info.status).toBe('FAILED');
      expect(info.error).toMatch(/daemon.*SIGTERM/);
      // the backup's PostgreSQL session ended with it (pg_backup_stop, or the connection closed)
      await waitFor('the backup session to leave PostgreSQL', async () => (await cluster.psql("select count(*) from pg_stat_activity where application_name = 'barman-agent backup'")) === '0');
    } finally {
      relay.limit(undefined);
    }
    daemon.restart();
    await daemon.waitStreaming();
    await waitStreamCaughtUp(receiver, SERVER, cluster);
  });
});
