// `check` output on both sides: one line per check, `name: OK` or `name: FAILED (why)`.

export interface CheckResult {
  name: string;
  ok: boolean;
  detail?: string;
  /** what to do when it failed */
  hint?: string;
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
