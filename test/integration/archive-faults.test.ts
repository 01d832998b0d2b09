// What goes wrong on a DBA's bad day, and what barman-ts does about it: every fault is refused
// with one `ERROR [CODE]:` line and one HINT line (exit 1 for a failed operation, 2 for a usage or
// configuration mistake), and nothing already archived is lost or overwritten.

import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { CHUNK_SIZE, type Frame } from '../../shared/protocol/frames';
import {
  ClosedError, type Cluster, crc32cOfBytes, createCluster, expectCatalogMatchesCluster, expectFailure, expectSuccess, freePort, listDir, makeDir,
  makeSelfSignedCert, makeTempDir, newToken, RawClient, type Receiver, runAgent, runPaths, runReceiverCli, sha256Of,
  plainSha256Of, sha256OfBytes, snapshotTree, startReceiver, waitFor, writeAgentConfig,
} from '../harness';

const SEGMENT_SIZE = 16 * 1024 * 1024;

const push = (config: string, path: string, timeoutMs?: number) => runAgent(['push', '-c', config, path], { timeoutMs });

describe('archiving faults: refused clearly, nothing lost', () => {
  let receiver: Receiver;
  /** a cluster that does not archive by itself: the tests push its segments by hand */
  let prod: Cluster;
  /** the agent configuration of server main with main's token */
  let mainAgent: string;
  /** segments prod completed; the first two are in main's catalog before any test runs */
  const segs: string[] = [];
  /** a folder for hand-made files the agent pushes */
  let files: string;

  beforeAll(async () => {
    receiver = await startReceiver({ servers: [{ name: 'main' }, { name: 'other' }] });
    prod = await createCluster({ name: 'prod', extraConf: { wal_keep_size: '1GB' } });
    await prod.start();
    await prod.psql('create table t (id int, note text)');
    for (let i = 0; i < 6; i++) {
      await prod.psql(`insert into t select g, 'round ${i}' from generate_series(1, 2000) g`);
      segs.push(await prod.switchWal());
    }
    mainAgent = writeAgentConfig({ receiver, server: 'main', pgdata: prod.pgdata, conninfo: prod.conninfo }).path;
    for (const name of segs.slice(0, 2)) expectSuccess(await push(mainAgent, prod.walFile(name)));
    files = makeTempDir('files', 'root', 0o755);
  });

  /** Writes a file named `name` (a copy of prod's segment, altered) where the agent can read it. */
  function craft(name: string, bytes: Buffer): string {
    const dir = makeDir(join(files, randomBytes(4).toString('hex')), 'root', 0o755);
    const path = join(dir, name);
    writeFileSync(path, bytes, { mode: 0o644 });
    return path;
  }

  it('refuses a wrong token, and no token shows up on screen or in the log', async () => {
    const wrong = newToken();
    const config = writeAgentConfig({ receiver, server: 'main', token: wrong }).path;
    const r = await push(config, prod.walFile(segs[2]!));
    expectFailure(r, 1, /^ERROR \[AUTH_FAILED\]: authentication failed for server "main"/m);
    expect(existsSync(receiver.walPath('main', segs[2]!))).toBe(false);
    for (const secret of [wrong, receiver.tokens.get('main')!]) {
      expect(r.stdout + r.stderr).not.toContain(secret);
      expect(receiver.logs()).not.toContain(secret);
    }
  });

  it('refuses a server the receiver does not know, in the words of a wrong token (the port does not tell which names exist)', async () => {
    const config = writeAgentConfig({ receiver, server: 'nosuch', token: newToken() }).path;
    const r = await push(config, prod.walFile(segs[2]!));
    expectFailure(r, 1, /authentication failed for server "nosuch": the receiver has no server of that name, or the agent's token is not that server's/);
    expect(r.stderr).toMatch(/^HINT: .*server = nosuch.*token_file/m);
    expect(listDir(receiver.barmanHome)).toEqual(['main', 'other']);
  });

  it("refuses an agent that says it is server other but holds main's token", async () => {
    const config = writeAgentConfig({ receiver, server: 'other', token: receiver.tokens.get('main')! }).path;
    const r = await push(config, prod.walFile(segs[2]!));
    expectFailure(r, 1, /^ERROR \[AUTH_FAILED\]: authentication failed for server "other"/m);
    expect(receiver.segments('other')).toEqual([]);
    expect(existsSync(receiver.walPath('main', segs[2]!))).toBe(false);
  });

  it('keeps a client authenticated as main inside main\'s catalog: ../ names are refused, nothing is written outside', async () => {
    // other's catalog holds a segment a traversal would reach
    const otherAgent = writeAgentConfig({ receiver, server: 'other' }).path;
    expectSuccess(await push(otherAgent, prod.walFile(segs[0]!)));
    const before = await snapshotTree(receiver.barmanHome);
    const escape = `barman-escape-${randomBytes(4).toString('hex')}`;

    const reader = await RawClient.authenticated(receiver.url, 'main', receiver.tokens.get('main')!, 'get');
    const traversals = [
      `../other/wals/${segs[0]!.slice(0, 16)}/${segs[0]}`,
      `../../${receiver.barmanHome.split('/').at(-1)}/other/wals/${segs[0]!.slice(0, 16)}/${segs[0]}`,
      `wals/../../other/wals/${segs[0]}`,
      '/etc/passwd',
      `${segs[0]}/../../../other/wals/${segs[0]!.slice(0, 16)}/${segs[0]}`,
    ];
    let id = 1;
    for (const name of traversals) {
      const answer = await reader.get(id++, name);
      expect(answer, name).toMatchObject({ type: 'error', code: expect.stringMatching(/^(INVALID_NAME|WAL_NOT_FOUND)$/) });
    }
    // the same session still reads its own catalog
    const own = await reader.get(id++, segs[0]!);
    expect('bytes' in own && sha256OfBytes(own.bytes)).toBe(await sha256Of(prod.walFile(segs[0]!)));

    const writer = await RawClient.authenticated(receiver.url, 'main', receiver.tokens.get('main')!, 'push');
    const segment = readFileSync(prod.walFile(segs[3]!));
    const names = [`../../../../../../../../../../../..${tmpdir()}/${escape}`, `../other/${segs[3]}`, `../../other/wals/${segs[3]}`];
    for (const name of names) {
      const putId = id++;
      writer.send({ type: 'put', id: putId, target: { kind: 'wal', name, sha256: sha256OfBytes(segment) }, size: SEGMENT_SIZE });
      // a client that ignores the refusal and sends the bytes anyway
      writer.send({ type: 'chunk', id: putId, data: segment.subarray(0, CHUNK_SIZE) });
      writer.send({ type: 'end', id: putId, sha256: sha256OfBytes(segment), crc32c: crc32cOfBytes(segment) });
      expect(await writer.nextFrame(), name).toMatchObject({ type: 'error', id: putId, code: 'INVALID_NAME' });
    }
    // backup files carry a path too
    const backupWriter = await RawClient.authenticated(receiver.url, 'main', receiver.tokens.get('main')!, 'backup');
    const putId = id++;
    backupWriter.send({ type: 'put', id: putId, target: { kind: 'backup-file', backupId: '20200101T000000', path: `../../../../../../../..${tmpdir()}/${escape}`, mtime: 0 }, size: 5 });
    backupWriter.send({ type: 'chunk', id: putId, data: Buffer.from('owned') });
    expect(await backupWriter.nextFrame()).toMatchObject({ type: 'error', id: putId });

    // the connection is still good for a legitimate request
    const ok = await writer.get(id++, segs[1]!);
    expect('bytes' in ok && sha256OfBytes(ok.bytes)).toBe(await sha256Of(prod.walFile(segs[1]!)));

    expect(readdirSync(tmpdir()).filter((f) => f.startsWith(escape))).toEqual([]);
    expect(readdirSync(runPaths().runRoot).filter((f) => f.startsWith(escape))).toEqual([]);
    expect(await snapshotTree(receiver.barmanHome)).toEqual(before);
  });

  it('refuses a truncated segment and keeps nothing under its name', async () => {
    const name = segs[2]!;
    const whole = readFileSync(prod.walFile(name));
    for (const size of [1024 * 1024, SEGMENT_SIZE - 8192, 8192]) {
      const r = await push(mainAgent, craft(name, whole.subarray(0, size)));
      expectFailure(r, 1, new RegExp(`^ERROR \\[WAL_INVALID\\]: ${name}: .*${size}`, 'm'));
      expect(existsSync(receiver.walPath('main', name)), `${size} bytes`).toBe(false);
    }
    // PostgreSQL's retry with the complete file then succeeds
    expectSuccess(await push(mainAgent, prod.walFile(name)));
    expect(receiver.walSha256('main', name)).toBe(sha256OfBytes(whole));
  });

  it("refuses WAL from another cluster (another system identifier) in main's catalog", async () => {
    const foreign = await createCluster({ name: 'foreign', extraConf: { wal_keep_size: '1GB' } });
    await foreign.start();
    expect(await foreign.systemIdentifier()).not.toBe(await prod.systemIdentifier());
    const names = [await foreign.switchWal(), await foreign.switchWal()];
    await foreign.stop();
    for (const name of names) {
      const archivedBefore = existsSync(receiver.walPath('main', name)) ? receiver.walSha256('main', name) : undefined;
      const r = await push(mainAgent, foreign.walFile(name));
      expectFailure(r, 1, new RegExp(`^ERROR \\[WAL_FOREIGN\\]: ${name}: system identifier \\d+ is not this server's \\(${await prod.systemIdentifier()}\\)`, 'm'));
      const archivedAfter = existsSync(receiver.walPath('main', name)) ? receiver.walSha256('main', name) : undefined;
      expect(archivedAfter, name).toBe(archivedBefore);
    }
    expect(receiver.logs()).toMatch(/"code":"WAL_FOREIGN"/);
  });

  it('refuses different content under an archived name, keeps the original, and keeps the rejected copy under errors/', async () => {
    const name = segs[0]!;
    const original = receiver.walSha256('main', name);
    const altered = readFileSync(prod.walFile(name));
    altered[100_000] = altered[100_000]! ^ 0xff;
    const r = await push(mainAgent, craft(name, altered));
    expectFailure(r, 1, new RegExp(`^ERROR \\[WAL_CONFLICT\\]: ${name} is already archived with different content`, 'm'));
    expect(receiver.walSha256('main', name)).toBe(original);
    expect(original).toBe(await sha256Of(prod.walFile(name)));
    const errorsDir = join(receiver.serverDir('main'), 'errors');
    const kept = listDir(errorsDir).filter((f) => f.startsWith(name));
    expect(kept).toHaveLength(1);
    // stored as a segment is (compressed, its suffix says how): its plain bytes are the altered copy's
    expect(plainSha256Of(join(errorsDir, kept[0]!))).toBe(sha256OfBytes(altered));
    // PostgreSQL retries the same file again and again: still refused, and still one copy kept
    expectFailure(await push(mainAgent, craft(name, altered)), 1, new RegExp(`^ERROR \\[WAL_CONFLICT\\]: ${name} is already archived with different content`, 'm'));
    expect(listDir(errorsDir).filter((f) => f.startsWith(name))).toEqual(kept);
  });

  it('accepts an identical re-push (PostgreSQL retrying after a lost answer)', async () => {
    const name = segs[1]!;
    const errorsBefore = listDir(join(receiver.serverDir('main'), 'errors'));
    const r = await push(mainAgent, prod.walFile(name));
    expectSuccess(r);
    expect(receiver.walSha256('main', name)).toBe(await sha256Of(prod.walFile(name)));
    expect(listDir(join(receiver.serverDir('main'), 'errors'))).toEqual(errorsBefore);
  });

  it('ends a session that sends garbage, text, a malformed or an oversized frame, and serves the next one', async () => {
    const token = receiver.tokens.get('main')!;
    const expectProtocolClose = async (client: RawClient, what: string) => {
      const frame = await client.nextFrame();
      expect(frame, what).toMatchObject({ type: 'error', code: 'PROTOCOL' });
      const closed = await client.closed;
      expect(closed.code, what).not.toBe(1000);
    };

    const garbage = await RawClient.authenticated(receiver.url, 'main', token);
    garbage.sendRaw(Buffer.from([0x00, 0x04, 0xc1, 0xc1, 0xc1, 0xc1, 0xde, 0xad]));
    await expectProtocolClose(garbage, 'undecodable bytes');

    const shortFrame = await RawClient.connect(receiver.url);
    shortFrame.sendRaw(Buffer.from([0xff]));
    await expectProtocolClose(shortFrame, 'a one-byte message before hello');

    const text = await RawClient.connect(receiver.url);
    text.sendRaw('{"type":"hello"}');
    await expectProtocolClose(text, 'a text message');

    const malformed = await RawClient.authenticated(receiver.url, 'main', token);
    malformed.send({ type: 'put', id: 1, target: { kind: 'wal', name: segs[4]! }, size: -5 } as unknown as Frame);
    await expectProtocolClose(malformed, 'a put with a negative size');

    const unknown = await RawClient.authenticated(receiver.url, 'main', token);
    unknown.send({ type: 'format-disk', id: 1 } as unknown as Frame);
    await expectProtocolClose(unknown, 'an unknown frame type');

    const oversized = await RawClient.authenticated(receiver.url, 'main', token);
    oversized.sendRaw(Buffer.alloc(2 * 1024 * 1024 + 4096));
    const closed = await oversized.closed;
    expect(closed.code).toBe(1009);

    expect(receiver.running).toBe(true);
    // other sessions carry on: a push and a get through the agent, a raw get
    expectSuccess(await push(mainAgent, prod.walFile(segs[4]!)));
    expect(receiver.walSha256('main', segs[4]!)).toBe(await sha256Of(prod.walFile(segs[4]!)));
    const dest = join(makeDir(join(prod.dir, 'restore-after-garbage'), 'postgres', 0o700), segs[4]!);
    expectSuccess(await runAgent(['get-wal', '-c', mainAgent, segs[4]!, dest]));
    expect(await sha256Of(dest)).toBe(await sha256Of(prod.walFile(segs[4]!)));
    const fresh = await RawClient.authenticated(receiver.url, 'main', token, 'get');
    const answer = await fresh.get(1, segs[1]!);
    expect('bytes' in answer && answer.bytes.length).toBe(SEGMENT_SIZE);
    await expect(text.nextFrame(100)).rejects.toBeInstanceOf(ClosedError);
  });

  it('fails a push fast, with a HINT, while the receiver is down', async () => {
    const port = await freePort();
    // the agent would wait this long for an answer; a refused connection must not wait at all
    const config = writeAgentConfig({ receiver: `ws://127.0.0.1:${port}`, server: 'main', token: newToken(), timeout: 600 }).path;
    const r = await push(config, prod.walFile(segs[5]!), 60_000);
    expectFailure(r, 1, new RegExp(`^ERROR \\[RECEIVER_UNREACHABLE\\]: cannot reach the receiver at ws://127\\.0\\.0\\.1:${port}/? \\(ECONNREFUSED\\)`, 'm'));
    expect(r.stderr).toMatch(/^HINT: .*barman-receiver serve/m);
  });

  it('archives over TLS with ca_file, and refuses an unverifiable certificate with a TLS error', async () => {
    const tls = await makeSelfSignedCert();
    const secure = await startReceiver({ servers: [{ name: 'main' }], tls });
    expect(secure.url).toMatch(/^wss:\/\//);
    const name = segs[5]!;

    const untrusting = writeAgentConfig({ receiver: secure, server: 'main' }).path;
    const refused = await push(untrusting, prod.walFile(name));
    expectFailure(refused, 1, /^ERROR \[RECEIVER_UNREACHABLE\]: TLS with the receiver at wss:\/\/127\.0\.0\.1:\d+\/? failed: .*(self[- ]signed|certificate)/im);
    expect(refused.stderr).toMatch(/^HINT: .*ca_file/m);
    expect(secure.segments('main')).toEqual([]);

    const trusting = writeAgentConfig({ receiver: secure, server: 'main', caFile: tls.cert }).path;
    expectSuccess(await push(trusting, prod.walFile(name)));
    expect(secure.walSha256('main', name)).toBe(await sha256Of(prod.walFile(name)));
    const dest = join(makeDir(join(prod.dir, 'restore-tls'), 'postgres', 0o700), name);
    expectSuccess(await runAgent(['get-wal', '-c', trusting, name, dest]));
    expect(await sha256Of(dest)).toBe(await sha256Of(prod.walFile(name)));
  });

  it('tells usage and configuration mistakes apart (exit 2) from failed operations (exit 1)', async () => {
    const noPath = await runAgent(['push', '-c', mainAgent]);
    expectFailure(noPath, 2, /^ERROR \[USAGE\]: missing required argument/m);

    const missing = await runAgent(['push', '-c', '/nonexistent/barman-agent.conf', prod.walFile(segs[0]!)]);
    expectFailure(missing, 2, /^ERROR \[CONFIG_INVALID\]: \/nonexistent\/barman-agent\.conf: cannot read configuration file/m);

    const typo = writeAgentConfig({ receiver, server: 'main', extra: { recevier: 'ws://127.0.0.1:1' } }).path;
    const unknownKey = await runAgent(['push', '-c', typo, prod.walFile(segs[0]!)]);
    expectFailure(unknownKey, 2, new RegExp(`^ERROR \\[CONFIG_INVALID\\]: ${typo} \\[agent\\] recevier: unknown key`, 'm'));

    const notWal = await push(mainAgent, join(prod.pgdata, 'postgresql.conf'));
    expectFailure(notWal, 1, /^ERROR \[INVALID_NAME\]: "postgresql\.conf" is not a WAL segment/m);

    const unknownServer = await runReceiverCli(['check', '-c', receiver.configPath, 'nosuch']);
    expectFailure(unknownServer, 1, /^ERROR \[UNKNOWN_SERVER\]: no server named "nosuch"/m);
    const noSegment = await runReceiverCli(['get-wal', '-c', receiver.configPath, 'main']);
    expectFailure(noSegment, 2, /^ERROR \[USAGE\]: missing required argument/m);
  });

  it('loses nothing when the receiver is killed (SIGKILL) in the middle of pushes: PostgreSQL retries until every segment is in', async () => {
    const crashy = await startReceiver({ servers: [{ name: 'main' }] });
    const busy = await createCluster({ name: 'busy', archive: true, agentConfig: { receiver: crashy, server: 'main' }, extraConf: { wal_keep_size: '2GB' } });
    await busy.start();
    await busy.psql('create table t (id int)');
    const produced: string[] = [];
    const produce = async (n: number) => {
      for (let i = 0; i < n; i++) {
        await busy.psql('insert into t select generate_series(1, 1000)');
        produced.push(await busy.switchWal());
      }
    };
    await produce(8);
    // kill while an upload is being written: a temporary file in the catalog means one is in flight
    await waitFor('an upload in flight', () => crashy.tempFiles('main').some((f) => f.endsWith('.tmp')), { intervalMs: 2, timeoutMs: 60_000 });
    await crashy.kill();
    expect(crashy.running).toBe(false);

    await produce(6);
    // PostgreSQL sees the archive_command fail and keeps the segments
    await waitFor('PostgreSQL to count failed archive attempts', async () => (await busy.archiverStats()).failedCount > 0);
    await crashy.restart();
    await produce(6);

    await busy.waitArchived(produced);
    const stats = await busy.waitArchiverIdle();
    expect(stats.failedCount).toBeGreaterThan(0);
    expect(stats.lastArchivedWal).toBe(produced.at(-1));

    // every segment is in, and none under a final name is half-written: each is PostgreSQL's, byte for byte
    const catalog = await expectCatalogMatchesCluster(crashy, 'main', busy);
    expect(catalog).toEqual(expect.arrayContaining(produced));
    // an interrupted upload may leave a temporary file behind (cron removes it), never anything else
    for (const f of crashy.tempFiles('main')) expect(f).toMatch(/\/\.[^/]+\.tmp$/);
    expect(listDir(join(crashy.serverDir('main'), 'errors'))).toEqual([]);
  });
});
