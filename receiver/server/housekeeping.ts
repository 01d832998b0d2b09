// What `serve` does on its own every housekeeping_interval: for each server, what `cron` does
// (promote, retention, WAL no backup needs, stale temporary files; receiver/catalog/maintenance.ts,
// through ServerContext.housekeep, as the catalog's writer), then the restore drills that
// drill_schedule says are due, one server after the other.

import type { Logger } from 'pino';
import type { DrillSchedule } from '../../shared/config/operations';
import type { ServerContext } from './context';

const SCHEDULE_SECONDS: Record<DrillSchedule, number> = { daily: 86_400, weekly: 7 * 86_400 };

/**
 * Is a scheduled drill due? Never without a schedule or a DONE backup to drill; else when none
 * was ever run, or the last one started a schedule period ago or more.
 */
export function drillDue(schedule: DrillSchedule | undefined, lastDrillAt: Date | undefined, hasDoneBackup: boolean, now: Date): boolean {
  if (!schedule || !hasDoneBackup) return false;
  if (!lastDrillAt || Number.isNaN(lastDrillAt.getTime())) return true;
  return now.getTime() - lastDrillAt.getTime() >= SCHEDULE_SECONDS[schedule] * 1000;
}

export class Housekeeping {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;

  constructor(private readonly contexts: ServerContext[], private readonly intervalMs: number, private readonly log: Logger) {}

  start(): void {
    this.timer = setInterval(() => {
      // a round still running (a long drill) is not overtaken: the next tick after it runs
      if (!this.running) this.running = this.round().finally(() => (this.running = undefined));
    }, this.intervalMs);
    this.timer.unref();
  }

  /** No new round; waits for the one running (its drill is stopped by the service). */
  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.running;
  }

  private async round(): Promise<void> {
    for (const ctx of this.contexts) {
      const log = this.log.child({ server: ctx.config.name, component: 'housekeeping' });
      try {
        const r = await ctx.housekeep();
        const did = r.promoted.length + r.removedBackups.length + r.removedWals + r.removedTemp + r.checksumsRecorded;
        log[did ? 'info' : 'debug']({ promoted: r.promoted, removedBackups: r.removedBackups, removedWals: r.removedWals, removedTemp: r.removedTemp, checksumsRecorded: r.checksumsRecorded, notes: r.notes }, 'housekeeping done');
      } catch (err) {
        log.error({ err: String(err) }, 'housekeeping failed; it runs again at the next interval');
      }
    }
    for (const ctx of this.contexts) {
      const log = this.log.child({ server: ctx.config.name, component: 'drill' });
      try {
        const last = (await ctx.catalog.drills()).pop();
        const hasDone = (await ctx.backups.list()).some((b) => b.status === 'DONE');
        if (ctx.drillRunning || !drillDue(ctx.config.drillSchedule, last && new Date(last.at), hasDone, new Date())) continue;
        log.info({ schedule: ctx.config.drillSchedule }, 'scheduled restore drill starting');
        const record = await ctx.drill({});
        log[record.passed ? 'info' : 'error']({ backup: record.backupId, passed: record.passed, rtoSeconds: record.rtoSeconds, error: record.error ?? undefined }, record.passed ? 'scheduled restore drill passed' : 'scheduled restore drill FAILED');
      } catch (err) {
        log.error({ err: String(err) }, 'scheduled restore drill could not run');
      }
    }
  }
}
