// Temporary configuration and token files for the config tests: real files in a private temp
// directory, removed after the file's tests.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect } from 'vitest';
import { BarmanError, ErrorCode } from '../../../../shared/errors';

export function tempFiles() {
  const dir = mkdtempSync(join(tmpdir(), 'barman-unit-config-'));
  let n = 0;
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  return {
    dir,
    /** Writes `text` to a fresh file and returns its path. */
    write(text: string, name = `file-${++n}`): string {
      const path = join(dir, name);
      writeFileSync(path, text, { mode: 0o600 });
      return path;
    },
  };
}

/** Runs `load` expecting a configuration error; returns it for further checks. */
export function configErrorOf(load: () => unknown): BarmanError {
  try {
    load();
  } catch (err) {
    expect(err).toBeInstanceOf(BarmanError);
    const e = err as BarmanError;
    expect(e.code).toBe(ErrorCode.CONFIG_INVALID);
    expect(e.exitCode).toBe(2);
    expect(e.hint.length).toBeGreaterThan(0);
    return e;
  }
  throw new Error('the configuration was accepted');
}
