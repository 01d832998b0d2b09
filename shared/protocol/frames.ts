// The wire protocol between agent and receiver: one binary WebSocket message = one frame, a
// msgpack map with a `type`. Requests that expect an answer carry an `id`; answers echo it.
// This file is the single definition of every frame kind and of what makes a frame well formed.
//
// A file travels as  put|file (begin: name, size)  →  chunk*  →  end (checksums)  and is answered
// by ack or error. The sender checksums while it reads, the receiver while it writes; the
// receiver acks only after fsync and a matching checksum.

import type { BackupSymlink } from '../backup/paths';

/** 2: the auth proof binds the whole hello (role, versions), and backup-end carries the symlinks; 3: a WAL put declares its SHA-256; 4: a backup file's end carries its CRC-32C; 5: a backup file's SHA-256 only when backup-accepted asks for it, a served backup file's end may carry the CRC-32C its manifest records; 6: welcome may announce walCompression, and a WAL put may then come compressed; 7: a get may accept zstd, and a WAL file the catalog stores so then comes as its stored frames (an agent of 6 never asks, and is served as before); 8: an agent tells the receiver of a file it refused (refused), and hears what the stored copy is (rechecked); agents of 6 and 7 never do; 9: a WAL file's end carries the CRC-32C of its plain bytes, which the receiver checks them against (no longer hashing them a second time) */
export const PROTOCOL_VERSION = 9;
/** the oldest agent protocol a receiver serves: agents and receivers of one barman-ts version (9 changed what a WAL file's end must carry: an agent before it would have its WAL refused) */
export const OLDEST_AGENT_PROTOCOL = 9;
/** bytes of file data per chunk frame */
export const CHUNK_SIZE = 1024 * 1024;
/** the most a chunk may carry: a compressed frame of CHUNK_SIZE plain bytes that did not compress (zstd's bound: 1/256 more, and a header) */
export const MAX_CHUNK_DATA = CHUNK_SIZE + 64 * 1024;
/** the largest WebSocket message either side accepts (a chunk plus its envelope, with room) */
export const MAX_FRAME_BYTES = 2 * CHUNK_SIZE;
/** bytes a sender may have queued on its socket before it waits for drain */
export const SEND_HIGH_WATER = 4 * CHUNK_SIZE;

export type Role = 'push' | 'get' | 'daemon' | 'backup' | 'restore' | 'admin';
export const ROLES: readonly Role[] = ['push', 'get', 'daemon', 'backup', 'restore', 'admin'];

/**
 * What a put writes into: an archived WAL file, or one file of a backup in progress. A WAL file's
 * SHA-256 is declared before its bytes (the catalog stores it under a key that carries it, and an
 * object store has no rename); the end frame repeats it for the bytes actually sent.
 */
export type PutTarget = { kind: 'wal'; name: string; sha256: string } | { kind: 'backup-file'; backupId: string; path: string; mtime: number };

export interface TablespaceInfo { oid: string; name: string; location: string }

/** What the agent reports when PostgreSQL has started a backup (pg_backup_start). */
export interface BackupStart {
  startLsn: string;
  timeline: number;
  /** ISO 8601, the PostgreSQL host's clock */
  startTime: string;
  systemIdentifier: string;
  /** server_version_num, e.g. 150018 */
  pgVersion: number;
  /** wal_segment_size in bytes (initdb --wal-segsize) */
  segmentSize: number;
  pgdata: string;
  tablespaces: TablespaceInfo[];
}

/** What the agent reports when PostgreSQL has stopped it (pg_backup_stop). */
export interface BackupStop {
  stopLsn: string;
  stopTime: string;
  backupLabel: string;
  tablespaceMap: string;
  /** every directory of the backup, relative, so empty ones (pg_wal, pg_replslot, ...) exist on restore */
  directories: string[];
  /** the data directory's symbolic links (pg_tblspc/<oid> aside), kept as links: never followed, recreated on restore */
  symlinks: BackupSymlink[];
}

export interface HelloFrame { type: 'hello'; protocolVersion: number; server: string; role: Role; clientNonce: Uint8Array; agentVersion: string }
export interface ChallengeFrame { type: 'challenge'; protocolVersion: number; serverNonce: Uint8Array }
export interface AuthFrame { type: 'auth'; proof: Uint8Array }
/**
 * `walCompression`: the catalog stores WAL segments so compressed; the agent may
 * send a segment's put compressed the same way (each chunk one whole frame of at most
 * CHUNK_SIZE plain bytes), which the receiver checks frame by frame and stores as it is.
 */
export interface WelcomeFrame { type: 'welcome'; sessionId: string; proof: Uint8Array; walCompression?: WireCompression }
/** `compression`: the chunks are frames so compressed (a WAL segment, as welcome allowed); `size` and the checksums stay those of the plain bytes */
export interface PutFrame { type: 'put'; id: number; target: PutTarget; size: number; compression?: WireCompression }
/**
 * `checksum: 'crc32c'`: the end frame carries the file's CRC-32C (as its backup_manifest records it), not a SHA-256.
 * `encoding: 'zstd'` (only in answer to a get-backup-file with `accept: 'zstd'`): each chunk is one
 * zstd frame of at most CHUNK_SIZE plain bytes, as the catalog stores it (a chunk with `plain`
 * holds plain bytes instead); `size` and the end's checksum are of the plain bytes.
 */
export interface FileFrame { type: 'file'; id: number; name: string; size: number; checksum?: 'crc32c'; encoding?: 'zstd' }
/** `plain`: in a file sent with `encoding`, this chunk's bytes are plain, not a frame */
export interface ChunkFrame { type: 'chunk'; id: number; data: Uint8Array; plain?: true }
/**
 * `crc32c` (8 hex digits of the value of the plain bytes): what a pushed file's end carries, the
 * receiver checks the bytes against it; `sha256` too for a WAL file (of the bytes sent: the
 * receiver refuses one that is not what its put declared) and where backup-accepted asked for it.
 * A served file's end carries what its file frame announced.
 */
export interface EndFrame { type: 'end'; id: number; sha256?: string; crc32c?: string }
/**
 * A WAL file from the catalog. With `accept: 'zstd'` one the catalog stores as zstd may come as its
 * stored frames (file `encoding`), which the agent decompresses; the end's SHA-256 is the plain bytes'.
 */
export interface GetFrame { type: 'get'; id: number; name: string; accept?: 'zstd' }
/** `sha256`: a WAL file's (what the catalog stored it under); a backup file's ack carries none */
export interface AckFrame { type: 'ack'; id: number; status: 'stored' | 'duplicate' | 'sent'; sha256?: string }
export interface ErrorFrame { type: 'error'; id?: number; code: string; message: string; hint: string }
/**
 * Agent → receiver: the file the receiver sent in answer to request `id` (a get or a
 * get-backup-file) did not check out here (`detail`: what this agent found). The receiver reads
 * its stored copy again, logs what it finds and answers with rechecked.
 */
export interface RefusedFrame { type: 'refused'; id: number; detail: string }
/** the most a refused frame's detail may say */
export const REFUSED_DETAIL_MAX = 1024;
/** What the stored copy of a file an agent refused was found to be, read back: damaged, intact, stored without a checksum to check it against, or gone meanwhile. */
export type StoredCopyFound = 'damaged' | 'intact' | 'unchecked' | 'gone';
/** Receiver → agent, the answer to refused: what the stored copy is (`unknown`: no file was sent under that id, or it could not be read back). */
export interface RecheckedFrame { type: 'rechecked'; id: number; found: StoredCopyFound | 'unknown' }
/** agent → receiver: a backup has started; `requestId` answers a backup-request */
export interface BackupBeginFrame { type: 'backup-begin'; id: number; requestId?: number; start: BackupStart; canCompress?: WireCompression[] }
/**
 * receiver → agent: the backup's ID; files may now be put under it. With `compression`, every
 * file of it is sent compressed so (each chunk one whole frame of at most CHUNK_SIZE plain
 * bytes, the end's CRC-32C of the bytes sent), and the receiver stores those bytes as they are.
 * With `checksum: 'sha256'` (backup_checksum = sha256) each file's end carries its SHA-256 too,
 * which the manifest records; without, the manifest records the CRC-32C the receiver checked.
 */
export interface BackupAcceptedFrame { type: 'backup-accepted'; id: number; backupId: string; compression?: WireCompression; checksum?: 'sha256' }
/** what an agent can compress a backup's files with before sending them */
export type WireCompression = 'zstd';
/** agent → receiver: every file is sent and PostgreSQL has stopped the backup */
export interface BackupEndFrame { type: 'backup-end'; id: number; backupId: string; stop: BackupStop; fileCount: number }
/** agent → receiver: the backup failed on the PostgreSQL host */
export interface BackupAbortFrame { type: 'backup-abort'; id: number; backupId: string; reason: string }
/** receiver → daemon: take a backup now */
export interface BackupRequestFrame { type: 'backup-request'; id: number }
/** admin → receiver: ask the server's daemon for a backup; `wait` keeps answering until DONE or FAILED */
export interface BackupStartFrame { type: 'backup-start'; id: number; wait: boolean }
/** receiver → agent/admin: where a backup stands */
export interface BackupStatusFrame { type: 'backup-status'; id: number; backupId: string; status: string; reason?: string }
/** agent → receiver, no answer: what the backup's walk found to send (the totals progress is measured against) */
export interface BackupTotalFrame { type: 'backup-total'; backupId: string; files: number; bytes: number }
/** receiver → admin waiting on a backup-start: how far the backup's files are, about once a second while they arrive, and once when they are all in */
export interface BackupProgressFrame { type: 'backup-progress'; id: number; backupId: string; files: number; bytes: number; elapsedMs: number; totalFiles?: number; totalBytes?: number }

/**
 * restore → receiver: one data file of a DONE backup, answered like get (file, chunk*, end).
 * `accept: 'zstd'`: the asker decompresses zstd frames itself, so a file the catalog stores as
 * zstd (and whose manifest records a checksum) may come as its stored frames (file `encoding`).
 */
export interface GetBackupFileFrame { type: 'get-backup-file'; id: number; backupId: string; path: string; accept?: 'zstd' }
/** restore → receiver: plan a recovery; answered like get, with the plan as a JSON document */
export interface RestorePlanRequestFrame { type: 'restore-plan-request'; id: number; backup: string; options: Record<string, unknown> }

/**
 * daemon → receiver: WAL streaming starts on this cluster and timeline; answered by stream-position.
 * `timeoutSeconds`: the receiver calls the stream stale when it hears nothing of it (WAL or keepalive) for that long.
 */
export interface StreamOpenFrame { type: 'stream-open'; id: number; timeline: number; systemIdentifier: string; segmentSize: number; serverLsn: string; /** where this timeline branched off its parent ('' on timeline 1) */ switchLsn: string; parentTimeline: number; timeoutSeconds?: number }
/** receiver → daemon: stream from here (lsn '' = no streamed WAL yet: start where the slot holds WAL) */
export interface StreamPositionFrame { type: 'stream-position'; id: number; timeline: number; lsn: string }
/** daemon → receiver: WAL bytes from `startLsn`; `walEnd` is the primary's position when sent */
export interface WalDataFrame { type: 'wal-data'; id: number; timeline: number; startLsn: string; walEnd: string; data: Uint8Array }
/** receiver → daemon: a streamed segment is complete and archived (durable) with this checksum */
export interface StreamSegmentFrame { type: 'stream-segment'; id: number; name: string; sha256: string }
/** receiver → daemon: everything up to `flushLsn` is fsynced on the backup host */
export interface StreamFlushedFrame { type: 'stream-flushed'; id: number; timeline: number; flushLsn: string }
/** daemon → receiver: PostgreSQL answered a keepalive just now, its WAL sent up to `serverLsn` (a quiet primary is alive) */
export interface StreamKeepaliveFrame { type: 'stream-keepalive'; id: number; timeline: number; serverLsn: string }

/**
 * daemon → receiver, right after welcome: become the server's one agent daemon; answered by
 * daemon-attached, or refused while another live daemon holds the server. `instance` is the same
 * across the reconnects of one daemon process; `takeover` closes a live one instead.
 */
export interface DaemonAttachFrame { type: 'daemon-attach'; id: number; instance: string; takeover: boolean; host: string; pid: number }
export interface DaemonAttachedFrame { type: 'daemon-attached'; id: number }

/**
 * admin → receiver: change the catalog as its one writer; answered like get, with the result
 * (backup.info or cron report) as a JSON document. `key` is the one serve keeps in barman_home:
 * the server's token alone (which the agent holds too) does not allow a change.
 */
export interface CatalogChangeFrame { type: 'catalog-change'; id: number; action: 'keep' | 'release' | 'delete' | 'cron'; backup: string; key: string }

/** admin → receiver: what the service knows live about the server */
export interface StatusRequestFrame { type: 'status-request'; id: number }
/** receiver → admin: whether an agent daemon is connected, since when (ISO) */
export interface StreamingState {
  /** off | streaming | stale (the daemon is there, its stream said nothing for its timeout) | disconnected (no daemon) */
  state: string;
  timeline: number; receivedLsn: string; flushLsn: string; serverLsn: string; lastFlushAt: string;
  /** ISO times ('' = never): last WAL or keepalive of the stream; last time the receiver had flushed all PostgreSQL had sent */
  lastHeardAt: string; caughtUpAt: string;
}
export interface StatusFrame { type: 'status'; id: number; agentConnected: boolean; agentSince: string; backupRunning: string; streaming: StreamingState }

/**
 * admin → receiver → daemon: what PostgreSQL says now, asked by `check` through the daemon's own
 * connection; with `switchWal` the daemon first forces a WAL switch (CHECKPOINT, pg_switch_wal()),
 * so an idle server archives a segment. Answered by pg-probe (or an error frame).
 */
export interface PgProbeRequestFrame { type: 'pg-probe-request'; id: number; switchWal: boolean }
/** daemon → receiver → admin: PostgreSQL's settings and position; slot fields are '' / false when the daemon does not stream */
export interface PgProbeFrame {
  type: 'pg-probe'; id: number;
  serverVersionNum: number; systemIdentifier: string; inRecovery: boolean;
  walLevel: string; archiveMode: string; archiveCommand: string;
  /** pg_current_wal_lsn() ('' on a standby) */
  currentLsn: string;
  /** the segment the forced switch completed ('' when none was asked or nothing was switched) */
  switchedSegment: string;
  slotName: string; slotExists: boolean; slotActive: boolean; slotRestartLsn: string; slotWalStatus: string;
}

/**
 * admin → receiver: run a restore drill of the server's backup `backup` (ID, latest, oldest), to
 * `targetTime` when not '', and record it; `key` as for catalog-change. Answered like get, with
 * the drill's record as a JSON document, once the drill is over.
 */
export interface DrillRequestFrame { type: 'drill-request'; id: number; backup: string; targetTime: string; key: string }

export type Frame =
  | HelloFrame | ChallengeFrame | AuthFrame | WelcomeFrame | PutFrame | FileFrame | ChunkFrame | EndFrame | GetFrame | AckFrame | ErrorFrame | RefusedFrame | RecheckedFrame
  | BackupBeginFrame | BackupAcceptedFrame | BackupEndFrame | BackupAbortFrame | BackupRequestFrame | BackupStartFrame | BackupStatusFrame
  | BackupTotalFrame | BackupProgressFrame
  | StatusRequestFrame | StatusFrame | GetBackupFileFrame | RestorePlanRequestFrame
  | StreamOpenFrame | StreamPositionFrame | WalDataFrame | StreamFlushedFrame | StreamSegmentFrame
  | StreamKeepaliveFrame | DaemonAttachFrame | DaemonAttachedFrame | CatalogChangeFrame
  | PgProbeRequestFrame | PgProbeFrame | DrillRequestFrame;
export type FrameType = Frame['type'];

// ---- validation -----------------------------------------------------------------------------

type Check = (v: unknown) => boolean;
const str = (max: number): Check => (v) => typeof v === 'string' && v.length <= max;
const uint: Check = (v) => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
const bytes = (max: number): Check => (v) => v instanceof Uint8Array && v.length <= max;
const exact = (n: number): Check => (v) => v instanceof Uint8Array && v.length === n;
const oneOf = (...allowed: string[]): Check => (v) => typeof v === 'string' && allowed.includes(v);
const hex64: Check = (v) => typeof v === 'string' && /^[0-9a-f]{64}$/.test(v);
const int: Check = (v) => typeof v === 'number' && Number.isSafeInteger(v);
const backupId = (v: unknown) => typeof v === 'string' && /^\d{8}T\d{6}$/.test(v);
const lsn = (v: unknown) => typeof v === 'string' && /^[0-9A-F]{1,8}\/[0-9A-F]{1,8}$/.test(v);
const iso = (v: unknown) => typeof v === 'string' && v.length <= 40 && !Number.isNaN(Date.parse(v));
const bool: Check = (v) => typeof v === 'boolean';

/** A map with exactly these keys, each passing its check. */
const record = (fields: Record<string, Check>): Check => (v) => {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return false;
  const t = v as Record<string, unknown>;
  const keys = Object.keys(t);
  return keys.length === Object.keys(fields).length && keys.every((k) => Object.hasOwn(fields, k) && fields[k]!(t[k]));
};
const arrayOf = (check: Check, max: number): Check => (v) => Array.isArray(v) && v.length <= max && v.every(check);
const target: Check = (v) =>
  record({ kind: oneOf('wal'), name: str(64), sha256: hex64 })(v) ||
  record({ kind: oneOf('backup-file'), backupId, path: str(1024), mtime: int })(v);
const backupStart = record({
  startLsn: lsn, timeline: uint, startTime: iso, systemIdentifier: (v) => typeof v === 'string' && /^\d{1,20}$/.test(v),
  pgVersion: uint, segmentSize: uint, pgdata: str(4096), tablespaces: arrayOf(record({ oid: (v) => typeof v === 'string' && /^\d{1,10}$/.test(v), name: str(64), location: str(4096) }), 1000),
});
const RECOVERY_OPTION_KEYS = ['targetTime', 'targetXid', 'targetLsn', 'targetName', 'targetImmediate', 'targetTli', 'targetAction', 'exclusive', 'tablespaces', 'standby'];
const recoveryOptions: Check = (v) => {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return false;
  return Object.entries(v as Record<string, unknown>).every(([k, x]) => {
    if (!RECOVERY_OPTION_KEYS.includes(k)) return false;
    if (x === undefined) return true;
    if (k === 'tablespaces') return x !== null && typeof x === 'object' && !Array.isArray(x) && Object.values(x).every(str(4096));
    return typeof x === 'boolean' || str(200)(x);
  });
};
const streamingState = record({ state: str(32), timeline: uint, receivedLsn: (v) => v === '' || lsn(v), flushLsn: (v) => v === '' || lsn(v), serverLsn: (v) => v === '' || lsn(v), lastFlushAt: str(40), lastHeardAt: str(40), caughtUpAt: str(40) });
const backupStop = record({
  stopLsn: lsn, stopTime: iso, backupLabel: str(65536), tablespaceMap: str(1 << 20), directories: arrayOf(str(1024), 1_000_000),
  symlinks: arrayOf(record({ path: str(1024), target: str(1024) }), 100_000),
});

interface Shape { required: Record<string, Check>; optional?: Record<string, Check> }

const SHAPES: Record<FrameType, Shape> = {
  hello: { required: { protocolVersion: uint, server: str(63), role: oneOf(...ROLES), clientNonce: exact(32), agentVersion: str(64) } },
  challenge: { required: { protocolVersion: uint, serverNonce: exact(32) } },
  auth: { required: { proof: exact(32) } },
  welcome: { required: { sessionId: str(64), proof: exact(32) }, optional: { walCompression: oneOf('zstd') } },
  put: { required: { id: uint, target, size: uint }, optional: { compression: oneOf('zstd') } },
  file: { required: { id: uint, name: str(255), size: uint }, optional: { checksum: oneOf('crc32c'), encoding: oneOf('zstd') } },
  chunk: { required: { id: uint, data: bytes(MAX_CHUNK_DATA) }, optional: { plain: (v) => v === true } },
  end: { required: { id: uint }, optional: { sha256: hex64, crc32c: (v) => typeof v === 'string' && /^[0-9a-f]{8}$/.test(v) } },
  get: { required: { id: uint, name: str(255) }, optional: { accept: oneOf('zstd') } },
  ack: { required: { id: uint, status: oneOf('stored', 'duplicate', 'sent') }, optional: { sha256: hex64 } },
  error: { required: { code: str(64), message: str(4096), hint: str(4096) }, optional: { id: uint } },
  refused: { required: { id: uint, detail: str(REFUSED_DETAIL_MAX) } },
  rechecked: { required: { id: uint, found: oneOf('damaged', 'intact', 'unchecked', 'gone', 'unknown') } },
  'backup-begin': { required: { id: uint, start: backupStart }, optional: { requestId: uint, canCompress: arrayOf(oneOf('zstd'), 4) } },
  'backup-accepted': { required: { id: uint, backupId }, optional: { compression: oneOf('zstd'), checksum: oneOf('sha256') } },
  'backup-end': { required: { id: uint, backupId, stop: backupStop, fileCount: uint } },
  'backup-abort': { required: { id: uint, backupId, reason: str(4096) } },
  'backup-request': { required: { id: uint } },
  'backup-start': { required: { id: uint, wait: (v) => typeof v === 'boolean' } },
  'backup-status': { required: { id: uint, backupId, status: str(32) }, optional: { reason: str(4096) } },
  'backup-total': { required: { backupId, files: uint, bytes: uint } },
  'backup-progress': { required: { id: uint, backupId, files: uint, bytes: uint, elapsedMs: uint }, optional: { totalFiles: uint, totalBytes: uint } },
  'status-request': { required: { id: uint } },
  'stream-open': { required: { id: uint, timeline: uint, systemIdentifier: (v) => typeof v === 'string' && /^\d{1,20}$/.test(v), segmentSize: uint, serverLsn: lsn, switchLsn: (v) => v === '' || lsn(v), parentTimeline: uint }, optional: { timeoutSeconds: uint } },
  'stream-position': { required: { id: uint, timeline: uint, lsn: (v) => v === '' || lsn(v) } },
  'wal-data': { required: { id: uint, timeline: uint, startLsn: lsn, walEnd: lsn, data: bytes(CHUNK_SIZE) } },
  'stream-flushed': { required: { id: uint, timeline: uint, flushLsn: lsn } },
  'stream-segment': { required: { id: uint, name: str(64), sha256: hex64 } },
  'stream-keepalive': { required: { id: uint, timeline: uint, serverLsn: lsn } },
  'daemon-attach': { required: { id: uint, instance: str(64), takeover: (v) => typeof v === 'boolean', host: str(255), pid: uint } },
  'daemon-attached': { required: { id: uint } },
  'get-backup-file': { required: { id: uint, backupId, path: str(1024) }, optional: { accept: oneOf('zstd') } },
  'restore-plan-request': { required: { id: uint, backup: str(32), options: recoveryOptions } },
  'catalog-change': { required: { id: uint, action: oneOf('keep', 'release', 'delete', 'cron'), backup: str(32), key: hex64 } },
  status: { required: { id: uint, agentConnected: (v) => typeof v === 'boolean', agentSince: str(40), backupRunning: str(16), streaming: streamingState } },
  'pg-probe-request': { required: { id: uint, switchWal: bool } },
  'pg-probe': {
    required: {
      id: uint, serverVersionNum: uint, systemIdentifier: (v) => v === '' || (typeof v === 'string' && /^\d{1,20}$/.test(v)), inRecovery: bool,
      walLevel: str(32), archiveMode: str(32), archiveCommand: str(4096), currentLsn: (v) => v === '' || lsn(v), switchedSegment: (v) => v === '' || (typeof v === 'string' && /^[0-9A-F]{24}$/.test(v)),
      slotName: str(64), slotExists: bool, slotActive: bool, slotRestartLsn: (v) => v === '' || lsn(v), slotWalStatus: str(32),
    },
  },
  'drill-request': { required: { id: uint, backup: str(32), targetTime: str(64), key: hex64 } },
};

/** Returns the frame typed, or a reason it is malformed. Unknown keys are malformed too. */
export function validateFrame(value: unknown): Frame | string {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return 'frame is not a map';
  const obj = value as Record<string, unknown>;
  const type = obj.type;
  if (typeof type !== 'string' || !Object.hasOwn(SHAPES, type)) {
    // a peer's type may be a bigint (msgpack uint64) or a cyclic map, which JSON.stringify throws on
    const printable = type === null || ['string', 'number', 'boolean', 'undefined'].includes(typeof type);
    return `unknown frame type ${printable ? String(JSON.stringify(type)).slice(0, 40) : typeof type}`;
  }
  const shape = SHAPES[type as FrameType];
  for (const [key, check] of Object.entries(shape.required)) {
    if (!check(obj[key])) return `${type} frame: field "${key}" is missing or malformed`;
  }
  for (const key of Object.keys(obj)) {
    if (key === 'type' || Object.hasOwn(shape.required, key)) continue;
    const check = shape.optional?.[key];
    if (!check) return `${type} frame: unexpected field "${key.slice(0, 40)}"`;
    if (!check(obj[key])) return `${type} frame: field "${key}" is malformed`;
  }
  return obj as unknown as Frame;
}
