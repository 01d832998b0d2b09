import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { asBarmanError, BarmanError, ErrorCode, ExitCode } from '../../../shared/errors';

/**
 * The codes as released, in order. Scripts switch on them: this list only ever grows at its end.
 * A new code is appended to ErrorCode (and may be appended here); it never takes an old one's
 * place or name.
 */
const FROZEN_CODES = [
  'CONFIG_INVALID', 'USAGE', 'AUTH_FAILED', 'UNKNOWN_SERVER', 'PROTOCOL', 'FRAME_TOO_LARGE', 'RECEIVER_UNREACHABLE',
  'CONNECTION_LOST', 'TIMEOUT', 'INVALID_NAME', 'WAL_INVALID', 'WAL_FOREIGN', 'WAL_CONFLICT', 'WAL_NOT_FOUND',
  'CHECKSUM_MISMATCH', 'STORAGE', 'LOCAL_FILE', 'BACKUP_NOT_FOUND', 'BACKUP_FAILED', 'BACKUP_IN_PROGRESS',
  'AGENT_NOT_CONNECTED', 'RECOVERY_TARGET', 'DESTINATION', 'RETENTION', 'POSTGRES', 'INTERNAL', 'CLOCK_SKEW',
  'TOO_MANY_SESSIONS', 'TOO_MANY_UPLOADS', 'DAEMON_ALREADY_CONNECTED', 'CATALOG_LOCKED',
  'PG_VERSION_UNSUPPORTED', 'PG_VERSION_MISMATCH', 'STORAGE_NOT_FOUND', 'STORAGE_PERMISSION', 'STORAGE_CREDENTIALS',
  'STORAGE_BUCKET_MISSING', 'STORAGE_UNREACHABLE', 'STORAGE_NO_SPACE', 'STORAGE_CORRUPT', 'LEASE_HELD', 'LEASE_LOST', 'DRILL_FAILED',
];

/** The `## \`CODE\`` headings of docs/errors.md, in order. */
function documentedCodes(): string[] {
  const text = readFileSync(join(import.meta.dirname, '../../../docs/errors.md'), 'utf8');
  return [...text.matchAll(/^## `([A-Z][A-Z0-9_]*)`$/gm)].map((m) => m[1]!);
}

describe('error codes', () => {
  const codes = Object.keys(ErrorCode);

  it('start with every released code, in the released order: new codes only at the end', () => {
    expect(codes.slice(0, FROZEN_CODES.length)).toEqual(FROZEN_CODES);
  });

  it('are their own names (the value printed and sent is the key)', () => {
    for (const [key, value] of Object.entries(ErrorCode)) expect(value).toBe(key);
  });

  it('are each described in docs/errors.md, in the same order', () => {
    const documented = documentedCodes();
    const missing = codes.filter((c) => !documented.includes(c));
    expect(missing, `describe these codes in docs/errors.md (## \`CODE\`, meaning, typical HINT)`).toEqual([]);
    expect(documented).toEqual(codes);
  });
});

describe('BarmanError', () => {
  it('exits 2 for usage and configuration errors, 1 for everything else', () => {
    expect(new BarmanError(ErrorCode.CONFIG_INVALID, 'm', 'h').exitCode).toBe(ExitCode.USAGE);
    expect(new BarmanError(ErrorCode.USAGE, 'm', 'h').exitCode).toBe(ExitCode.USAGE);
    for (const code of [ErrorCode.AUTH_FAILED, ErrorCode.UNKNOWN_SERVER, ErrorCode.WAL_CONFLICT, ErrorCode.PROTOCOL, ErrorCode.INTERNAL]) {
      expect(new BarmanError(code, 'm', 'h').exitCode).toBe(ExitCode.FAILED);
    }
    expect(new BarmanError(ErrorCode.INVALID_NAME, 'm', 'h', { exitCode: 2 }).exitCode).toBe(2);
  });

  it('shows the user one line of what failed and one HINT line', () => {
    const e = new BarmanError(ErrorCode.WAL_NOT_FOUND, '000000010000000000000009 is not archived', 'Check the archiver.');
    expect(e.toUserText()).toBe('ERROR [WAL_NOT_FOUND]: 000000010000000000000009 is not archived\nHINT: Check the archiver.');
    expect(e.toUserText('FATAL')).toMatch(/^FATAL \[WAL_NOT_FOUND\]: /);
  });

  it('keeps its cause', () => {
    const cause = new Error('root');
    expect(new BarmanError(ErrorCode.STORAGE, 'm', 'h', { cause }).cause).toBe(cause);
  });
});

describe('asBarmanError', () => {
  it('keeps a BarmanError as it is', () => {
    const e = new BarmanError(ErrorCode.TIMEOUT, 'm', 'h');
    expect(asBarmanError(e)).toBe(e);
  });

  it('turns ENOSPC into a storage error that says what to free', () => {
    const err = Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', path: '/srv/barman/main/incoming/x' });
    const e = asBarmanError(err);
    expect(e.code).toBe(ErrorCode.STORAGE);
    expect(e.message).toBe('no space left on device writing /srv/barman/main/incoming/x');
    expect(e.hint).toMatch(/Free disk space/);
    expect(e.cause).toBe(err);
  });

  it('wraps anything else as INTERNAL with a hint', () => {
    const fromError = asBarmanError(new TypeError('boom'));
    expect(fromError.code).toBe(ErrorCode.INTERNAL);
    expect(fromError.message).toBe('boom');
    expect(fromError.exitCode).toBe(1);
    expect(asBarmanError('a string').message).toBe('a string');
    expect(asBarmanError(undefined).message).toBe('undefined');
    expect(asBarmanError(new Error('x'), 'custom hint').hint).toBe('custom hint');
  });
});
