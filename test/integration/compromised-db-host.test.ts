// The database host is less trusted than the backup host. What an attacker who owns a PostgreSQL
// host (its agent token included), or the network path of a ws:// connection, tries against the
// backup host, and how each attempt ends: a rewritten hello is refused; a backup whose recorded
// tablespace location points at ~/.ssh writes nothing there; symlinks planted in the data
// directory come back as the same symlinks, never as copies of what they point at.

import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { emptyInfo, formatBackupInfo, parseBackupInfo } from '../../shared/backup/info';
import { buildManifest, parseManifest } from '../../shared/backup/manifest';
import { type ErrorFrame, type Frame, OLDEST_AGENT_PROTOCOL, PROTOCOL_VERSION } from '../../shared/protocol/frames';
import {
  type Cluster, createCluster, describeRun, expectFailure, expectSuccess, makeDir, makeTempDir, RawClient, type Receiver, runAgent, runReceiverCli,
  crc32cOfBytes, sha256OfBytes, startReceiver, startRelay,
} from '../harness';
import { backupAndWait, listBackupsJson, recoverInto, showBackupJson } from '../harness/backups';
import { startRecovered, verifyRecoveredDirectory } from '../harness/recovered';

/** A DONE backup planted in the catalog as a hostile agent could have sent it: backup.info and global/pg_control. */
function plantBackup(serverDir: string, id: string, control: Buffer): void {
  const dir = join(serverDir, 'base', id);
  mkdirSync(join(dir, 'data', 'global'), { recursive: true });
  writeFileSync(join(dir, 'data', 'global', 'pg_control'), control);
  writeFileSync(join(dir, 'backup.info'), formatBackupInfo({ ...emptyInfo(id), status: 'DONE' }));
}

describe('a man in the middle on ws:// rewrites the hello', () => {
  it('cannot turn a push session into a restore session: the proof no longer matches and nothing is served', async () => {
    const receiver = await startReceiver({ servers: [{ name: 'main' }] });
    const control = Buffer.from('the pg_control of main, which a push session must never read');
    plantBackup(receiver.serverDir('main'), '20260101T000000', control);
    const relay = await startRelay({ host: receiver.host, port: receiver.port });

    // the relay rewrites role push -> restore, forwards the agent's proof unchanged, and once
    // welcomed asks for the backup's pg_control on the agent's session
    const fromReceiver: Frame[] = [];
    let rewritten = false;
    relay.interceptNext({
      fromClient: (frame) => {
        if (frame.type !== 'hello') return frame;
        rewritten = true;
        return { ...frame, role: 'restore' };
      },
      fromReceiver: (frame, inject) => {
        fromReceiver.push(frame);
        if (frame.type === 'welcome') inject({ type: 'get-backup-file', id: 900, backupId: '20260101T000000', path: 'global/pg_control' });
      },
    });

    const agent = await RawClient.connect(relay.url);
    await expect(agent.authenticate('main', receiver.tokens.get('main')!, 'push')).rejects.toThrow(/AUTH_FAILED|expected welcome/);
    await agent.closed;
    expect(rewritten).toBe(true);
    // the receiver challenged, then refused the proof: no welcome, no file, not a byte of pg_control
    expect(fromReceiver.map((f) => f.type)).toEqual(['challenge', 'error']);
    expect(fromReceiver[1]).toMatchObject({ type: 'error', code: 'AUTH_FAILED' });
    expect(receiver.logs()).toMatch(/refused agent/);

    // without the relay, the same token and role are welcomed: only the rewrite was refused
    const direct = await RawClient.authenticated(receiver.url, 'main', receiver.tokens.get('main')!, 'push');
    direct.close();

    // an agent of a protocol the receiver no longer serves is told to upgrade, by version
    const old = await RawClient.connect(receiver.url);
    old.send({ type: 'hello', protocolVersion: OLDEST_AGENT_PROTOCOL - 1, server: 'main', role: 'push', clientNonce: Buffer.alloc(32, 7), agentVersion: 'barman-ts/0.1.0' });
    const refused = await old.nextFrame();
    expect(refused).toMatchObject({ type: 'error', code: 'PROTOCOL', message: `agent speaks protocol version ${OLDEST_AGENT_PROTOCOL - 1}, this receiver speaks ${PROTOCOL_VERSION}` });
    expect((refused as ErrorFrame).hint).toMatch(/same barman-ts version/);
  });
});

/** A receiver, and a raw backup session that has begun a backup there (frame by frame, as a hostile agent would). */
async function beginRawBackup(canCompress?: Array<'zstd'>) {
  const receiver = await startReceiver({ servers: [{ name: 'main' }] });
  const agent = await RawClient.authenticated(receiver.url, 'main', receiver.tokens.get('main')!, 'backup');
  const start = { startLsn: '0/2000028', timeline: 1, startTime: new Date().toISOString(), systemIdentifier: '7312345678901234567', pgVersion: 150018, segmentSize: 16 * 1024 * 1024, pgdata: '/var/lib/postgresql/15/main', tablespaces: [] };
  agent.send({ type: 'backup-begin', id: 1, start, ...(canCompress ? { canCompress } : {}) });
  const accepted = await agent.nextFrame();
  if (accepted.type !== 'backup-accepted') throw new Error(`expected backup-accepted, got ${JSON.stringify(accepted)}`);
  return { receiver, agent, accepted };
}

describe('an agent with a valid token sends a backup whose symlinks would route writes', () => {
  it('is refused at its end, and the backup is FAILED with the reason', async () => {
    const { receiver, agent, accepted } = await beginRawBackup();
    const control = Buffer.from('pg_control');
    agent.send({ type: 'put', id: 2, target: { kind: 'backup-file', backupId: accepted.backupId, path: 'global/pg_control', mtime: 0 }, size: control.length });
    agent.send({ type: 'chunk', id: 2, data: control });
    agent.send({ type: 'end', id: 2, sha256: sha256OfBytes(control), crc32c: crc32cOfBytes(control) });
    expect(await agent.nextFrame()).toMatchObject({ type: 'ack', id: 2 });
    // `global` as a link to ~/.ssh: every file of global/ would be written through it on recovery
    const stop = { stopLsn: '0/2000100', stopTime: new Date().toISOString(), backupLabel: 'START WAL LOCATION: 0/2000028\n', tablespaceMap: '', directories: ['base'], symlinks: [{ path: 'global', target: '/root/.ssh' }] };
    agent.send({ type: 'backup-end', id: 3, backupId: accepted.backupId, stop, fileCount: 1 });
    expect(await agent.nextFrame()).toMatchObject({ type: 'error', id: 3, code: 'INVALID_NAME', message: expect.stringMatching(/"global" is not a valid symlink/) });
    agent.close();
    const info = (await listBackupsJson(receiver, 'main')).find((b) => b.backup_id === accepted.backupId);
    expect(info).toMatchObject({ status: 'FAILED', error: expect.stringMatching(/"global" is not a valid symlink/) });
    expect(existsSync(join(receiver.serverDir('main'), 'base', accepted.backupId, 'data'))).toBe(false);
  });
});

describe('an agent sends a backup file whose bytes do not match the CRC-32C at its end', () => {
  it('is refused (CHECKSUM_MISMATCH), as is an end without one (PROTOCOL), and the backup never counts', async () => {
    const { receiver, agent, accepted } = await beginRawBackup();
    const sent = Buffer.from('the bytes the agent read');
    const arrived = Buffer.from(sent);
    arrived[5]! ^= 0x01; // one bit flipped on the way: the SHA-256 and CRC-32C at the end are of what was sent
    agent.send({ type: 'put', id: 2, target: { kind: 'backup-file', backupId: accepted.backupId, path: 'base/1/100', mtime: 0 }, size: arrived.length });
    agent.send({ type: 'chunk', id: 2, data: arrived });
    agent.send({ type: 'end', id: 2, sha256: sha256OfBytes(sent), crc32c: crc32cOfBytes(sent) });
    expect(await agent.nextFrame()).toMatchObject({ type: 'error', id: 2, code: 'CHECKSUM_MISMATCH', message: 'base/1/100: checksum differs from the agent\'s' });
    agent.send({ type: 'put', id: 3, target: { kind: 'backup-file', backupId: accepted.backupId, path: 'base/1/101', mtime: 0 }, size: sent.length });
    agent.send({ type: 'chunk', id: 3, data: sent });
    agent.send({ type: 'end', id: 3, sha256: sha256OfBytes(sent) });
    // a protocol violation ends the session (its answer names no request)
    expect(await agent.nextFrame()).toMatchObject({ type: 'error', code: 'PROTOCOL', message: 'base/1/101: the end of a backup file carries no CRC-32C' });
    agent.close();
    // the session's loss fails the backup; nothing of it is offered for recovery
    let info;
    for (let i = 0; i < 100; i++) {
      info = (await listBackupsJson(receiver, 'main')).find((b) => b.backup_id === accepted.backupId);
      if (info?.status === 'FAILED') break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(info).toMatchObject({ status: 'FAILED' });
  });
});

describe('an agent that compresses a backup\'s files itself sends frames that are not what it says', () => {
  it('is refused: a frame that decompresses to other bytes, one too large, bytes that are no frame; a good one is stored', async () => {
    const { receiver, agent, accepted } = await beginRawBackup(['zstd']);
    // the receiver stores zstd (its default): the agent is to send zstd frames
    expect(accepted).toMatchObject({ compression: 'zstd' });
    const backupId = (accepted as Extract<Frame, { type: 'backup-accepted' }>).backupId;
    type Zstd = { compress(b: Buffer, level?: number): Promise<Buffer> };
    const loaded = (await import('@mongodb-js/zstd/bindings.js' as string)) as Zstd & { default?: Zstd };
    const zstd = loaded.default ?? loaded;
    let id = 10;
    const put = async (path: string, plainSaid: Buffer, chunks: Buffer[]): Promise<Frame> => {
      const putId = id++;
      agent.send({ type: 'put', id: putId, target: { kind: 'backup-file', backupId, path, mtime: 0 }, size: plainSaid.length });
      for (const data of chunks) agent.send({ type: 'chunk', id: putId, data });
      agent.send({ type: 'end', id: putId, sha256: sha256OfBytes(plainSaid), crc32c: crc32cOfBytes(plainSaid) });
      return agent.nextFrame();
    };
    const plain = Buffer.from('the bytes the agent read, '.repeat(100));
    const other = Buffer.from(plain);
    other[7]! ^= 0x20;
    // a well-formed frame of other bytes than the CRC-32C at the end says
    expect(await put('base/1/100', plain, [await zstd.compress(other, 1)])).toMatchObject({ type: 'error', code: 'CHECKSUM_MISMATCH', message: 'base/1/100: checksum differs from the agent\'s' });
    // a frame of more plain bytes than the file has
    expect(await put('base/1/101', plain.subarray(0, 100), [await zstd.compress(plain, 1)])).toMatchObject({ type: 'error', code: 'CHECKSUM_MISMATCH', message: expect.stringMatching(/base\/1\/101: a compressed frame decompresses to 2600 bytes, not the 100/) });
    // the intact file is stored, and acknowledged
    expect(await put('base/1/102', plain, [await zstd.compress(plain, 1)])).toMatchObject({ type: 'ack' });
    // plain bytes where a frame belongs: a protocol violation, which ends the session
    expect(await put('base/1/103', plain, [plain])).toMatchObject({ type: 'error', code: 'PROTOCOL', message: expect.stringMatching(/base\/1\/103: a chunk is not a zstd frame as barman-ts makes them/) });
    agent.close();
    let info;
    for (let i = 0; i < 100; i++) {
      info = (await listBackupsJson(receiver, 'main')).find((b) => b.backup_id === backupId);
      if (info?.status === 'FAILED') break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(info).toMatchObject({ status: 'FAILED' });
  });
});

describe('a data directory with symlinks planted in it (and a tablespace)', () => {
  let receiver: Receiver;
  let cluster: Cluster;
  let id: string;
  let oid: string;
  let versionDir: string;
  /** a folder outside the data directory, with a file a backup must never copy */
  let outside: string;
  const hostname = readFileSync('/etc/hostname');
  /** path inside the data directory -> link target, as planted */
  const planted: Record<string, string> = {};

  beforeAll(async () => {
    receiver = await startReceiver({ servers: [{ name: 'main' }] });
    cluster = await createCluster({ name: 'symlinks', archive: true, agentConfig: { receiver, server: 'main' } });
    await cluster.start();
    const tablespace = makeTempDir('tblspc', 'postgres', 0o700);
    await cluster.psql(`create tablespace fast_disk location '${tablespace}'`);
    await cluster.psql("create table parts (id int primary key, name text) tablespace fast_disk; insert into parts select g, 'part ' || g from generate_series(1, 3000) g; checkpoint;");
    oid = await cluster.psql("select oid from pg_tablespace where spcname = 'fast_disk'");
    versionDir = readdirSync(tablespace)[0]!;
    outside = makeTempDir('outside', 'postgres', 0o755);
    writeFileSync(join(outside, 'secret.txt'), 'a file outside the data directory\n');

    Object.assign(planted, {
      evil_link: '/etc/hostname',
      outside_dir: outside,
      loop_a: 'loop_b',
      loop_b: 'loop_a',
      'global/up': '..',
    });
    for (const [path, target] of Object.entries(planted)) symlinkSync(target, join(cluster.pgdata, path));
    symlinkSync('/etc/hostname', join(tablespace, versionDir, 'evil_in_tablespace'));
    planted[`pg_tblspc/${oid}/${versionDir}/evil_in_tablespace`] = '/etc/hostname';

    id = await backupAndWait(receiver, 'main', cluster);
  });

  it('backs each link up as a link: nothing copied through one, no file twice', async () => {
    const info = await showBackupJson(receiver, 'main', id);
    expect(Object.fromEntries(info.symlinks.map((l) => [l.path, l.target]))).toEqual(planted);
    const backupDir = join(receiver.serverDir('main'), 'base', id);
    const paths = parseManifest(readFileSync(join(backupDir, 'backup_manifest'), 'utf8')).files.map((f) => f.path);
    expect(new Set(paths).size).toBe(paths.length);
    expect(paths.filter((p) => p.endsWith('pg_control'))).toEqual(['global/pg_control']);
    for (const link of Object.keys(planted)) {
      expect(paths.filter((p) => p === link || p.startsWith(`${link}/`)), link).toEqual([]);
      // the catalog holds no file, directory or link under the link's name: links are recorded, never made there
      expect(existsSync(join(backupDir, 'data', link)), link).toBe(false);
    }
  });

  it('recovers them as the same links, and the cluster starts with its rows', async () => {
    const moved = join(makeTempDir('tblspc-new', 'postgres', 0o755), 'fast_disk');
    const recovery = await recoverInto(receiver, 'main', id, ['--tablespace', `fast_disk:${moved}`]);
    expectSuccess(recovery.result);
    const at = (path: string) => (path.startsWith(`pg_tblspc/${oid}/`) ? join(moved, path.slice(`pg_tblspc/${oid}/`.length)) : join(recovery.dest, path));
    for (const [path, target] of Object.entries(planted)) {
      expect(lstatSync(at(path)).isSymbolicLink(), path).toBe(true);
      expect(readlinkSync(at(path)), path).toBe(target);
    }
    // what the links point at is as it was
    expect(readFileSync('/etc/hostname')).toEqual(hostname);
    expect(readdirSync(outside)).toEqual(['secret.txt']);
    // pg_verifybackup follows links (and a manifest lists files only): it checks everything but them
    const verified = await verifyRecoveredDirectory(recovery.dest, Object.keys(planted));
    expect(verified.code, describeRun(verified)).toBe(0);
    const copy = await startRecovered(recovery.dest, recovery.dir);
    await copy.waitPromoted();
    expect(await copy.psql('select count(*) from parts')).toBe('3000');
    await copy.dispose();
  });

  it('restores them as links on the database host too (barman-agent restore)', async () => {
    const dir = makeTempDir('restored', 'postgres', 0o755);
    const dest = join(dir, 'pgdata');
    const moved = join(makeDir(join(dir, 'tblspc'), 'postgres', 0o700), 'fast_disk');
    const r = await runAgent(['restore', '-c', cluster.agentConfigPath!, id, dest, '--tablespace', `fast_disk:${moved}`]);
    expectSuccess(r);
    expect(readlinkSync(join(dest, 'evil_link'))).toBe('/etc/hostname');
    expect(readlinkSync(join(dest, 'global', 'up'))).toBe('..');
    expect(readlinkSync(join(moved, versionDir, 'evil_in_tablespace'))).toBe('/etc/hostname');
    const verified = await verifyRecoveredDirectory(dest, Object.keys(planted));
    expect(verified.code, describeRun(verified)).toBe(0);
  });
});

describe('a backup whose recorded tablespace location points at ~/.ssh on the backup host', () => {
  it('writes nothing there: recover wants a location for each tablespace, apart from the destination and the catalog', async () => {
    const receiver = await startReceiver({ servers: [{ name: 'main' }] });
    const cluster = await createCluster({ name: 'hostile-tblspc', archive: true, agentConfig: { receiver, server: 'main' } });
    await cluster.start();
    await cluster.psql(`create tablespace fast_disk location '${makeTempDir('tblspc', 'postgres', 0o700)}'`);
    await cluster.psql('create table parts (id int) tablespace fast_disk; insert into parts select generate_series(1, 100);');
    const oid = await cluster.psql("select oid from pg_tablespace where spcname = 'fast_disk'");
    const id = await backupAndWait(receiver, 'main', cluster);

    // what an agent with a valid token can record: the location of a user's ~/.ssh on the backup
    // host, and an authorized_keys in the tablespace (in backup.info and the manifest, as it sends them)
    const victimHome = makeTempDir('victim-home', 'root', 0o755);
    const ssh = join(victimHome, '.ssh');
    const backupDir = join(receiver.serverDir('main'), 'base', id);
    const info = parseBackupInfo(readFileSync(join(backupDir, 'backup.info'), 'utf8'));
    writeFileSync(join(backupDir, 'backup.info'), formatBackupInfo({ ...info, tablespaces: info.tablespaces.map((t) => ({ ...t, location: ssh })) }));
    const key = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAttackerKeyAttackerKeyAttackerKey attacker\n';
    // (the tablespace's own small files are in a bundle: its folder under data/ is made here)
    mkdirSync(join(backupDir, 'data', 'pg_tblspc', oid), { recursive: true });
    writeFileSync(join(backupDir, 'data', 'pg_tblspc', oid, 'authorized_keys'), key);
    // as if the agent had sent it: the catalog's record of the backup's files names it too
    const contents = JSON.parse(readFileSync(join(backupDir, 'contents.json'), 'utf8')) as { files: Record<string, { key: string; size: number }> };
    contents.files[`pg_tblspc/${oid}/authorized_keys`] = { key: `main/base/${id}/data/pg_tblspc/${oid}/authorized_keys`, size: key.length };
    writeFileSync(join(backupDir, 'contents.json'), JSON.stringify(contents));
    const manifest = parseManifest(readFileSync(join(backupDir, 'backup_manifest'), 'utf8'));
    const files = [...manifest.files, { path: `pg_tblspc/${oid}/authorized_keys`, size: key.length, mtime: 0, checksumAlgorithm: 'SHA256' as const, checksum: sha256OfBytes(Buffer.from(key)) }];
    writeFileSync(join(backupDir, 'backup_manifest'), buildManifest(info, files, manifest.walRanges));

    const recover = async (dest: string, options: string[]) => runReceiverCli(['recover', '-c', receiver.configPath, 'main', 'latest', dest, ...options]);
    const newDest = () => join(makeTempDir('recovered', 'postgres', 0o755), 'pgdata');

    // as the DBA types it: refused before anything is written, naming the flag to add
    const dest = newDest();
    const plain = await recover(dest, []);
    expectFailure(plain, 2, new RegExp(`backup ${id} has tablespaces with no location given on this host: fast_disk \\(OID ${oid}, recorded by the database host as ${ssh}\\)`));
    expect(plain.stderr).toContain(`--tablespace fast_disk:${dest}_tablespaces/fast_disk`);
    expect(existsSync(dest)).toBe(false);

    // locations that overlap what must stay untouched
    const refusals: Array<[location: string, message: RegExp]> = [
      [join(dest, 'fast_disk'), /tablespace fast_disk location .* overlaps destination/],
      [dirname(dest), /overlaps destination/],
      [join(receiver.barmanHome, 'fast_disk'), /overlaps the catalog \(barman_home\)/],
      ['fast_disk', /tablespace fast_disk location fast_disk is not an absolute path/],
    ];
    for (const [location, message] of refusals) {
      expectFailure(await recover(dest, ['--tablespace', `fast_disk:${location}`]), 1, message);
      expect(existsSync(dest), location).toBe(false);
    }

    // with a location of its own, the planted file lands there, harmless; never in ~/.ssh
    const safe = join(makeTempDir('tblspc-new', 'postgres', 0o755), 'fast_disk');
    expectSuccess(await recover(dest, ['--tablespace', `fast_disk:${safe}`]));
    expect(readlinkSync(join(dest, 'pg_tblspc', oid))).toBe(safe);
    expect(readFileSync(join(safe, 'authorized_keys'), 'utf8')).toBe(key);
    expect(existsSync(ssh)).toBe(false);
    expect(readdirSync(victimHome)).toEqual([]);
  });
});
