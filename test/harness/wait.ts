// Polling with a bounded deadline. Tests wait for a state (a segment archived, a port open),
// never for a fixed time; how long it took is never asserted.

export interface WaitOptions {
  /** give up after this long; default 60 s */
  timeoutMs?: number;
  /** pause between polls; default 100 ms */
  intervalMs?: number;
}

/**
 * Calls `probe` until it returns something other than undefined/false, and returns that.
 * On timeout throws, naming `what` and the last value or error the probe produced.
 */
export async function waitFor<T>(what: string, probe: () => Promise<T | undefined | false> | T | undefined | false, options: WaitOptions = {}): Promise<T> {
  const timeoutMs = options.timeoutMs ?? 60_000;
  const intervalMs = options.intervalMs ?? 100;
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined && value !== false) return value;
      last = value;
    } catch (err) {
      last = err;
    }
    if (Date.now() >= deadline) {
      const detail = last instanceof Error ? last.message : JSON.stringify(last);
      throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what} (last: ${detail})`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
