// One well-formed frame of every kind, for the frame and codec tests.

import type { Frame, FrameType } from '../../../../shared/protocol/frames';

const bytes = (n: number, fill: number) => new Uint8Array(n).fill(fill);
export const SHA = 'ab'.repeat(32);

export const VALID_FRAMES: { [K in FrameType]: Extract<Frame, { type: K }> } = {
  hello: { type: 'hello', protocolVersion: 1, server: 'main', role: 'push', clientNonce: bytes(32, 1), agentVersion: '0.1.0' },
  challenge: { type: 'challenge', protocolVersion: 1, serverNonce: bytes(32, 2) },
  auth: { type: 'auth', proof: bytes(32, 3) },
  welcome: { type: 'welcome', sessionId: 's-1', proof: bytes(32, 4) },
  put: { type: 'put', id: 1, target: { kind: 'wal', name: '000000010000000000000001', sha256: SHA }, size: 16 * 1024 * 1024 },
  file: { type: 'file', id: 2, name: 'base/16384/1259', size: 8192, checksum: 'crc32c' },
  chunk: { type: 'chunk', id: 3, data: bytes(1000, 5) },
  end: { type: 'end', id: 4, sha256: SHA, crc32c: '1a2b3c4d' },
  get: { type: 'get', id: 5, name: '000000010000000000000001' },
  ack: { type: 'ack', id: 6, status: 'stored', sha256: SHA },
  error: { type: 'error', id: 7, code: 'WAL_CONFLICT', message: 'already archived', hint: 'compare the files' },
  refused: { type: 'refused', id: 7, detail: 'base/1/1234: a zstd frame from the receiver was refused' },
  rechecked: { type: 'rechecked', id: 7, found: 'intact' },
  'backup-begin': {
    type: 'backup-begin',
    id: 8,
    requestId: 1,
    start: {
      startLsn: '0/2000028',
      timeline: 1,
      startTime: '2026-11-25T10:00:00.000Z',
      systemIdentifier: '7712075971341596236',
      pgVersion: 150018,
      segmentSize: 16777216,
      pgdata: '/var/lib/postgresql/15/main',
      tablespaces: [{ oid: '16384', name: 'ts1', location: '/srv/ts1' }],
    },
  },
  'backup-accepted': { type: 'backup-accepted', id: 9, backupId: '20261125T100000', checksum: 'sha256' },
  'backup-end': {
    type: 'backup-end',
    id: 10,
    backupId: '20261125T100000',
    stop: { stopLsn: '0/2000100', stopTime: '2026-11-25T10:00:05.000Z', backupLabel: 'START WAL LOCATION: 0/2000028\n', tablespaceMap: '', directories: ['base', 'pg_wal', 'pg_replslot'], symlinks: [{ path: 'conf.d', target: '/etc/postgresql/15/main/conf.d' }] },
    fileCount: 970,
  },
  'backup-abort': { type: 'backup-abort', id: 11, backupId: '20261125T100000', reason: 'pg_backup_start failed' },
  'backup-request': { type: 'backup-request', id: 12 },
  'backup-start': { type: 'backup-start', id: 13, wait: true },
  'backup-status': { type: 'backup-status', id: 14, backupId: '20261125T100000', status: 'DONE' },
  'backup-total': { type: 'backup-total', backupId: '20261125T100000', files: 970, bytes: 23_456_789 },
  'backup-progress': { type: 'backup-progress', id: 13, backupId: '20261125T100000', files: 412, bytes: 10_485_760, elapsedMs: 2_500, totalFiles: 970, totalBytes: 23_456_789 },
  'get-backup-file': { type: 'get-backup-file', id: 15, backupId: '20261125T100000', path: 'base/5/1259' },
  'restore-plan-request': { type: 'restore-plan-request', id: 16, backup: 'latest', options: { targetTime: '2026-11-25T12:00:05+01:00', targetAction: 'promote', exclusive: false } },
  'status-request': { type: 'status-request', id: 17 },
  'catalog-change': { type: 'catalog-change', id: 21, action: 'delete', backup: 'oldest', key: SHA },
  status: {
    type: 'status',
    id: 18,
    agentConnected: true,
    agentSince: '2026-11-25T09:00:00.000Z',
    backupRunning: '',
    streaming: {
      state: 'streaming', timeline: 1, receivedLsn: '0/3000100', flushLsn: '0/3000100', serverLsn: '0/3000100', lastFlushAt: '2026-11-25T09:00:01.000Z',
      lastHeardAt: '2026-11-25T09:00:02.000Z', caughtUpAt: '2026-11-25T09:00:02.000Z',
    },
  },
  'stream-open': { type: 'stream-open', id: 19, timeline: 2, systemIdentifier: '7712075971341596236', segmentSize: 16 * 1024 * 1024, serverLsn: '0/5000060', switchLsn: '0/40000A0', parentTimeline: 1, timeoutSeconds: 30 },
  'stream-position': { type: 'stream-position', id: 19, timeline: 2, lsn: '0/40000A0' },
  'wal-data': { type: 'wal-data', id: 19, timeline: 2, startLsn: '0/40000A0', walEnd: '0/5000060', data: bytes(8192, 6) },
  'stream-flushed': { type: 'stream-flushed', id: 19, timeline: 2, flushLsn: '0/40020A0' },
  'stream-segment': { type: 'stream-segment', id: 19, name: '000000020000000000000004', sha256: SHA },
  'stream-keepalive': { type: 'stream-keepalive', id: 19, timeline: 2, serverLsn: '0/5000060' },
  'daemon-attach': { type: 'daemon-attach', id: 20, instance: '6f1c2a9e-3b0d-4e59-9a57-0d2f4c1b8e21', takeover: false, host: 'db1', pid: 4242 },
  'daemon-attached': { type: 'daemon-attached', id: 20 },
  'pg-probe-request': { type: 'pg-probe-request', id: 22, switchWal: true },
  'pg-probe': {
    type: 'pg-probe', id: 22, serverVersionNum: 150018, systemIdentifier: '7712075971341596236', inRecovery: false, walLevel: 'replica', archiveMode: 'on',
    archiveCommand: 'barman-agent push %p', currentLsn: '0/5000060', switchedSegment: '000000010000000000000004',
    slotName: 'barman_main', slotExists: true, slotActive: true, slotRestartLsn: '0/5000000', slotWalStatus: 'reserved',
  },
  'drill-request': { type: 'drill-request', id: 23, backup: 'latest', targetTime: '', key: SHA },
};

/** Fields a frame kind may leave out. */
export const OPTIONAL_FIELDS: Partial<Record<FrameType, string[]>> = {
  error: ['id'], 'backup-begin': ['requestId'], 'backup-status': ['reason'], 'backup-progress': ['totalFiles', 'totalBytes'], 'stream-open': ['timeoutSeconds'],
  file: ['checksum'], end: ['sha256', 'crc32c'], ack: ['sha256'], 'backup-accepted': ['checksum'],
};

export const FRAME_TYPES = Object.keys(VALID_FRAMES) as FrameType[];
