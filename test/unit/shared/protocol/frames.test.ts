import { describe, expect, it } from 'vitest';
import { CHUNK_SIZE, MAX_CHUNK_DATA, MAX_FRAME_BYTES, ROLES, validateFrame } from '../../../../shared/protocol/frames';
import { FRAME_TYPES, OPTIONAL_FIELDS, SHA, VALID_FRAMES } from './sample-frames';

/** A value of another JS type than `v`, the way a confused or hostile peer would send it. */
function wrongType(v: unknown): unknown {
  if (typeof v === 'string') return 42;
  if (typeof v === 'number') return String(v);
  if (v instanceof Uint8Array) return Array.from(v);
  return 'not-an-object';
}

const fieldsOf = (type: (typeof FRAME_TYPES)[number]) => Object.keys(VALID_FRAMES[type]).filter((k) => k !== 'type');

describe('validateFrame', () => {
  it.each(FRAME_TYPES)('accepts a well-formed %s frame as it is', (type) => {
    const frame = VALID_FRAMES[type];
    expect(validateFrame({ ...frame })).toEqual(frame);
  });

  it('accepts an error frame without an id (a session-level error)', () => {
    const { id: _id, ...noId } = VALID_FRAMES.error;
    expect(validateFrame(noId)).toEqual(noId);
  });

  it.each(Object.entries(OPTIONAL_FIELDS).flatMap(([type, fields]) => fields!.map((f) => [type, f] as const)))('accepts a %s frame without its optional "%s"', (type, field) => {
    const { [field]: _dropped, ...rest } = VALID_FRAMES[type as keyof typeof VALID_FRAMES] as unknown as Record<string, unknown>;
    expect(validateFrame(rest)).toEqual(rest);
  });

  it('accepts a put of one file of a backup in progress', () => {
    const put = { ...VALID_FRAMES.put, target: { kind: 'backup-file', backupId: '20261125T100000', path: 'base/1/1259', mtime: 1_764_064_800 } };
    expect(validateFrame(put)).toEqual(put);
  });

  it.each(ROLES)('accepts role %s in hello', (role) => {
    expect(validateFrame({ ...VALID_FRAMES.hello, role })).not.toBeTypeOf('string');
  });

  it.each(['stored', 'duplicate', 'sent'])('accepts ack status %s', (status) => {
    expect(validateFrame({ ...VALID_FRAMES.ack, status })).not.toBeTypeOf('string');
  });

  it.each([null, undefined, 42, 'hello', [], [{ type: 'auth' }], true])('refuses a non-map %j', (value) => {
    expect(validateFrame(value)).toBe('frame is not a map');
  });

  it.each([
    [{}, 'unknown frame type undefined'],
    [{ type: 'nope' }, 'unknown frame type "nope"'],
    [{ type: 'HELLO' }, 'unknown frame type "HELLO"'],
    [{ type: 7 }, 'unknown frame type 7'],
    [{ type: 'constructor' }, 'unknown frame type "constructor"'],
    [{ type: '__proto__' }, 'unknown frame type "__proto__"'],
    [{ type: 'toString' }, 'unknown frame type "toString"'],
  ])('refuses an unknown type: %j', (value, reason) => {
    expect(validateFrame(value)).toBe(reason);
  });

  it('cuts a long unknown type short in its reason', () => {
    const reason = validateFrame({ type: 'x'.repeat(10_000) });
    expect(reason).toBeTypeOf('string');
    expect((reason as string).length).toBeLessThan(80);
  });

  it('describes a type that JSON cannot print without throwing (a bigint, as msgpack decodes a uint64)', () => {
    expect(validateFrame({ type: 2n ** 64n - 1n })).toMatch(/^unknown frame type/);
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    expect(validateFrame({ type: cyclic })).toMatch(/^unknown frame type/);
  });

  describe.each(FRAME_TYPES)('%s frame', (type) => {
    const valid = VALID_FRAMES[type] as unknown as Record<string, unknown>;

    it.each(fieldsOf(type).filter((f) => !OPTIONAL_FIELDS[type]?.includes(f)))('refuses it without "%s"', (field) => {
      const { [field]: _dropped, ...rest } = valid;
      expect(validateFrame(rest)).toBe(`${type} frame: field "${field}" is missing or malformed`);
    });

    it.each(fieldsOf(type))('refuses "%s" of the wrong type', (field) => {
      const result = validateFrame({ ...valid, [field]: wrongType(valid[field]) });
      expect(result).toBeTypeOf('string');
      expect(result).toContain(`field "${field}"`);
    });

    it('refuses an extra field', () => {
      expect(validateFrame({ ...valid, extra: 1 })).toBe(`${type} frame: unexpected field "extra"`);
    });
  });

  it('refuses an id on frames that never carry one', () => {
    expect(validateFrame({ ...VALID_FRAMES.auth, id: 1 })).toBe('auth frame: unexpected field "id"');
    expect(validateFrame({ ...VALID_FRAMES['backup-total'], id: 1 })).toBe('backup-total frame: unexpected field "id"');
  });

  it('cuts a long unexpected field name short', () => {
    const reason = validateFrame({ ...VALID_FRAMES.auth, ['k'.repeat(5000)]: 1 }) as string;
    expect(reason.length).toBeLessThan(100);
  });

  it.each([
    ['negative id', { ...VALID_FRAMES.end, id: -1 }, 'id'],
    ['fractional id', { ...VALID_FRAMES.end, id: 1.5 }, 'id'],
    ['unsafe id', { ...VALID_FRAMES.end, id: 2 ** 53 }, 'id'],
    ['NaN size', { ...VALID_FRAMES.file, size: Number.NaN }, 'size'],
    ['bigint size', { ...VALID_FRAMES.file, size: 8192n }, 'size'],
    ['error id as string', { ...VALID_FRAMES.error, id: '7' }, 'id'],
    ['31-byte nonce', { ...VALID_FRAMES.hello, clientNonce: new Uint8Array(31) }, 'clientNonce'],
    ['33-byte proof', { ...VALID_FRAMES.auth, proof: new Uint8Array(33) }, 'proof'],
    ['unknown role', { ...VALID_FRAMES.hello, role: 'root' }, 'role'],
    ['server name of 64 chars', { ...VALID_FRAMES.hello, server: 's'.repeat(64) }, 'server'],
    ['upper-case sha256', { ...VALID_FRAMES.end, sha256: SHA.toUpperCase() }, 'sha256'],
    ['short sha256', { ...VALID_FRAMES.end, sha256: SHA.slice(2) }, 'sha256'],
    ['unknown ack status', { ...VALID_FRAMES.ack, status: 'ok' }, 'status'],
    ['chunk larger than MAX_CHUNK_DATA', { ...VALID_FRAMES.chunk, data: new Uint8Array(MAX_CHUNK_DATA + 1) }, 'data'],
    ['put compressed with something else than zstd', { ...VALID_FRAMES.put, compression: 'gzip' }, 'compression'],
    ['welcome announcing a WAL compression other than zstd', { ...VALID_FRAMES.welcome, walCompression: 'lz4' }, 'walCompression'],
    ['put target of another kind', { ...VALID_FRAMES.put, target: { kind: 'backup', name: 'x' } }, 'target'],
    ['put target with an extra key', { ...VALID_FRAMES.put, target: { kind: 'wal', name: 'x', sha256: SHA, path: '/etc' } }, 'target'],
    ['put target without a name', { ...VALID_FRAMES.put, target: { kind: 'wal', other: 'x', sha256: SHA } }, 'target'],
    ['WAL put target without its checksum', { ...VALID_FRAMES.put, target: { kind: 'wal', name: '000000010000000000000001' } }, 'target'],
    ['WAL put target with an upper-case checksum', { ...VALID_FRAMES.put, target: { kind: 'wal', name: '000000010000000000000001', sha256: SHA.toUpperCase() } }, 'target'],
    ['put target as an array', { ...VALID_FRAMES.put, target: ['wal', 'x'] }, 'target'],
    ['put target name of 65 chars', { ...VALID_FRAMES.put, target: { kind: 'wal', name: 'n'.repeat(65), sha256: SHA } }, 'target'],
    ['error message over 4096 chars', { ...VALID_FRAMES.error, message: 'm'.repeat(4097) }, 'message'],
    ['refused detail over 1024 chars', { ...VALID_FRAMES.refused, detail: 'd'.repeat(1025) }, 'detail'],
    ['rechecked with a finding of its own', { ...VALID_FRAMES.rechecked, found: 'fine' }, 'found'],
    ['backup file target with a fractional mtime', { ...VALID_FRAMES.put, target: { kind: 'backup-file', backupId: '20261125T100000', path: 'PG_VERSION', mtime: 1.5 } }, 'target'],
    ['backup file target with a malformed backup ID', { ...VALID_FRAMES.put, target: { kind: 'backup-file', backupId: '../20261125', path: 'PG_VERSION', mtime: 1 } }, 'target'],
    ['backup ID that is not YYYYMMDDTHHMMSS', { ...VALID_FRAMES['backup-accepted'], backupId: '2026-11-25T10:00:00' }, 'backupId'],
    ['backup start with a lower-case LSN', { ...VALID_FRAMES['backup-begin'], start: { ...VALID_FRAMES['backup-begin'].start, startLsn: '0/200002a' } }, 'start'],
    ['backup start with a numeric system identifier', { ...VALID_FRAMES['backup-begin'], start: { ...VALID_FRAMES['backup-begin'].start, systemIdentifier: 7712075971341596000 } }, 'start'],
    ['backup start with an unparsable time', { ...VALID_FRAMES['backup-begin'], start: { ...VALID_FRAMES['backup-begin'].start, startTime: 'yesterday' } }, 'start'],
    ['backup start with an extra key', { ...VALID_FRAMES['backup-begin'], start: { ...VALID_FRAMES['backup-begin'].start, label: 'x' } }, 'start'],
    ['backup start with a malformed tablespace', { ...VALID_FRAMES['backup-begin'], start: { ...VALID_FRAMES['backup-begin'].start, tablespaces: [{ oid: 'x', name: 'ts1', location: '/srv' }] } }, 'start'],
    ['backup stop without the tablespace map', { ...VALID_FRAMES['backup-end'], stop: { stopLsn: '0/2000100', stopTime: '2026-11-25T10:00:05Z', backupLabel: '', directories: [] } }, 'stop'],
    ['backup-start whose wait is not a boolean', { ...VALID_FRAMES['backup-start'], wait: 1 }, 'wait'],
    ['backup progress with negative bytes', { ...VALID_FRAMES['backup-progress'], bytes: -1 }, 'bytes'],
    ['backup progress with a fractional elapsed time', { ...VALID_FRAMES['backup-progress'], elapsedMs: 2.5 }, 'elapsedMs'],
    ['backup progress with an unsafe file count', { ...VALID_FRAMES['backup-progress'], files: 2 ** 53 }, 'files'],
    ['backup progress whose total is a string', { ...VALID_FRAMES['backup-progress'], totalBytes: '23456789' }, 'totalBytes'],
    ['backup progress for a malformed backup ID', { ...VALID_FRAMES['backup-progress'], backupId: '../x' }, 'backupId'],
    ['backup total with a NaN byte count', { ...VALID_FRAMES['backup-total'], bytes: Number.NaN }, 'bytes'],
    ['restore plan with an unknown option', { ...VALID_FRAMES['restore-plan-request'], options: { targetTme: '2026-11-25' } }, 'options'],
    ['restore plan with a numeric option', { ...VALID_FRAMES['restore-plan-request'], options: { targetXid: 1234 } }, 'options'],
    ['restore plan whose options are an array', { ...VALID_FRAMES['restore-plan-request'], options: ['targetImmediate'] }, 'options'],
  ])('refuses a %s', (_what, value, field) => {
    expect(validateFrame(value)).toMatch(new RegExp(`field "${field}" is (missing or )?malformed$`));
  });

  it('accepts a chunk of exactly CHUNK_SIZE bytes and keeps the frame limit above it', () => {
    expect(validateFrame({ ...VALID_FRAMES.chunk, data: new Uint8Array(CHUNK_SIZE) })).not.toBeTypeOf('string');
    // a compressed frame of CHUNK_SIZE plain bytes that did not compress is a little longer
    expect(validateFrame({ ...VALID_FRAMES.chunk, data: new Uint8Array(MAX_CHUNK_DATA) })).not.toBeTypeOf('string');
    expect(MAX_CHUNK_DATA).toBeGreaterThan(CHUNK_SIZE + (CHUNK_SIZE >> 8) + 64);
    expect(MAX_FRAME_BYTES).toBeGreaterThan(MAX_CHUNK_DATA + 64);
    expect(validateFrame({ ...VALID_FRAMES.put, compression: 'zstd' })).not.toBeTypeOf('string');
    expect(validateFrame({ ...VALID_FRAMES.welcome, walCompression: 'zstd' })).not.toBeTypeOf('string');
    expect(MAX_FRAME_BYTES).toBeGreaterThan(CHUNK_SIZE + 64);
  });
});
