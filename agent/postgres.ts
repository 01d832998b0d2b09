// Connecting to the local PostgreSQL from the agent's conninfo (libpq keyword = value form or a
// postgresql:// URL), as a normal or a replication session; and what the agent does differently
// by major version (the backup functions, how a slot's position is read), decided here only.

import type { Client, ClientConfig } from 'pg';
import { BarmanError, ErrorCode } from '../shared/errors';
import { requireSupportedVersion } from '../shared/postgres/version';

const KEYWORDS: Record<string, keyof ClientConfig> = {
  host: 'host', hostaddr: 'host', port: 'port', user: 'user', dbname: 'database', password: 'password',
  application_name: 'application_name', connect_timeout: 'connectionTimeoutMillis',
};

/** Parses libpq's `key=value key='quoted value'` form into pg's client options. */
export function parseConninfo(conninfo: string): ClientConfig {
  const text = conninfo.trim();
  if (/^postgres(ql)?:\/\//.test(text)) return { connectionString: text };
  const out: Record<string, unknown> = {};
  // an unquoted value may not open with a quote: an unterminated 'value is an error, as in libpq
  const re = /\s*(\w+)\s*=\s*(?:'((?:[^'\\]|\\.)*)'|([^'\s]\S*))/gy;
  let m: RegExpExecArray | null;
  let last = 0;
  while ((m = re.exec(text))) {
    const key = m[1]!;
    const value = m[2] !== undefined ? m[2].replace(/\\(.)/g, '$1') : m[3]!;
    const option = KEYWORDS[key];
    if (!option) throw new BarmanError(ErrorCode.CONFIG_INVALID, `conninfo: keyword "${key}" is not supported`, `Use ${Object.keys(KEYWORDS).join(', ')}.`);
    const numeric = option === 'port' || option === 'connectionTimeoutMillis';
    if (numeric && !/^\d+$/.test(value)) throw new BarmanError(ErrorCode.CONFIG_INVALID, `conninfo: ${key} "${value.slice(0, 40)}" is not a whole number`, `Set ${key} to a number, e.g. ${key === 'port' ? 'port=5432' : 'connect_timeout=10'}.`);
    out[option] = option === 'port' ? Number(value) : option === 'connectionTimeoutMillis' ? Number(value) * 1000 : value;
    last = re.lastIndex;
  }
  const rest = text.slice(last).trim();
  if (rest !== '') {
    // name the keyword at most: the unparsed text may be (part of) a password
    const keyword = /^(\w+)\s*=/.exec(rest)?.[1];
    const where = keyword ? `the value of "${keyword}"` : `the text at character ${text.indexOf(rest, last) + 1}`;
    throw new BarmanError(ErrorCode.CONFIG_INVALID, `conninfo: cannot parse ${where}`, "Write conninfo as key=value pairs (quote values with spaces: key='a b'), e.g. host=/var/run/postgresql user=postgres dbname=postgres.");
  }
  return out as ClientConfig;
}

export async function connectPostgres(conninfo: string, extra: Partial<ClientConfig> & { replication?: 'database' | boolean } = {}) {
  const pg = (await import('pg')).default;
  const client = new pg.Client({ ...parseConninfo(conninfo), ...extra } as ClientConfig);
  // a server that goes away (stopped, crashed) is an 'error' event: without a listener it would
  // end the process; the query in flight fails with it anyway, and callers handle that
  client.on('error', () => undefined);
  try {
    await client.connect();
  } catch (err) {
    throw new BarmanError(ErrorCode.POSTGRES, `cannot connect to PostgreSQL (${(err as Error).message})`, 'Check conninfo = in the agent configuration and that PostgreSQL is running.', { cause: err });
  }
  return client;
}

/** server_version_num of the server a session (normal or replication) is connected to. */
export async function serverVersionNum(client: Client): Promise<number> {
  const text = (await client.query<{ server_version_num: string }>('SHOW server_version_num')).rows[0]!.server_version_num;
  return Number(text);
}

/** server_version_num, refusing a server older than barman-ts supports (PG_VERSION_UNSUPPORTED). */
export async function supportedServerVersion(client: Client): Promise<number> {
  const version = await serverVersionNum(client);
  requireSupportedVersion(version);
  return version;
}

/** The server's WAL segment size in bytes (initdb --wal-segsize: 1 MB to 1 GB); SHOW works on replication sessions too. */
export async function walSegmentSize(client: Client): Promise<number> {
  const text = (await client.query<{ wal_segment_size: string }>('SHOW wal_segment_size')).rows[0]!.wal_segment_size;
  const m = /^(\d+)\s*(kB|MB|GB)?$/.exec(text.trim());
  if (!m) throw new BarmanError(ErrorCode.POSTGRES, `unexpected wal_segment_size "${text}"`, 'Report this with your PostgreSQL version.');
  return Number(m[1]) * ({ kB: 1024, MB: 1024 ** 2, GB: 1024 ** 3 }[m[2] ?? ''] ?? 1);
}

/** The SQL of a non-exclusive backup, each returning `lsn` (and, for stop, `labelfile`, `spcmapfile`). */
export interface BackupCalls {
  start: string;
  stop: string;
  /** ends a backup whose files will not be used (the session's end would abort it too) */
  abort: string;
}

/** pg_backup_start/pg_backup_stop from PostgreSQL 15; pg_start_backup/pg_stop_backup (non-exclusive) before. */
export function backupCalls(versionNum: number): BackupCalls {
  if (versionNum >= 150000) {
    return {
      start: 'select pg_backup_start($1, true)::text as lsn',
      stop: 'select lsn::text as lsn, labelfile, spcmapfile from pg_backup_stop(false)',
      abort: 'select pg_backup_stop(false)',
    };
  }
  return {
    start: 'select pg_start_backup($1, true, false)::text as lsn',
    stop: 'select lsn::text as lsn, labelfile, spcmapfile from pg_stop_backup(false, false)',
    abort: 'select pg_stop_backup(false, false)',
  };
}

/**
 * The replication slot's restart_lsn (undefined when it has none yet): READ_REPLICATION_SLOT on
 * the replication session from PostgreSQL 15; before, that command does not exist and a
 * physical replication session runs no SQL, so a normal session reads pg_replication_slots.
 */
export async function slotRestartLsn(versionNum: number, repl: Client, conninfo: string, slotName: string): Promise<string | undefined> {
  if (versionNum >= 150000) {
    const row = (await repl.query<{ restart_lsn: string | null }>(`READ_REPLICATION_SLOT "${slotName}"`)).rows[0];
    return row?.restart_lsn ?? undefined;
  }
  const pg = await connectPostgres(conninfo, { application_name: 'barman-agent daemon' });
  try {
    const row = (await pg.query<{ restart_lsn: string | null }>('select restart_lsn::text as restart_lsn from pg_replication_slots where slot_name = $1', [slotName])).rows[0];
    return row?.restart_lsn ?? undefined;
  } finally {
    await pg.end().catch(() => undefined);
  }
}

/** What PostgreSQL says of itself for `check` (barman-agent check here, barman-receiver check through the daemon). */
export interface ServerFacts {
  serverVersionNum: number;
  serverVersion: string;
  systemIdentifier: string;
  inRecovery: boolean;
  walLevel: string;
  archiveMode: string;
  archiveCommand: string;
  /** pg_current_wal_lsn(); '' on a standby */
  currentLsn: string;
  /** the segment a forced switch completed; '' when none was asked */
  switchedSegment: string;
  /** the daemon's replication slot, when asked for one */
  slot: { name: string; exists: boolean; active: boolean; restartLsn: string; walStatus: string } | undefined;
}

/**
 * Reads the settings archiving depends on, the system identifier and the WAL position; with
 * `slotName` the state of that replication slot; with `switchWal` (a primary only) it first
 * forces a WAL switch, as Barman's `switch-wal --force` does: a CHECKPOINT writes WAL even on an
 * idle server, so pg_switch_wal() then completes a segment for archive_command to send.
 */
export async function serverFacts(client: Client, options: { slotName?: string; switchWal?: boolean } = {}): Promise<ServerFacts> {
  const settings = new Map<string, string>();
  const { rows } = await client.query<{ name: string; setting: string }>("select name, setting from pg_settings where name in ('wal_level','archive_mode','archive_command','server_version','server_version_num')");
  for (const r of rows) settings.set(r.name, r.setting);
  const head = (await client.query<{ recovery: boolean; sysid: string }>('select pg_is_in_recovery() as recovery, system_identifier::text as sysid from pg_control_system()')).rows[0]!;
  let switchedSegment = '';
  if (options.switchWal && !head.recovery) {
    try {
      await client.query('CHECKPOINT');
    } catch {
      // without the right to checkpoint, the switch below still completes a segment that has WAL in it
    }
    try {
      switchedSegment = (await client.query<{ name: string }>('select pg_walfile_name(pg_switch_wal()) as name')).rows[0]!.name;
    } catch (err) {
      throw new BarmanError(ErrorCode.POSTGRES, `cannot switch WAL (${(err as Error).message})`, "Let the agent's PostgreSQL user run pg_switch_wal() (superuser, or GRANT EXECUTE ON FUNCTION pg_switch_wal() TO that user).", { cause: err });
    }
  }
  const currentLsn = head.recovery ? '' : (await client.query<{ lsn: string }>('select pg_current_wal_lsn()::text as lsn')).rows[0]!.lsn;
  let slot: ServerFacts['slot'];
  if (options.slotName) {
    const row = (await client.query<{ active: boolean; restart_lsn: string | null; wal_status: string | null }>('select active, restart_lsn::text as restart_lsn, wal_status from pg_replication_slots where slot_name = $1', [options.slotName])).rows[0];
    slot = { name: options.slotName, exists: row !== undefined, active: row?.active ?? false, restartLsn: row?.restart_lsn ?? '', walStatus: row?.wal_status ?? '' };
  }
  return {
    serverVersionNum: Number(settings.get('server_version_num') ?? 0),
    serverVersion: settings.get('server_version') ?? '',
    systemIdentifier: head.sysid,
    inRecovery: head.recovery,
    walLevel: settings.get('wal_level') ?? '',
    archiveMode: settings.get('archive_mode') ?? '',
    archiveCommand: settings.get('archive_command') ?? '',
    currentLsn,
    switchedSegment,
    slot,
  };
}
