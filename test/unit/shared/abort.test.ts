import { getEventListeners } from 'node:events';
import { describe, expect, it } from 'vitest';
import { abortable, sleep, whenAborted, within } from '../../../shared/abort';

describe('waits a long-lived AbortSignal can cut short', () => {
  it('leave no listener behind on the signal, however many there were and however they ended', async () => {
    const stop = new AbortController();
    for (let i = 0; i < 50; i++) {
      await sleep(1, stop.signal);
      await abortable(Promise.resolve(i), stop.signal);
      await abortable(Promise.reject(new Error('failed')), stop.signal).catch(() => undefined);
      whenAborted(stop.signal).dispose();
    }
    expect(getEventListeners(stop.signal, 'abort')).toHaveLength(0);
  });

  it('end at once when the signal aborts: sleep resolves, abortable rejects with the reason', async () => {
    const stop = new AbortController();
    const slept = sleep(3_600_000, stop.signal);
    const work = abortable(new Promise(() => undefined), stop.signal);
    const aborted = whenAborted(stop.signal).promise;
    stop.abort('SIGTERM');
    await slept;
    await aborted;
    await expect(work).rejects.toBe('SIGTERM');
    expect(getEventListeners(stop.signal, 'abort')).toHaveLength(0);
    // an aborted signal ends the next wait before it begins
    await sleep(3_600_000, stop.signal);
    await expect(abortable(Promise.resolve(1), stop.signal)).rejects.toBe('SIGTERM');
  });

  it('within: the value when it comes in time, undefined when it does not or fails', async () => {
    expect(await within(Promise.resolve(7), 1000)).toBe(7);
    expect(await within(new Promise(() => undefined), 10)).toBeUndefined();
    expect(await within(Promise.reject(new Error('x')), 1000)).toBeUndefined();
    expect(await within(undefined, 1000)).toBeUndefined();
  });
});
