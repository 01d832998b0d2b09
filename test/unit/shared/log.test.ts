import { describe, expect, it } from 'vitest';
import { createLogger } from '../../../shared/log';

function capture(): { lines: () => Array<Record<string, unknown>>; write: (s: string) => void } {
  const out: string[] = [];
  return { write: (s: string) => void out.push(s), lines: () => out.join('').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>) };
}

describe('createLogger', () => {
  it('stamps every line with an ISO 8601 time (UTC), not epoch milliseconds', () => {
    const sink = capture();
    const before = Date.now();
    createLogger('info', 'barman-receiver', sink).child({ server: 'main' }).info({ wal: '000000010000000000000001' }, 'WAL archived');
    const [line] = sink.lines();
    expect(line!.time).toMatch(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);
    expect(Date.parse(line!.time as string)).toBeGreaterThanOrEqual(before - 1000);
    expect(line).toMatchObject({ name: 'barman-receiver', server: 'main', wal: '000000010000000000000001', msg: 'WAL archived' });
  });

  it('never writes a token', () => {
    const sink = capture();
    createLogger('info', 'barman-agent', sink).info({ token: 'secret-token', config: { token: 'secret-token' } }, 'connected');
    expect(JSON.stringify(sink.lines())).not.toContain('secret-token');
  });
});
