// The receiver against a broken or hostile client and against bad input. Anyone who reaches the
// port can cost it only a little memory for a little while; an agent holding a valid token can
// neither lock its server's own agents out nor make the receiver hang; a name or a clock the
// agent gets wrong is refused in words; and the service starts, stops and recovers like a
// program a DBA can trust: a busy port or an impossible destination is an error with a HINT.

import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { backupIdFor } from '../../shared/backup/info';
import { CHUNK_SIZE, type ErrorFrame, type Frame } from '../../shared/protocol/frames';
import {
  type Cluster, crc32cOfBytes, createCluster, expectFailure, expectSuccess, listDir, makeTempDir, newToken, RawClient, type Receiver, runAgent,
  runReceiverCli, sha256Of, sha256OfBytes, startReceiver, waitFor, writeAgentConfig, writeTokenFile,
} from '../harness';
import { backupAndWait, showBackupJson, waitBackupStatus } from '../harness/backups';
import { iniText } from '../harness/receiver';

const SEGMENT_SIZE = 16 * 1024 * 1024;
/** the receiver's timeout = in these tests: uploads without data this long are aborted */
const TIMEOUT_SECONDS = 5;

const push = (config: string, path: string) => runAgent(['push', '-c', config, path]);

/** kB of memory the process holds now (VmRSS) and at most ever held (VmHWM), from /proc. */
function memoryOf(pid: number): { rss: number; peak: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)![1]);
  return { rss: kb('VmRSS'), peak: kb('VmHWM') };
}

/**
 * Keeps uploads alive the way a slow but working sender does: every 500 ms, the next KiB of
 * `bytes` to each (client, put id). Returns a function that stops it.
 */
function trickle(uploads: Array<{ client: RawClient; id: number }>, bytes: Buffer, from = 0): () => void {
  let offset = from;
  const timer = setInterval(() => {
    for (const { client, id } of uploads) if (client.isOpen) client.send({ type: 'chunk', id, data: bytes.subarray(offset, offset + 1024) });
    offset += 1024;
  }, 500);
  return () => clearInterval(timer);
}

describe('the receiver holds against a hostile or broken client', () => {
  let receiver: Receiver;
  /** a cluster that does not archive by itself: tests push its segments by hand */
  let prod: Cluster;
  const segs: string[] = [];
  /** agent configurations of each server, with its own token */
  const agents: Record<string, string> = {};

  /** What an agent reports at a backup's start, for `prod`, started now (backup-begin). */
  const backupStart = async () => ({ startLsn: '0/2000028', timeline: 1, startTime: new Date().toISOString(), systemIdentifier: await prod.systemIdentifier(), pgVersion: 150018, segmentSize: SEGMENT_SIZE, pgdata: prod.pgdata, tablespaces: [] });

  beforeAll(async () => {
    receiver = await startReceiver({ servers: [{ name: 'main' }, { name: 'busy' }, { name: 'spare' }, { name: 'closing' }], extra: { timeout: String(TIMEOUT_SECONDS) } });
    prod = await createCluster({ name: 'prod', extraConf: { wal_keep_size: '1GB' } });
    await prod.start();
    await prod.psql('create table t (id int)');
    for (let i = 0; i < 6; i++) {
      await prod.psql('insert into t select generate_series(1, 1000)');
      segs.push(await prod.switchWal());
    }
    for (const server of ['main', 'busy', 'spare']) agents[server] = writeAgentConfig({ receiver, server, pgdata: prod.pgdata, conninfo: prod.conninfo }).path;
    expectSuccess(await push(agents.main!, prod.walFile(segs[0]!)));
  });

  it('keeps its memory bounded under a flood of unauthenticated connections and half-sent messages; a real push gets through during and after', async () => {
    const pid = receiver.pid!;
    const before = memoryOf(pid);

    // 100 connections that never say hello: only the newest few per address stay open
    const idle: RawClient[] = [];
    for (let i = 0; i < 100; i++) idle.push(await RawClient.connect(receiver.url));
    await waitFor('the receiver to close all but the newest unauthenticated connections', () => idle.filter((c) => c.isOpen).length <= 32);
    expect(idle.at(-1)!.isOpen).toBe(true);
    expectSuccess(await push(agents.main!, prod.walFile(segs[1]!)));

    // 200 connections, each sending most of a 2 MiB message (the authenticated limit) and never its end
    const unfinished = Buffer.alloc(2 * 1024 * 1024 - 64 * 1024, 0x61);
    const flood = async (n: number) => {
      const sent: Array<Promise<void>> = [];
      for (let i = 0; i < n; i++) {
        const attacker = await RawClient.connect(receiver.url).catch(() => undefined);
        if (attacker) sent.push(attacker.sendUnfinished(unfinished));
      }
      await Promise.all(sent);
    };
    await flood(100);
    const [during] = await Promise.all([push(agents.main!, prod.walFile(segs[2]!)), flood(100)]);
    expectSuccess(during);
    expect(receiver.walSha256('main', segs[2]!)).toBe(await sha256Of(prod.walFile(segs[2]!)));

    const flooded = memoryOf(pid);
    expect(flooded.peak - before.rss, `receiver memory: ${before.rss} kB before, peak ${flooded.peak} kB`).toBeLessThan(100 * 1024);
    expect(receiver.logs()).toMatch(/unauthenticated connection dropped: sent more than 65536 bytes before authenticating/);

    // the attackers leave; the receiver holds no more than before, and serves on
    for (const c of idle) c.terminate();
    expect(memoryOf(pid).rss - before.rss).toBeLessThan(100 * 1024);
    expectSuccess(await push(agents.main!, prod.walFile(segs[3]!)));
    expect(receiver.running).toBe(true);
  });

  it('answers an unknown server exactly as a wrong token on the wire; its log and the agent\'s HINT still say what to check', async () => {
    const answers = async (server: string) => {
      const client = await RawClient.connect(receiver.url);
      const frames = await client.tryAuthenticate(server, newToken());
      return { frames, closed: await client.closed };
    };
    const unknown = await answers('mian');
    const wrong = await answers('main');
    expect(unknown.frames.map((f) => f.type)).toEqual(['challenge', 'error']);
    expect(wrong.frames.map((f) => f.type)).toEqual(['challenge', 'error']);
    const [u, w] = [unknown.frames[1] as ErrorFrame, wrong.frames[1] as ErrorFrame];
    expect(u.code).toBe('AUTH_FAILED');
    expect(w.code).toBe('AUTH_FAILED');
    const anonymous = (f: ErrorFrame, name: string) => `${f.message}\n${f.hint}`.split(name).join('<server>');
    expect(anonymous(u, 'mian')).toBe(anonymous(w, 'main'));
    expect(unknown.closed.code).toBe(wrong.closed.code);
    // the receiver's log tells the two apart
    expect(receiver.logs()).toMatch(/"server":"mian".*"code":"UNKNOWN_SERVER".*no such server/);
    expect(receiver.logs()).toMatch(/"server":"main".*"code":"AUTH_FAILED".*wrong token/);

    // the agent's own words: one error, and a HINT naming both things to check
    const typo = writeAgentConfig({ receiver, server: 'mian', token: newToken() }).path;
    const r = await push(typo, prod.walFile(segs[1]!));
    expectFailure(r, 1, /authentication failed for server "mian": the receiver has no server of that name, or the agent's token is not that server's/);
    expect(r.stderr).toMatch(/^HINT: .*server = mian.*list-servers.*token_file/m);
  });

  it('aborts an upload that stalls: the sender is told, no temporary file stays behind, the session carries on', async () => {
    const client = await RawClient.authenticated(receiver.url, 'spare', receiver.tokens.get('spare')!, 'push');
    const name = segs[4]!;
    const segment = readFileSync(prod.walFile(name));
    client.send({ type: 'put', id: 1, target: { kind: 'wal', name, sha256: sha256OfBytes(segment) }, size: SEGMENT_SIZE });
    client.send({ type: 'chunk', id: 1, data: segment.subarray(0, CHUNK_SIZE) });
    await waitFor('the upload to be written to a temporary file', () => receiver.tempFiles('spare').length > 0);

    const answer = await client.nextFrame(60_000);
    expect(answer).toMatchObject({ type: 'error', id: 1, code: 'TIMEOUT', message: `${name}: no data for ${TIMEOUT_SECONDS} s, the upload is aborted` });
    await waitFor('the temporary file to be gone', () => receiver.tempFiles('spare').length === 0);
    expect(receiver.segments('spare')).toEqual([]);

    // the same session sends the whole segment now, and it is stored
    client.send({ type: 'put', id: 2, target: { kind: 'wal', name, sha256: sha256OfBytes(segment) }, size: SEGMENT_SIZE });
    for (let off = 0; off < SEGMENT_SIZE; off += CHUNK_SIZE) client.send({ type: 'chunk', id: 2, data: segment.subarray(off, off + CHUNK_SIZE) });
    client.send({ type: 'end', id: 2, sha256: sha256OfBytes(segment), crc32c: crc32cOfBytes(segment) });
    expect(await client.nextFrame()).toMatchObject({ type: 'ack', id: 2, status: 'stored' });
    expect(receiver.walSha256('spare', name)).toBe(sha256OfBytes(segment));
  });

  it("caps one server's files being received, with a clear error; the session carries on and the slot comes back", async () => {
    const token = receiver.tokens.get('spare')!;
    const name = segs[5]!;
    const segment = readFileSync(prod.walFile(name));
    const holders: RawClient[] = [];
    const open: Array<{ client: RawClient; id: number }> = [];
    for (let s = 0; s < 4; s++) {
      const client = await RawClient.authenticated(receiver.url, 'spare', token, 'push');
      holders.push(client);
      for (let id = 1; id <= 16; id++) {
        client.send({ type: 'put', id, target: { kind: 'wal', name, sha256: sha256OfBytes(segment) }, size: SEGMENT_SIZE });
        open.push({ client, id });
      }
    }
    const stop = trickle(open, segment);
    try {
      // frames are handled in order: once a get is answered, the puts before it are open
      for (const client of holders) expect(await client.get(100, `${name}.nosuch`)).toMatchObject({ type: 'error', id: 100 });
      const fifth = await RawClient.authenticated(receiver.url, 'spare', token, 'push');
      fifth.send({ type: 'put', id: 1, target: { kind: 'wal', name, sha256: sha256OfBytes(segment) }, size: SEGMENT_SIZE });
      const refused = await fifth.nextFrame();
      expect(refused).toMatchObject({ type: 'error', id: 1, code: 'TOO_MANY_UPLOADS', message: 'server spare already has 64 files being received' });
      expect((refused as ErrorFrame).hint).toMatch(/Retry later/);
      // the session carries on, and once another session lets its files go the slot is free
      expect(await fifth.get(2, segs[4]!)).toMatchObject({ sha256: await sha256Of(prod.walFile(segs[4]!)) });
      holders[0]!.close();
      await holders[0]!.closed;
      await waitFor('a slot to be free', async () => {
        const all = readFileSync(prod.walFile(segs[4]!));
        fifth.send({ type: 'put', id: 3, target: { kind: 'wal', name: segs[4]!, sha256: sha256OfBytes(all) }, size: SEGMENT_SIZE });
        for (let off = 0; off < SEGMENT_SIZE; off += CHUNK_SIZE) fifth.send({ type: 'chunk', id: 3, data: all.subarray(off, off + CHUNK_SIZE) });
        fifth.send({ type: 'end', id: 3, sha256: sha256OfBytes(all), crc32c: crc32cOfBytes(all) });
        const frame = await fifth.nextFrame();
        return frame.type === 'ack' ? frame : false;
      }, { intervalMs: 200, timeoutMs: 30_000 });
    } finally {
      stop();
    }
  });

  it('gives up the files a backup session was opening when it closed: the backup is FAILED with nothing of it left, not even a temporary file, and all 64 slots of the server come back', async () => {
    const token = receiver.tokens.get('closing')!;
    const base = join(receiver.serverDir('closing'), 'base');
    // backups whose session sends 16 files (each too big for a bundle, each in a directory of
    // its own) and closes at once: the receiver is still opening them when the close arrives
    for (let round = 0; round < 4; round++) {
      const client = await RawClient.authenticated(receiver.url, 'closing', token, 'backup');
      client.send({ type: 'backup-begin', id: 1, start: await backupStart() });
      const accepted = await client.nextFrame();
      expect(accepted).toMatchObject({ type: 'backup-accepted', id: 1 });
      const backupId = (accepted as Extract<Frame, { type: 'backup-accepted' }>).backupId;
      for (let id = 10; id < 26; id++) client.send({ type: 'put', id, target: { kind: 'backup-file', backupId, path: `base/${id}/16384`, mtime: 0 }, size: 3 * 1024 * 1024 });
      client.close();
      await client.closed;
      await waitBackupStatus(receiver, 'closing', backupId, 'FAILED');
      await waitFor(`the files of backup ${backupId} to be gone`, () => listDir(join(base, backupId)).join() === 'backup.info', { timeoutMs: 10_000 });
    }
    expect(receiver.tempFiles('closing')).toEqual([]);

    // the server's whole limit is free: 4 sessions open 16 files each, and none is refused
    const name = segs[5]!;
    const segment = readFileSync(prod.walFile(name));
    const holders = await Promise.all(Array.from({ length: 4 }, () => RawClient.authenticated(receiver.url, 'closing', token, 'push')));
    for (const client of holders) for (let id = 1; id <= 16; id++) client.send({ type: 'put', id, target: { kind: 'wal', name, sha256: sha256OfBytes(segment) }, size: SEGMENT_SIZE });
    // frames are handled in order: a get answered first means the puts before it were all opened
    for (const client of holders) expect(await client.get(100, `${name}.nosuch`)).toMatchObject({ type: 'error', id: 100 });
    for (const client of holders) client.close();
  });

  it("caps one server's sessions with a clear error while another server's pushes go on; a session gone silent makes room for the server's own push", async () => {
    const token = receiver.tokens.get('busy')!;
    const segment = readFileSync(prod.walFile(segs[3]!));
    const hogs: RawClient[] = [];
    for (let i = 0; i < 32; i++) {
      const hog = await RawClient.authenticated(receiver.url, 'busy', token, 'push');
      hog.send({ type: 'put', id: 1, target: { kind: 'wal', name: segs[3]!, sha256: sha256OfBytes(segment) }, size: SEGMENT_SIZE });
      hogs.push(hog);
    }
    // a client that keeps all 32 sessions busy: each one trickles its upload
    const stop = trickle(hogs.map((client) => ({ client, id: 1 })), segment);
    try {
      const extra = await RawClient.connect(receiver.url);
      const frames = await extra.tryAuthenticate('busy', token);
      expect(frames.map((f) => f.type)).toEqual(['challenge', 'error']);
      expect(frames[1]).toMatchObject({ code: 'TOO_MANY_SESSIONS', message: 'server busy already has 32 sessions open on the receiver, all busy' });
      expect((frames[1] as ErrorFrame).hint).toMatch(/stop it/);
      expect((await extra.closed).code).not.toBe(1000);

      // the agent says the same, not ECONNRESET
      const refused = await push(agents.busy!, prod.walFile(segs[1]!));
      expectFailure(refused, 1, /server busy already has 32 sessions open on the receiver/);
      expect(refused.stderr).not.toMatch(/ECONNRESET/);
      // another server's agents are not held up
      expectSuccess(await push(agents.main!, prod.walFile(segs[4]!)));
    } finally {
      stop();
    }

    // the client stalls: its uploads are aborted (their files removed), and its sessions, silent
    // now, make room for the server's own push
    for (const hog of hogs) expect(await hog.nextFrame(60_000)).toMatchObject({ type: 'error', id: 1, code: 'TIMEOUT' });
    expect(receiver.tempFiles('busy')).toEqual([]);
    expectSuccess(await push(agents.busy!, prod.walFile(segs[1]!)));
    expect(receiver.walSha256('busy', segs[1]!)).toBe(await sha256Of(prod.walFile(segs[1]!)));
    const told = hogs.flatMap((h) => h.pending()).filter((f): f is ErrorFrame => f.type === 'error' && f.code === 'TOO_MANY_SESSIONS');
    expect(told.length).toBeGreaterThan(0);
    expect(told[0]!.message).toMatch(/session closed by the receiver: silent for \d+ s while server busy is at its limit of 32 sessions/);
  });

  it('refuses a path sent twice, a path below a file and a 300-character name in a backup as invalid names; the session carries on', async () => {
    const client = await RawClient.authenticated(receiver.url, 'spare', receiver.tokens.get('spare')!, 'backup');
    const start = await backupStart();
    client.send({ type: 'backup-begin', id: 1, start });
    const accepted = await client.nextFrame();
    expect(accepted).toMatchObject({ type: 'backup-accepted', id: 1 });
    const backupId = (accepted as Extract<Frame, { type: 'backup-accepted' }>).backupId;
    let id = 10;
    const put = async (path: string, text: string): Promise<Frame> => {
      const data = Buffer.from(text);
      const putId = id++;
      client.send({ type: 'put', id: putId, target: { kind: 'backup-file', backupId, path, mtime: 0 }, size: data.length });
      client.send({ type: 'chunk', id: putId, data });
      client.send({ type: 'end', id: putId, sha256: sha256OfBytes(data), crc32c: crc32cOfBytes(data) });
      const frame = await client.nextFrame();
      expect(frame, path).toMatchObject({ id: putId });
      return frame;
    };
    expect(await put('base/1/100', 'first')).toMatchObject({ type: 'ack' });
    expect(await put('base/1/100', 'again')).toMatchObject({ type: 'error', code: 'INVALID_NAME', message: 'base/1/100 was already sent in this backup' });
    expect(await put('base/1/100/below', 'x')).toMatchObject({ type: 'error', code: 'INVALID_NAME', message: 'base/1/100/below lies below a file of this backup' });
    expect(await put('base/1', 'x')).toMatchObject({ type: 'error', code: 'INVALID_NAME', message: 'base/1 is a directory of this backup, not a file' });
    const long = await put(`base/1/${'n'.repeat(300)}`, 'x');
    expect(long).toMatchObject({ type: 'error', code: 'INVALID_NAME', message: expect.stringMatching(/is too long for a path inside a backup/) });
    expect((long as ErrorFrame).hint).toMatch(/PostgreSQL never names files like this/);
    expect(await put('base/1/101', 'second')).toMatchObject({ type: 'ack' });

    client.send({ type: 'backup-abort', id: 2, backupId, reason: 'test over' });
    expect(await client.nextFrame()).toMatchObject({ type: 'backup-status', id: 2, status: 'FAILED' });
  });

  it('refuses to serve on a port in use: exit 2 and a HINT, no stack trace', async () => {
    const dir = makeTempDir('second-receiver', 'root', 0o700);
    const token = writeTokenFile(join(dir, 'main.token'), newToken(), 'root');
    const config = join(dir, 'barman.conf');
    writeFileSync(config, iniText([['barman', { barman_home: join(dir, 'home'), listen: `127.0.0.1:${receiver.port}` }], ['main', { token_file: token }]]));
    const r = await runReceiverCli(['serve', '-c', config], { timeoutMs: 60_000 });
    expectFailure(r, 2, new RegExp(`cannot listen on 127\\.0\\.0\\.1:${receiver.port} \\(EADDRINUSE\\)`));
    expect(r.stderr).toMatch(/^HINT: Another process uses that port/m);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });
});

describe('backup IDs from the receiver\'s clock, recovery into an impossible place, and a prompt stop', () => {
  let receiver: Receiver;
  let db: Cluster;

  beforeAll(async () => {
    receiver = await startReceiver({ servers: [{ name: 'db' }] });
    db = await createCluster({ name: 'db', archive: true, agentConfig: { receiver, server: 'db' } });
    await db.start();
  });

  it('refuses a backup dated 2099 (or ten minutes off) with a clock error, records nothing, and the next backup works with an ID of the receiver\'s clock', async () => {
    const client = await RawClient.authenticated(receiver.url, 'db', receiver.tokens.get('db')!, 'backup');
    const start = { startLsn: '0/2000028', timeline: 1, systemIdentifier: await db.systemIdentifier(), pgVersion: 150018, segmentSize: 16 * 1024 * 1024, pgdata: db.pgdata, tablespaces: [] };
    for (const [id, startTime] of [[1, '2099-01-01T00:00:00Z'], [2, new Date(Date.now() - 10 * 60_000).toISOString()]] as const) {
      client.send({ type: 'backup-begin', id, start: { ...start, startTime } });
      const refused = await client.nextFrame();
      expect(refused).toMatchObject({ type: 'error', id, code: 'CLOCK_SKEW', message: expect.stringContaining(`says the backup started at ${startTime}`) });
      expect((refused as ErrorFrame).hint).toMatch(/Synchronise the clocks/);
    }
    expect(listDir(join(receiver.serverDir('db'), 'base'))).toEqual([]);

    const earliest = backupIdFor(new Date());
    const id = await backupAndWait(receiver, 'db', db);
    expect(id >= earliest && id <= backupIdFor(new Date())).toBe(true);
    const info = await showBackupJson(receiver, 'db', id);
    expect(backupIdFor(new Date(info.begin_time))).toBe(id);
  });

  it('refuses to recover into /proc/nope/x with a destination error instead of spinning on mkdir', async () => {
    const r = await runReceiverCli(['recover', '-c', receiver.configPath, 'db', 'latest', '/proc/nope/x'], { timeoutMs: 60_000 });
    expectFailure(r, 1, /cannot create directory \/proc\/nope\/x \(ENOENT\)/);
  });

  it('stops on SIGTERM at once, even with a client that does not read (its close goes unanswered)', async () => {
    const stuck = await RawClient.authenticated(receiver.url, 'db', receiver.tokens.get('db')!, 'get');
    stuck.stopReading();
    const stopped = receiver.stop();
    const hung = new Promise<'hung'>((resolve) => {
      const t = setTimeout(() => resolve('hung'), 20_000);
      void stopped.finally(() => clearTimeout(t));
    });
    // a bound on a hang, not a timing: before, the receiver waited 30 s and more on such a peer
    expect(await Promise.race([stopped, hung])).toBe(0);
  });
});
