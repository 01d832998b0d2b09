// `barman-receiver check <srv>`: everything that must hold for the server to be recoverable,
// one line per check. From the catalog: barman_home writable and its free space, WAL arriving and
// intact, backups (minimum redundancy, their age, none FAILED since the last DONE), one system
// identifier everywhere, nothing unexplained in errors/, the last restore drill. From the running
// service (an admin connection, ServiceLink): whether the agent daemon is connected and, through
// it, what PostgreSQL says (reachable, wal_level, archive_mode, archive_command, the replication
// slot), and the stream. An idle server whose last WAL is older than max_wal_age is asked to switch
// WAL, and archiving passes once that segment arrives. Checks whose threshold is not configured
// are not run, nor the daemon's once none ever attached (agent.json) or the stream's once none was
// ever opened (streaming.json).
//
// WAL integrity: presence is checked for the whole span the DONE backups need (one listing);
// hashing is bounded, so that a check run every few minutes stays quick on a big catalog: up to
// WAL_VERIFY_BUDGET bytes of segments per run, resuming where the previous run stopped
// (wal-verify.json in the server's directory), so every needed segment is read back in turn.
// `--verify-wal` hashes all of them now. verify-backup always hashes a backup's own range.

import type { BackupInfo } from '../../shared/backup/info';
import type { ReceiverConfig, ServerConfig } from '../../shared/config/receiver';
import { formatDuration, type SpaceThreshold } from '../../shared/config/units';
import { type CheckResult, runCheck } from '../../shared/check';
import { BarmanError, ErrorCode } from '../../shared/errors';
import { archiveSettingChecks, slotCheck } from '../../shared/postgres/settings';
import { versionText } from '../../shared/postgres/version';
import type { PgProbeFrame } from '../../shared/protocol/frames';
import { humanSize } from '../../shared/progress';
import type { BackupCatalog } from '../catalog/backups';
import type { DrillRecord, ServerCatalog } from '../catalog/catalog';
import { withServer } from '../catalog/open';
import { neededSegments, shareToVerify, timelineStarts, verifyWalFiles } from '../catalog/wal-integrity';
import { ServiceLink } from './admin';
import { requireServer } from './servers';
import { type LiveStatus, serverStatus } from './status';

/** Plain bytes of WAL hashed per `check` run without --verify-wal (64 segments of 16 MiB). */
const WAL_VERIFY_BUDGET = 1024 * 1024 * 1024;

export interface CheckOptions {
  /** hash every WAL segment the kept backups need, not a bounded share */
  verifyWal?: boolean;
}

/** Missing or damaged WAL in the span the DONE backups need; returns what was verified. */
async function checkWalIntegrity(catalog: ServerCatalog, backups: BackupCatalog, server: string, verifyAll: boolean): Promise<string> {
  const done = (await backups.list()).filter((b) => b.status === 'DONE');
  const identity = await catalog.identity();
  if (done.length === 0 || !identity) return 'no DONE backup needs WAL yet';
  const { firstSegmentOf, problems: historyProblems } = await timelineStarts(catalog, identity.segmentSize);
  const { present, missing } = neededSegments(done, await catalog.listSegments(), firstSegmentOf, identity.segmentSize);
  let toVerify = present;
  let share = 'all verified';
  const budget = Math.max(1, Math.floor(WAL_VERIFY_BUDGET / identity.segmentSize));
  if (!verifyAll && present.length > budget) {
    toVerify = shareToVerify(present, await catalog.walVerifyCursor(), budget);
    await catalog.saveWalVerifyCursor(toVerify[toVerify.length - 1]!).catch(() => undefined);
    share = `${toVerify.length} verified this run, the others in turn on later runs (--verify-wal: all now)`;
  }
  const wal = await verifyWalFiles(catalog, toVerify);
  const problems = [...historyProblems, ...missing.map((m) => `${m}: missing`), ...wal.problems];
  if (problems.length) {
    const shown = problems.slice(0, 5).join('; ') + (problems.length > 5 ? `; and ${problems.length - 5} more` : '');
    throw new BarmanError(
      wal.problems.length || historyProblems.length ? ErrorCode.CHECKSUM_MISMATCH : ErrorCode.WAL_NOT_FOUND,
      `WAL the backups need is missing or damaged: ${shown}`,
      `Recovery stops at the first of them. Push each again from a PostgreSQL host that still has it in pg_wal (barman-agent push <pg_wal>/<name>; an identical copy replaces a damaged one), or take a new backup now (barman-receiver backup ${server} --wait) so that recovery no longer needs them.`,
    );
  }
  const unchecked = wal.unchecked.length ? `; ${wal.unchecked.length} stored without a checksum by an older version (barman-receiver cron records them)` : '';
  return `${present.length} segments from ${present[0]} to ${present[present.length - 1]} present, ${share}${unchecked}`;
}

/** how long an idle server's forced WAL switch may take to reach the catalog */
const SWITCH_ARRIVAL_MS = 30_000;

export async function checkServer(config: ReceiverConfig, name: string, now = new Date(), options: CheckOptions = {}): Promise<CheckResult[]> {
  const server = requireServer(config, name);
  return withServer(config, server, ({ catalog, backups }) => checkOn(config, server, catalog, backups, now, options));
}

async function checkOn(config: ReceiverConfig, server: ServerConfig, catalog: ServerCatalog, backups: BackupCatalog, now: Date, options: CheckOptions): Promise<CheckResult[]> {
  const results: CheckResult[] = [{ name: 'configuration', ok: true, detail: config.file }];
  // a missing bucket, refused credentials or an unreachable endpoint fail here, with their hint
  const storage = await runCheck('storage', async () => {
    await catalog.storage.check();
    return `${catalog.storage.driver.kind}: ${catalog.storage.location}`;
  }, `Create ${config.barmanHome} and make it writable by the user that runs barman-receiver.`);
  results.push(storage);
  if (!storage.ok) return results;
  if (server.minFreeSpace) results.push(await runCheck('free space', () => checkFreeSpace(catalog, server.minFreeSpace!), ''));

  const agentRecord = await catalog.agentRecord();
  const streamingExpected = (await catalog.streamingRecord()) !== undefined;
  // the service is asked when something here needs it: a daemon, a stream, an idle server to switch
  const needsService = agentRecord !== undefined || streamingExpected || server.maxWalAgeSeconds !== undefined;
  const link = needsService ? await ServiceLink.open(config, server.name) : undefined;
  const service = link instanceof ServiceLink ? link : undefined;
  const notRunning = link instanceof BarmanError ? `the receiver service is not running (${link.message})` : undefined;
  try {
    const live = service ? await service.status().catch(() => undefined) : undefined;
    let probe: PgProbeFrame | undefined;
    if (agentRecord) {
      const expected = `one first attached ${agentRecord.firstAttachedAt || 'earlier'}${agentRecord.host ? ` from host ${agentRecord.host}` : ''}`;
      const retire = `if it was retired on purpose, remove ${catalog.agentRecordLocation}`;
      results.push(
        await runCheck('agent connected', async () => {
          if (!live) throw new BarmanError(ErrorCode.AGENT_NOT_CONNECTED, `cannot tell: ${notRunning ?? 'the receiver service did not answer'}`, 'Start it (barman-receiver serve, or systemctl start barman-receiver).');
          if (!live.agentConnected) throw new BarmanError(ErrorCode.AGENT_NOT_CONNECTED, `no agent daemon is connected (${expected})`, `Start barman-agent daemon on the PostgreSQL host (systemctl start barman-agent) and look at its log; ${retire}.`);
          return `since ${live.agentSince}`;
        }, ''),
      );
      results.push(
        await runCheck('PostgreSQL', async () => {
          if (!live) throw new BarmanError(ErrorCode.AGENT_NOT_CONNECTED, `cannot be asked: ${notRunning ?? 'the receiver service did not answer'}`, 'Start the receiver service; PostgreSQL is asked through the agent daemon.');
          if (!live.agentConnected) throw new BarmanError(ErrorCode.AGENT_NOT_CONNECTED, 'cannot be asked: no agent daemon is connected', 'Start barman-agent daemon on the PostgreSQL host; barman-agent check there checks PostgreSQL meanwhile.');
          probe = await service!.probePostgres(false);
          return `PostgreSQL ${versionText(probe.serverVersionNum)}${probe.inRecovery ? ' (in recovery: a standby)' : ''}, through the agent daemon`;
        }, "Check conninfo = in the agent's configuration and that PostgreSQL runs (barman-agent check on the PostgreSQL host says more)."),
      );
      if (probe) results.push(...archiveSettingChecks(probe));
    }

    results.push(await runCheck('WAL archive', () => checkArchiving(catalog, server, now, service && live?.agentConnected ? service : undefined, notRunning), ''));
    results.push(await runCheck('WAL integrity', () => checkWalIntegrity(catalog, backups, server.name, options.verifyWal ?? false), ''));
    if (streamingExpected) results.push(await streamingCheck(config, server.name, catalog, now, live ?? null));
    if (streamingExpected && probe?.slotName) {
      results.push(slotCheck({ name: probe.slotName, exists: probe.slotExists, active: probe.slotActive, restartLsn: probe.slotRestartLsn, walStatus: probe.slotWalStatus }, { streaming: true, createdByDaemon: false }));
    }

    const all = await backups.list();
    const done = all.filter((b) => b.status === 'DONE');
    results.push(
      await runCheck('minimum redundancy requirements', async () => {
        if (done.length < server.minimumRedundancy) {
          throw new BarmanError(ErrorCode.RETENTION, `have ${done.length} backups, expected at least ${server.minimumRedundancy}`, `Take a backup: barman-receiver backup ${server.name} --wait (or barman-agent backup on the PostgreSQL host).`);
        }
        return `have ${done.length} backups, expected at least ${server.minimumRedundancy}`;
      }, ''),
    );
    if (server.lastBackupMaximumAgeSeconds !== undefined) results.push(warning(await runCheck('backup maximum age', async () => checkBackupAge(server, done, now), '')));
    results.push(warning(await runCheck('failed backups', async () => checkFailedBackups(server.name, all), '')));
    results.push(await runCheck('system identifier', () => checkSystemIdentifier(catalog, all, probe), ''));
    results.push(warning(await runCheck('archiver errors', () => checkErrorsDirectory(catalog), '')));
    const drills = await catalog.drills();
    if (server.drillMaxAgeSeconds !== undefined || drills.length > 0) results.push(warning(await runCheck('last drill', async () => checkLastDrill(server, drills, now), '')));
  } finally {
    service?.close();
  }
  return results;
}

/** A check whose failure is a warning (Nagios WARNING): recoverability is not lost yet, but a DBA must look. */
function warning(r: CheckResult): CheckResult {
  return { ...r, severity: 'warning' };
}

const ago = (now: Date, then: Date) => formatAge(Math.max(0, Math.round((now.getTime() - then.getTime()) / 1000)));

/** 42 s, 12 min, 5 h, 3 days: an age as a person reads it. */
function formatAge(seconds: number): string {
  if (seconds < 120) return `${seconds} s`;
  if (seconds < 2 * 3600) return `${Math.round(seconds / 60)} min`;
  if (seconds < 2 * 86_400) return `${Math.round(seconds / 3600)} h`;
  return `${Math.round(seconds / 86_400)} days`;
}

async function checkFreeSpace(catalog: ServerCatalog, threshold: SpaceThreshold): Promise<string> {
  const space = await catalog.space();
  if (!space) return `not measured: the catalog is in ${catalog.storage.location}, whose room is the object store's to say`;
  const { availableBytes, totalBytes } = space;
  const needed = threshold.kind === 'bytes' ? threshold.bytes : Math.ceil((totalBytes * threshold.percent) / 100);
  const wanted = threshold.kind === 'bytes' ? humanSize(threshold.bytes) : `${threshold.percent}% (${humanSize(needed)})`;
  const text = `${humanSize(availableBytes)} free of ${humanSize(totalBytes)} where ${catalog.storage.location} is, min_free_space ${wanted}`;
  if (availableBytes < needed) {
    throw new BarmanError(ErrorCode.STORAGE, text, `Free space on that filesystem (retention: barman-receiver cron, or a tighter retention_policy) or grow it; WAL stops being archived when it is full.`);
  }
  return text;
}

/**
 * WAL arrives: any WAL at all, and with max_wal_age some within that age. An idle server is not
 * reported broken: it is asked (through the daemon) to switch WAL, and passes once that segment
 * is archived.
 */
async function checkArchiving(catalog: ServerCatalog, server: ServerConfig, now: Date, service: ServiceLink | undefined, notRunning: string | undefined): Promise<string> {
  const last = await catalog.lastSegment();
  const maxAge = server.maxWalAgeSeconds;
  if (maxAge === undefined) {
    if (!last) throw new BarmanError(ErrorCode.WAL_NOT_FOUND, 'no WAL received yet', "Set archive_command = 'barman-agent push %p' on the PostgreSQL host, then run SELECT pg_switch_wal() there.");
    return `last ${last.name}, ${Math.max(0, Math.round((now.getTime() - last.receivedAt.getTime()) / 1000))} s ago`;
  }
  const limit = `max_wal_age ${formatDuration(maxAge)}`;
  if (last && now.getTime() - last.receivedAt.getTime() <= maxAge * 1000) return `last ${last.name}, ${ago(now, last.receivedAt)} ago, within ${limit}`;
  const lastText = last ? `the last WAL, ${last.name}, arrived ${ago(now, last.receivedAt)} ago` : 'no WAL received yet';
  const hint = "Check archive_command on the PostgreSQL host (barman-agent check there, and pg_stat_archiver's last_failed_wal), and the receiver's log.";
  if (!service) {
    throw new BarmanError(ErrorCode.WAL_NOT_FOUND, `${lastText}, more than ${limit}; the server cannot be asked to switch WAL: ${notRunning ?? 'no agent daemon is connected'}`, `${hint} An idle server is asked to switch WAL through the agent daemon when one is connected.`);
  }
  const asked = Date.now();
  const probe = await service.probePostgres(true);
  if (!probe.switchedSegment) throw new BarmanError(ErrorCode.WAL_NOT_FOUND, `${lastText}, more than ${limit}, and PostgreSQL did not switch WAL${probe.inRecovery ? ' (it is a standby)' : ''}`, hint);
  while (!(await catalog.findWal(probe.switchedSegment))) {
    if (Date.now() - asked > SWITCH_ARRIVAL_MS) {
      throw new BarmanError(ErrorCode.WAL_NOT_FOUND, `${lastText}, more than ${limit}; asked to switch WAL, PostgreSQL completed ${probe.switchedSegment}, which did not arrive within ${SWITCH_ARRIVAL_MS / 1000} s`, hint);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  return `idle: ${lastText}; asked to switch WAL, PostgreSQL completed ${probe.switchedSegment} and it was archived ${((Date.now() - asked) / 1000).toFixed(1)} s later`;
}

function checkBackupAge(server: ServerConfig, done: BackupInfo[], now: Date): string {
  const limit = `last_backup_maximum_age ${formatDuration(server.lastBackupMaximumAgeSeconds!)}`;
  const newest = done[done.length - 1];
  const take = `Take one: barman-receiver backup ${server.name} --wait (and schedule backups more often than ${formatDuration(server.lastBackupMaximumAgeSeconds!)}).`;
  if (!newest) throw new BarmanError(ErrorCode.BACKUP_NOT_FOUND, `no DONE backup (${limit})`, take);
  const ended = new Date(newest.endTime);
  if (now.getTime() - ended.getTime() > server.lastBackupMaximumAgeSeconds! * 1000) {
    throw new BarmanError(ErrorCode.BACKUP_NOT_FOUND, `the newest DONE backup, ${newest.backupId}, ended ${ago(now, ended)} ago, more than ${limit}`, take);
  }
  return `newest DONE backup ${newest.backupId}, ended ${ago(now, ended)} ago, within ${limit}`;
}

/** A FAILED backup after the newest DONE one: backups stopped succeeding. Older FAILED ones are history. */
function checkFailedBackups(server: string, all: BackupInfo[]): string {
  const newestDone = all.filter((b) => b.status === 'DONE').pop();
  const failed = all.filter((b) => b.status === 'FAILED');
  const recent = failed.filter((b) => !newestDone || b.backupId > newestDone.backupId);
  if (recent.length) {
    const b = recent[recent.length - 1]!;
    throw new BarmanError(ErrorCode.BACKUP_FAILED, `backup ${b.backupId} FAILED${b.error ? ` (${b.error})` : ''}${newestDone ? ` after the newest DONE backup, ${newestDone.backupId}` : ', and no backup is DONE'}${recent.length > 1 ? `; ${recent.length} FAILED since` : ''}`, `Find out why (the agent's log; barman-receiver show-backup ${server} ${b.backupId}), take a new backup (barman-receiver backup ${server} --wait), and delete the failed one (barman-receiver delete ${server} ${b.backupId}).`);
  }
  return newestDone ? `none after the newest DONE backup, ${newestDone.backupId}${failed.length ? ` (${failed.length} older FAILED)` : ''}` : 'none';
}

/** The catalog's cluster (identity.json), every backup's and the live server's (through the daemon) are one. */
async function checkSystemIdentifier(catalog: ServerCatalog, all: BackupInfo[], probe: PgProbeFrame | undefined): Promise<string> {
  const seen = new Map<string, string[]>();
  const add = (id: string, where: string) => {
    if (id) seen.set(id, [...(seen.get(id) ?? []), where]);
  };
  add((await catalog.identity())?.systemIdentifier ?? '', 'the catalog (identity.json)');
  for (const b of all) add(b.systemIdentifier, `backup ${b.backupId}`);
  if (probe) add(probe.systemIdentifier, 'the PostgreSQL server now');
  if (seen.size > 1) {
    const list = [...seen].map(([id, where]) => `${id} in ${where.slice(0, 3).join(', ')}${where.length > 3 ? ` and ${where.length - 3} more` : ''}`).join('; ');
    throw new BarmanError(ErrorCode.WAL_FOREIGN, `more than one system identifier: ${list}`, `The PostgreSQL server was replaced (initdb, pg_upgrade, a restored copy promoted elsewhere): a new cluster needs its own server section and catalog; point its agent there, and keep this catalog for the old cluster's backups.`);
  }
  const [id] = [...seen.keys()];
  return id ? `${id}${probe ? ', the server\'s too' : ''}` : 'nothing received yet';
}

/**
 * Nothing in errors/ that a DBA has not dealt with. A damaged copy that an identical push has
 * since replaced is explained (the repair is logged, the catalog holds an intact copy); a file
 * moved to errors/reviewed/ is dealt with. Anything else (a conflicting push, a streamed copy
 * that differed or was invalid) needs a look.
 */
async function checkErrorsDirectory(catalog: ServerCatalog): Promise<string> {
  const files = await catalog.unreviewedErrors();
  const open: typeof files = [];
  let repaired = 0;
  for (const f of files) {
    if (f.reason === 'damaged' && f.wal && (await catalog.findWal(f.wal))) repaired++;
    else open.push(f);
  }
  if (open.length) {
    const shown = open.slice(-5).map((f) => `${f.file}${f.reason ? ` (${f.reason})` : ''}`).join(', ');
    throw new BarmanError(ErrorCode.WAL_CONFLICT, `${open.length} file(s) in ${catalog.where(catalog.layout.errorsPrefix)} not dealt with: ${shown}${open.length > 5 ? ', ...' : ''}`, `Each is a WAL file the receiver refused or set aside, named after why (docs/catalog.md): compare it with the archived one and the server's pg_wal, then move it to ${catalog.reviewedErrorsLocation} (kept, no longer reported).`);
  }
  return files.length ? `${repaired} damaged cop${repaired === 1 ? 'y' : 'ies'} kept aside, each replaced by an intact push` : 'none';
}

function checkLastDrill(server: ServerConfig, drills: DrillRecord[], now: Date): string {
  const last = drills[drills.length - 1];
  const run = `Run one: barman-receiver drill ${server.name} (or set drill_schedule = daily | weekly in [${server.name}]).`;
  const limit = server.drillMaxAgeSeconds === undefined ? '' : `drill_max_age ${formatDuration(server.drillMaxAgeSeconds)}`;
  if (!last) throw new BarmanError(ErrorCode.DRILL_FAILED, `no restore drill has run${limit ? ` (${limit})` : ''}`, run);
  const at = new Date(last.at);
  if (!last.passed) throw new BarmanError(ErrorCode.DRILL_FAILED, `the last drill, ${ago(now, at)} ago on backup ${last.backupId}, FAILED: ${last.error}`, `Find out why (barman-receiver drill ${server.name} --json shows each check), fix it, and run the drill again.`);
  if (server.drillMaxAgeSeconds !== undefined && now.getTime() - at.getTime() > server.drillMaxAgeSeconds * 1000) {
    throw new BarmanError(ErrorCode.DRILL_FAILED, `the last drill passed ${ago(now, at)} ago, more than ${limit}`, run);
  }
  return `passed ${ago(now, at)} ago on backup ${last.backupId}${last.rtoSeconds === null ? '' : `, RTO ${last.rtoSeconds} s`}${limit ? `, within ${limit}` : ''}`;
}

/**
 * Once a stream was opened for the server, its WAL is expected streamed: the check fails while no
 * daemon is connected or its stream is stale. Run only for a server that streamed once.
 */
async function streamingCheck(config: ReceiverConfig, name: string, catalog: ServerCatalog, now: Date, live: LiveStatus | null): Promise<CheckResult> {
  const turnOff = `if streaming was turned off on purpose, remove ${catalog.streamingRecordLocation}`;
  return runCheck('WAL streaming', async () => {
    const s = await serverStatus(config, name, now, live);
    const rpo = s.rpo_seconds === null ? '' : `; RPO ${s.rpo_seconds} s`;
    if (!s.receiver.running) {
      throw new BarmanError(ErrorCode.AGENT_NOT_CONNECTED, `the receiver service is not running, so nothing is streamed${rpo}`, `Start it (barman-receiver serve, or systemctl start barman-receiver); ${turnOff}.`);
    }
    if (s.streaming.state === 'disconnected') {
      throw new BarmanError(ErrorCode.AGENT_NOT_CONNECTED, `no agent daemon is connected${rpo}`, `Start barman-agent daemon on the PostgreSQL host (systemctl start barman-agent) and look at its log; ${turnOff}.`);
    }
    if (s.streaming.state !== 'streaming') {
      const heard = s.streaming.last_heard_at ? `since ${s.streaming.last_heard_at}` : 'since the daemon connected';
      throw new BarmanError(ErrorCode.AGENT_NOT_CONNECTED, `stale: the agent daemon is connected but relayed nothing from PostgreSQL ${heard}${rpo}`, `Check that PostgreSQL runs on the database host and accepts the daemon's replication connection (the daemon's log says why it cannot stream); ${turnOff}.`);
    }
    return `streaming, flushed ${s.streaming.flush_lsn ?? '-'}, lag ${s.streaming.lag_bytes ?? '?'} bytes`;
  }, '');
}
