import { describe, expect, it } from 'vitest';
import { DEFAULT_STREAM_TIMEOUT_MS, estimateRpoSeconds, liveProtection, StreamHealth, streamState } from '../../../../receiver/server/stream-health';

const at = (s: number) => new Date(Date.UTC(2026, 10, 30, 12, 0, s));

describe('stream state: streaming only while heard from', () => {
  const base = { active: true, everStreamed: true, daemonConnected: true, lastHeardAt: at(0), timeoutMs: 6_000 };

  it.each([
    ['heard just now', { ...base }, at(1), 'streaming'],
    ['heard exactly timeout ago', { ...base }, at(6), 'streaming'],
    ['silent longer than the timeout, daemon connected', { ...base }, at(7), 'stale'],
    ['open but never heard', { ...base, lastHeardAt: undefined }, at(0), 'stale'],
    ['closed, daemon still connected (PostgreSQL unreachable)', { ...base, active: false }, at(1), 'stale'],
    ['closed, no daemon', { ...base, active: false, daemonConnected: false }, at(1), 'disconnected'],
    ['never streamed', { ...base, active: false, everStreamed: false, daemonConnected: false }, at(1), 'off'],
  ] as const)('%s → %s', (_what, s, now, expected) => {
    expect(streamState(now, s)).toBe(expected);
  });

  it('takes the daemon\'s timeout from the stream\'s opening, else the agent\'s default', () => {
    const h = new StreamHealth();
    h.opened(at(0), undefined, false);
    expect(h.timeoutMs).toBe(DEFAULT_STREAM_TIMEOUT_MS);
    h.opened(at(0), 6, false);
    expect(h.state(at(7), { active: true, everStreamed: true }, true)).toBe('stale');
    h.heard(at(5), false);
    expect(h.state(at(7), { active: true, everStreamed: true }, true)).toBe('streaming');
  });

  it('remembers the last moment it had everything: a keepalive or a flush that caught up, not one behind', () => {
    const h = new StreamHealth();
    h.opened(at(0), 6, false);
    expect(h.caughtUpAt).toBeUndefined();
    h.flushed(at(1), true);
    h.heard(at(2), false);
    expect(h.caughtUpAt).toEqual(at(1));
    h.heard(at(3), true);
    expect(h.caughtUpAt).toEqual(at(3));
    expect(h.lastHeardAt).toEqual(at(3));
  });
});

describe('RPO estimate', () => {
  it('is 0 while streaming has flushed all PostgreSQL sent, the time since the last flush while behind', () => {
    expect(estimateRpoSeconds(at(30), { state: 'streaming', lagBytes: 0, lastFlushAt: at(0) })).toBe(0);
    expect(estimateRpoSeconds(at(30), { state: 'streaming', lagBytes: 8192, lastFlushAt: at(28) })).toBe(2);
    expect(estimateRpoSeconds(at(30), { state: 'streaming', lagBytes: null })).toBeNull();
  });

  it('grows from the last moment everything was known to be here once the stream is stale or gone, lag or not', () => {
    const known = { lagBytes: 0, lastFlushAt: at(3), caughtUpAt: at(10), lastArchivedAt: at(1) };
    expect(estimateRpoSeconds(at(40), { state: 'stale', ...known })).toBe(30);
    expect(estimateRpoSeconds(at(50), { state: 'disconnected', ...known })).toBe(40);
    // after a receiver restart only the catalog knows: the newest archived segment
    expect(estimateRpoSeconds(at(50), { state: 'disconnected', lagBytes: null, lastArchivedAt: at(20) })).toBe(30);
    expect(estimateRpoSeconds(at(50), { state: 'stale', lagBytes: null })).toBeNull();
  });

  it('without streaming, is the age of the newest archived segment', () => {
    expect(estimateRpoSeconds(at(45), { state: 'off', lagBytes: null, lastArchivedAt: at(5) })).toBe(40);
    expect(estimateRpoSeconds(at(45), { state: 'off', lagBytes: null })).toBeNull();
  });
});

describe('liveProtection: the one RPO status and /metrics report', () => {
  const streaming = { state: 'streaming', timeline: 1, receivedLsn: '0/3000100', flushLsn: '0/3000100', serverLsn: '0/3000100', lastFlushAt: at(10).toISOString(), lastHeardAt: at(10).toISOString(), caughtUpAt: at(10).toISOString() };

  it('is 0 s and 0 bytes while streaming is caught up', () => {
    expect(liveProtection(at(20), { streaming, agentConnected: true, streamInUse: true, lastArchivedAt: at(0) })).toEqual({ state: 'streaming', lagBytes: 0, rpoSeconds: 0, rpoBytes: 0 });
  });

  it('is the lag, and the time since the last flush, while streaming behind', () => {
    const behind = { ...streaming, serverLsn: '0/3000200' };
    expect(liveProtection(at(20), { streaming: behind, agentConnected: true, streamInUse: true, lastArchivedAt: at(0) })).toEqual({ state: 'streaming', lagBytes: 256, rpoSeconds: 10, rpoBytes: 256 });
  });

  it('counts a stream expected but not open on the service as stale (daemon there) or disconnected (no daemon)', () => {
    const off = { ...streaming, state: 'off', serverLsn: '', flushLsn: '', lastFlushAt: '', caughtUpAt: '' };
    expect(liveProtection(at(30), { streaming: off, agentConnected: true, streamInUse: true, lastArchivedAt: at(0) })).toMatchObject({ state: 'stale', rpoSeconds: 30, rpoBytes: null });
    expect(liveProtection(at(30), { streaming: undefined, agentConnected: false, streamInUse: true, lastArchivedAt: at(0) })).toMatchObject({ state: 'disconnected', rpoSeconds: 30 });
  });

  it('is the age of the newest segment when archiving only; unknown before any WAL', () => {
    expect(liveProtection(at(45), { streaming: undefined, agentConnected: false, streamInUse: false, lastArchivedAt: at(5) })).toEqual({ state: 'off', lagBytes: null, rpoSeconds: 40, rpoBytes: null });
    expect(liveProtection(at(45), { streaming: undefined, agentConnected: false, streamInUse: false, lastArchivedAt: undefined }).rpoSeconds).toBeNull();
  });
});
