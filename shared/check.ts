// `check` output on both sides: one line per check, `name: OK` or `name: FAILED (why)`.

export interface CheckResult {
  name: string;
  ok: boolean;
  detail?: string;
  /** what to do when it failed */
  hint?: string;
  /** a failure that is a warning (Nagios WARNING), not critical; critical when absent */
  severity?: 'warning';
}

export function formatChecks(title: string, results: CheckResult[]): string {
  const lines = [title];
  for (const r of results) lines.push(`\t${r.name}: ${r.ok ? 'OK' : 'FAILED'}${r.detail ? ` (${r.detail})` : ''}`);
  const hints = results.filter((r) => !r.ok && r.hint).map((r) => `HINT: ${r.name}: ${r.hint}`);
  return [...lines, ...hints].join('\n') + '\n';
}

export async function runCheck(name: string, fn: () => Promise<string | undefined>, hint: string): Promise<CheckResult> {
  try {
    const detail = await fn();
    return { name, ok: true, ...(detail ? { detail } : {}) };
  } catch (err) {
    const e = err as { message?: string; hint?: string };
    return { name, ok: false, detail: e.message ?? String(err), hint: e.hint ?? hint };
  }
}

/**
 * The Nagios plugin form of a server's checks: one line, `BARMAN OK - ...`, `BARMAN WARNING - ...`
 * (only warnings failed) or `BARMAN CRITICAL - ...`, naming the failed checks, and the plugin exit
 * code 0, 1 or 2.
 */
export function formatNagios(server: string, results: CheckResult[]): { line: string; exitCode: 0 | 1 | 2 } {
  const failed = results.filter((r) => !r.ok);
  if (failed.length === 0) return { line: `BARMAN OK - server ${server}: ${results.length} checks passed\n`, exitCode: 0 };
  const critical = failed.filter((r) => r.severity !== 'warning');
  const state = critical.length ? 'CRITICAL' : 'WARNING';
  const named = [...critical, ...failed.filter((r) => r.severity === 'warning')].map((r) => r.name).join(', ');
  const first = (critical[0] ?? failed[0])!;
  const why = (first.detail ?? '').replace(/[|\n]/g, ' ').slice(0, 200);
  return { line: `BARMAN ${state} - server ${server}: ${failed.length} of ${results.length} checks failed: ${named} (${first.name}: ${why})\n`, exitCode: critical.length ? 2 : 1 };
}
