// Everything a test starts (clusters, receivers, temp folders) is tracked here and disposed of,
// newest first, when its scope ends, pass or fail: resources made while a test runs (the test or
// its beforeEach) go at the end of that test, the others (beforeAll) at the end of the file.
// setup.ts wires the scopes into vitest's hooks. Processes are always stopped; with KEEP_TMP=1
// folders stay and their paths are printed. If the worker exits before the hooks run, exit
// handlers still signal every tracked process (by pid, synchronously).

import { KEEP_TMP } from './keep';

export interface Resource {
  what: string;
  dispose: () => Promise<void> | void;
  /** last-resort synchronous kill for process exit */
  killNow?: () => void;
  /** a folder to name when KEEP_TMP=1 keeps it */
  keptPath?: string;
}

const fileScope: Resource[] = [];
let testScope: Resource[] | undefined;

export function track(resource: Resource): Resource {
  (testScope ?? fileScope).push(resource);
  return resource;
}

/** Forget a resource that was disposed of early (a receiver stopped by the test itself, say). */
export function untrack(resource: Resource): void {
  for (const list of [testScope, fileScope]) {
    const i = list?.indexOf(resource) ?? -1;
    if (i >= 0) list!.splice(i, 1);
  }
}

async function disposeAll(list: Resource[]): Promise<void> {
  const errors: unknown[] = [];
  while (list.length > 0) {
    const r = list.pop()!;
    try {
      if (KEEP_TMP && r.keptPath) console.log(`KEEP_TMP=1: kept ${r.what}`);
      else await r.dispose();
    } catch (err) {
      errors.push(new Error(`disposing ${r.what} failed: ${(err as Error).message}`, { cause: err }));
    }
  }
  if (errors.length === 1) throw errors[0];
  if (errors.length > 1) throw new AggregateError(errors, 'teardown failed');
}

export function beginTestScope(): void {
  testScope = [];
}

export async function endTestScope(): Promise<void> {
  const list = testScope ?? [];
  testScope = undefined;
  await disposeAll(list);
}

export async function endFileScope(): Promise<void> {
  await disposeAll(fileScope);
}

function killEverythingNow(): void {
  for (const r of [...(testScope ?? []), ...fileScope]) {
    try {
      r.killNow?.();
    } catch {
      // already gone
    }
  }
}

process.once('exit', killEverythingNow);
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    killEverythingNow();
    process.kill(process.pid, signal);
  });
}
