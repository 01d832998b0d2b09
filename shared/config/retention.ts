// Retention policies as Barman spells them: `REDUNDANCY N` or `RECOVERY WINDOW OF N DAYS|WEEKS|MONTHS`.

export type RetentionPolicy =
  | { kind: 'redundancy'; count: number }
  | { kind: 'window'; amount: number; unit: 'days' | 'weeks' | 'months' };

export function parseRetentionPolicy(text: string): RetentionPolicy | undefined {
  const t = text.trim().toUpperCase().replace(/\s+/g, ' ');
  let m = /^REDUNDANCY (\d+)$/.exec(t);
  if (m) {
    const count = Number(m[1]);
    return count >= 1 ? { kind: 'redundancy', count } : undefined;
  }
  m = /^RECOVERY WINDOW OF (\d+) (DAY|DAYS|WEEK|WEEKS|MONTH|MONTHS)$/.exec(t);
  if (m) {
    const amount = Number(m[1]);
    const unit = m[2]!.startsWith('DAY') ? 'days' : m[2]!.startsWith('WEEK') ? 'weeks' : 'months';
    return amount >= 1 ? { kind: 'window', amount, unit } : undefined;
  }
  return undefined;
}

export function formatRetentionPolicy(p: RetentionPolicy): string {
  return p.kind === 'redundancy' ? `REDUNDANCY ${p.count}` : `RECOVERY WINDOW OF ${p.amount} ${p.unit.toUpperCase()}`;
}
