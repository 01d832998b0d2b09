import { describe, expect, it } from 'vitest';
import { Turns } from '../../../shared/turns';

const tick = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('Turns', () => {
  it('runs steps one at a time, in the order asked, a slow one holding back those after it', async () => {
    const turns = new Turns();
    const log: string[] = [];
    const step = (name: string, ms: number) => async () => {
      log.push(`${name} starts`);
      await tick(ms);
      log.push(`${name} ends`);
      return name;
    };
    const results = await Promise.all([turns.run(step('a', 30)), turns.run(step('b', 1)), turns.run(() => 'c')]);
    expect(results).toEqual(['a', 'b', 'c']);
    expect(log).toEqual(['a starts', 'a ends', 'b starts', 'b ends']);
  });

  it('fails only the caller of a failed step; the next one runs', async () => {
    const turns = new Turns();
    const failed = turns.run(async () => {
      await tick(5);
      throw new Error('disk full');
    });
    const next = turns.run(() => 'ran');
    await expect(failed).rejects.toThrow('disk full');
    await expect(next).resolves.toBe('ran');
  });

  it('is idle once every step asked for so far has settled, failed ones too, and never rejects', async () => {
    const turns = new Turns();
    let done = false;
    void turns.run(() => tick(20).then(() => (done = true)));
    turns.run(() => Promise.reject(new Error('refused'))).catch(() => undefined);
    await expect(turns.idle()).resolves.toBeUndefined();
    expect(done).toBe(true);
  });
});
