// Whether a WAL stream can be believed, and what a loss of the primary now would cost. A stream
// is only "streaming" while the receiver keeps hearing from it: WAL, or the keepalives PostgreSQL
// answers through the daemon when it has nothing to send. Silent for longer than the daemon's
// timeout it is "stale" (the daemon is there, PostgreSQL is not answering: killed, stopped, cut
// off); with no daemon at all it is "disconnected". Pure decisions, unit-tested on their own.
// `liveProtection` is the one place the RPO is worked out: `status` and `/metrics` both ask it.

import type { StreamingState } from '../../shared/protocol/frames';
import { parseLsn } from '../../shared/wal/lsn';

export type StreamLiveState = 'off' | 'streaming' | 'stale' | 'disconnected';

/** how long a stream may say nothing before it is stale, when its daemon did not say (the agent's default timeout) */
export const DEFAULT_STREAM_TIMEOUT_MS = 30_000;

/** When the receiver last heard from the stream, and last knew it had flushed all PostgreSQL had sent. */
export class StreamHealth {
  lastHeardAt: Date | undefined;
  caughtUpAt: Date | undefined;
  timeoutMs = DEFAULT_STREAM_TIMEOUT_MS;

  /** A daemon opened the stream: that is word from it, and it says how long it may stay silent. */
  opened(now: Date, timeoutSeconds: number | undefined, caughtUp: boolean): void {
    this.timeoutMs = timeoutSeconds ? timeoutSeconds * 1000 : DEFAULT_STREAM_TIMEOUT_MS;
    this.heard(now, caughtUp);
  }

  /** WAL or a keepalive arrived; `caughtUp`: everything PostgreSQL has sent is flushed here. */
  heard(now: Date, caughtUp: boolean): void {
    this.lastHeardAt = now;
    if (caughtUp) this.caughtUpAt = now;
  }

  /** A flush here: caught up if it reached what PostgreSQL has sent. */
  flushed(now: Date, caughtUp: boolean): void {
    if (caughtUp) this.caughtUpAt = now;
  }

  state(now: Date, stream: { active: boolean; everStreamed: boolean }, daemonConnected: boolean): StreamLiveState {
    return streamState(now, { ...stream, daemonConnected, lastHeardAt: this.lastHeardAt, timeoutMs: this.timeoutMs });
  }
}

export function streamState(now: Date, s: { active: boolean; everStreamed: boolean; daemonConnected: boolean; lastHeardAt: Date | undefined; timeoutMs: number }): StreamLiveState {
  if (s.active) return s.lastHeardAt && now.getTime() - s.lastHeardAt.getTime() <= s.timeoutMs ? 'streaming' : 'stale';
  if (!s.everStreamed) return 'off';
  return s.daemonConnected ? 'stale' : 'disconnected';
}

/**
 * The RPO estimate in seconds: 0 while streaming has flushed everything PostgreSQL sent; while
 * streaming behind, the time since the last flush; otherwise (stale, disconnected, archiving
 * only) the time since the last moment the receiver knew it had every byte: caught up, flushed,
 * or the newest archived segment, whichever is latest. null when nothing is known yet.
 */
export function estimateRpoSeconds(now: Date, s: { state: string; lagBytes: number | null; lastFlushAt?: Date; caughtUpAt?: Date; lastArchivedAt?: Date }): number | null {
  const since = (d: Date) => Math.max(0, Math.round((now.getTime() - d.getTime()) / 1000));
  if (s.state === 'streaming') {
    if (s.lagBytes !== null && s.lagBytes <= 0) return 0;
    return s.lastFlushAt ? since(s.lastFlushAt) : null;
  }
  const known = [s.caughtUpAt, s.lastFlushAt, s.lastArchivedAt].filter((d): d is Date => d !== undefined && !Number.isNaN(d.getTime()));
  if (known.length === 0) return null;
  return since(new Date(Math.max(...known.map((d) => d.getTime()))));
}

/** What a loss of the primary would cost now: the stream's state, its lag, and the RPO in seconds and bytes. */
export interface Protection {
  /** off | streaming | stale | disconnected */
  state: StreamLiveState | string;
  /** WAL PostgreSQL has sent that is not flushed here (null when PostgreSQL's position is unknown) */
  lagBytes: number | null;
  rpoSeconds: number | null;
  /** the lag while a stream is expected; null when streaming is off or the lag is unknown */
  rpoBytes: number | null;
}

/**
 * The RPO from what the service knows live of the stream (undefined when the service is not
 * running) and what the catalog says: whether a stream was ever opened for the server and when
 * the newest segment arrived. A stream expected but not open on the service (restarted since,
 * or not running) counts as stale with a daemon connected, disconnected without one.
 */
export function liveProtection(now: Date, s: { streaming: StreamingState | undefined; agentConnected: boolean; streamInUse: boolean; lastArchivedAt: Date | undefined }): Protection {
  const st = s.streaming;
  const lagBytes = st?.serverLsn && st.flushLsn ? Number(parseLsn(st.serverLsn) - parseLsn(st.flushLsn)) : null;
  let state = st?.state ?? 'off';
  if (state === 'off' && s.streamInUse) state = s.agentConnected ? 'stale' : 'disconnected';
  const date = (iso: string | undefined) => (iso ? new Date(iso) : undefined);
  const rpoSeconds = estimateRpoSeconds(now, { state, lagBytes, lastFlushAt: date(st?.lastFlushAt), caughtUpAt: date(st?.caughtUpAt), lastArchivedAt: s.lastArchivedAt });
  return { state, lagBytes, rpoSeconds, rpoBytes: state === 'off' || lagBytes === null ? null : Math.max(0, lagBytes) };
}
