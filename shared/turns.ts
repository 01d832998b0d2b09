// One at a time: steps run in the order they were asked for, each once the one before has
// settled (fulfilled or failed). A step's failure is its own caller's; the next step runs anyway.

export class Turns {
  private last: Promise<unknown> = Promise.resolve();

  /** Runs `step` after every step asked for before it; resolves or rejects as `step` does. */
  run<T>(step: () => T | Promise<T>): Promise<T> {
    const run = this.last.then(step);
    this.last = run.catch(() => undefined);
    return run;
  }

  /** Settles once every step asked for so far has (never rejects). */
  idle(): Promise<void> {
    return this.last.then(() => undefined);
  }
}
