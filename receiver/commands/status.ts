// `barman-receiver status <srv>`: where the server's protection stands — agent connected, last
// WAL and its age, streaming, backups, and the RPO that follows.

import type { ReceiverConfig } from '../../shared/config/receiver';
import type { StatusFrame } from '../../shared/protocol/frames';
import { withServer } from '../catalog/open';
import { liveProtection } from '../server/stream-health';
import { ServiceLink } from './admin';
import { BarmanError } from '../../shared/errors';
import { requireServer } from './servers';

export interface ServerStatus {
  server: string;
  description: string;
  receiver: { running: boolean };
  agent: { connected: boolean; since: string | null };
  wal: { last_segment: string | null; last_received_at: string | null; age_seconds: number | null };
  streaming: {
    /** off | streaming | stale (daemon connected, nothing heard from PostgreSQL for its timeout) | disconnected (no daemon) */
    state: string;
    /** a stream was opened for this server once (so one is expected) */
    in_use: boolean;
    timeline: number | null; received_lsn: string | null; flush_lsn: string | null; server_lsn: string | null; lag_bytes: number | null; last_flush_at: string | null;
    /** last WAL or PostgreSQL keepalive the stream relayed */
    last_heard_at: string | null;
  };
  backups: { count: number; first_id: string | null; last_id: string | null; running: string | null; failed: number };
  /** what the catalog learned of the cluster it holds (null before anything arrived) */
  cluster: { pg_major_version: number | null; system_identifier: string | null; wal_segment_size: number | null };
  /**
   * how much committed work a loss of the primary now could cost, in seconds: 0 when streaming is
   * caught up, else the time since the receiver last knew it had all WAL
   */
  rpo_seconds: number | null;
  /** the same in bytes, when PostgreSQL's position is known: WAL it had sent that is not flushed here */
  rpo_bytes: number | null;
  /** the last restore drill (null before the first) */
  drill: { at: string; backup_id: string; passed: boolean; rto_seconds: number | null } | null;
}

/** What the running service says of the server now (a status frame); null when it does not run. */
export type LiveStatus = Pick<StatusFrame, 'agentConnected' | 'agentSince' | 'backupRunning' | 'streaming'>;

/** Asks the running service; undefined when it cannot be reached. */
async function askLive(config: ReceiverConfig, server: string): Promise<LiveStatus | undefined> {
  const link = await ServiceLink.open(config, server, 5);
  if (link instanceof BarmanError) return undefined;
  try {
    return await link.status();
  } catch {
    return undefined;
  } finally {
    link.close();
  }
}

/** `live`: what the service said, when the caller asked it already (null: it is not running); else it is asked here. */
export async function serverStatus(config: ReceiverConfig, name: string, now = new Date(), given?: LiveStatus | null): Promise<ServerStatus> {
  const server = requireServer(config, name);
  const { all, last, identity, inUse, lastDrill } = await withServer(config, server, async ({ catalog, backups }) => ({
    all: await backups.list(),
    last: await catalog.lastSegment(),
    identity: await catalog.identity(),
    inUse: (await catalog.streamingRecord()) !== undefined,
    lastDrill: (await catalog.drills()).pop(),
  }));
  const done = all.filter((b) => b.status === 'DONE');
  const live = given === undefined ? await askLive(config, server.name) : (given ?? undefined);
  const age = last ? Math.max(0, Math.round((now.getTime() - last.receivedAt.getTime()) / 1000)) : null;
  const st = live?.streaming;
  const p = liveProtection(now, { streaming: st, agentConnected: live?.agentConnected ?? false, streamInUse: inUse, lastArchivedAt: last?.receivedAt });
  const { state, lagBytes: lag } = p;
  return {
    server: server.name,
    description: server.description,
    receiver: { running: live !== undefined },
    agent: { connected: live?.agentConnected ?? false, since: live?.agentSince || null },
    wal: { last_segment: last?.name ?? null, last_received_at: last?.receivedAt.toISOString() ?? null, age_seconds: age },
    streaming: {
      state, in_use: inUse || state !== 'off', timeline: st?.timeline || null, received_lsn: st?.receivedLsn || null, flush_lsn: st?.flushLsn || null, server_lsn: st?.serverLsn || null,
      lag_bytes: lag, last_flush_at: st?.lastFlushAt || null, last_heard_at: st?.lastHeardAt || null,
    },
    backups: { count: done.length, first_id: done[0]?.backupId ?? null, last_id: done[done.length - 1]?.backupId ?? null, running: live?.backupRunning || null, failed: all.filter((b) => b.status === 'FAILED').length },
    rpo_seconds: p.rpoSeconds,
    cluster: { pg_major_version: identity?.pgVersion ?? null, system_identifier: identity?.systemIdentifier ?? null, wal_segment_size: identity?.segmentSize ?? null },
    rpo_bytes: p.rpoBytes,
    drill: lastDrill ? { at: lastDrill.at, backup_id: lastDrill.backupId, passed: lastDrill.passed, rto_seconds: lastDrill.rtoSeconds } : null,
  };
}

export function formatStatus(s: ServerStatus): string {
  const rows: Array<[string, string]> = [
    ['Description', s.description],
    ['Receiver service', s.receiver.running ? 'running' : 'not reachable'],
    ['Agent daemon', s.agent.connected ? `connected since ${s.agent.since}` : 'not connected'],
    ['Last archived WAL', s.wal.last_segment ? `${s.wal.last_segment} (${s.wal.age_seconds} s ago)` : 'none'],
    ['Streaming', s.streaming.state === 'off' ? 'off' : `${s.streaming.state}, flushed ${s.streaming.flush_lsn ?? '-'} of ${s.streaming.server_lsn ?? '-'} (lag ${s.streaming.lag_bytes ?? '?'} bytes)${s.streaming.state === 'streaming' ? '' : `, last heard ${s.streaming.last_heard_at ?? 'never'}`}`],
    ['Backups (DONE)', `${s.backups.count}${s.backups.last_id ? `, first ${s.backups.first_id}, last ${s.backups.last_id}` : ''}${s.backups.failed ? `; ${s.backups.failed} FAILED` : ''}`],
    ['Backup running', s.backups.running ?? 'no'],
    ['RPO estimate', s.rpo_seconds === null ? 'unknown (no WAL yet)' : `${s.rpo_seconds} s${s.rpo_bytes ? `, ${s.rpo_bytes} bytes` : ''}`],
    ['Last drill', s.drill === null ? 'none' : `${s.drill.passed ? 'passed' : 'FAILED'} ${s.drill.at}, backup ${s.drill.backup_id}${s.drill.rto_seconds === null ? '' : `, RTO ${s.drill.rto_seconds} s`}`],
    ['Cluster', s.cluster.system_identifier === null ? 'not seen yet' : `PostgreSQL ${s.cluster.pg_major_version ?? '?'}, system identifier ${s.cluster.system_identifier}, WAL segments of ${s.cluster.wal_segment_size! / 1048576} MiB`],
  ];
  return `Server ${s.server}:\n` + rows.map(([k, v]) => `\t${k}: ${v}`).join('\n') + '\n';
}
