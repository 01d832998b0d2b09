// Bounded parallelism over a list: a few workers take the items in order.

/**
 * Runs `work` on each item, in order, `width` at a time. The first failure stops the rest (no
 * item is started after it), and every item under way has ended before it is thrown: the
 * clean-up that follows never runs beside a write (Promise.all would reject at once).
 */
export async function eachAtOnce<T>(items: readonly T[], width: number, work: (item: T) => Promise<void>): Promise<void> {
  let failure: { err: unknown } | undefined;
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(width, items.length) }, async () => {
    try {
      while (!failure && next < items.length) await work(items[next++]!);
    } catch (err) {
      failure ??= { err };
    }
  }));
  if (failure) throw failure.err;
}
