// What every command's outcome is checked against (SPEC §6): exit code, and on failure one line
// saying what failed and a HINT line saying what to do.

import { expect } from 'vitest';
import { describeRun, type RunResult } from './run';

export function expectSuccess(r: RunResult): void {
  expect(r.code, describeRun(r)).toBe(0);
}

/** Exit `exitCode` (1 operation failed, 2 usage/configuration), `message` on stderr, and a HINT line. */
export function expectFailure(r: RunResult, exitCode: 1 | 2, message: RegExp): void {
  expect(r.code, describeRun(r)).toBe(exitCode);
  expect(r.stderr, describeRun(r)).toMatch(message);
  expect(r.stderr, describeRun(r)).toMatch(/^HINT: \S.*$/m);
}
