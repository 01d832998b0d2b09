// eachAtOnce: a few workers over a list, in order; the first failure stops the rest, and is
// thrown only once every item under way has ended.

import { describe, expect, it } from 'vitest';
import { eachAtOnce } from '../../../shared/each-at-once';

const tick = (ms = 1) => new Promise((resolve) => setTimeout(resolve, ms));

describe('eachAtOnce', () => {
  it('runs every item once, in order of starting, at most `width` at a time', async () => {
    const started: number[] = [];
    let open = 0;
    let most = 0;
    await eachAtOnce([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 3, async (i) => {
      started.push(i);
      most = Math.max(most, ++open);
      await tick();
      open--;
    });
    expect(started).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(most).toBe(3);
  });

  it('runs nothing for an empty list', async () => {
    let ran = 0;
    await eachAtOnce([], 4, async () => void ran++);
    expect(ran).toBe(0);
  });

  it('starts nothing after the first failure, and throws it once the items under way have ended', async () => {
    const started: number[] = [];
    const ended: number[] = [];
    const failure = await eachAtOnce([0, 1, 2, 3, 4, 5, 6, 7], 3, async (i) => {
      started.push(i);
      await tick(i === 1 ? 1 : 10);
      if (i === 1) throw new Error('item 1 failed');
      ended.push(i);
    }).then(() => undefined, (err: unknown) => err);
    expect((failure as Error).message).toBe('item 1 failed');
    // 0 and 2 were under way when 1 failed: both ended before the failure came out; 3 on never started
    expect(started).toEqual([0, 1, 2]);
    expect(ended.sort()).toEqual([0, 2]);
  });
});
