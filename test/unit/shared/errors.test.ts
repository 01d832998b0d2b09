import { describe, expect, it } from 'vitest';
import { asBarmanError, BarmanError, ErrorCode, ExitCode } from '../../../shared/errors';

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
    expect(e.toUserText()).toBe('ERROR: 000000010000000000000009 is not archived\nHINT: Check the archiver.');
    expect(e.toUserText('FATAL')).toMatch(/^FATAL: /);
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
