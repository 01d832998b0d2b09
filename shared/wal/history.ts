// Timeline history files (<tli>.history): one line per ancestor timeline,
// `<parent tli>\t<switch LSN>\t<reason>`. The only parser of them. It refuses what PostgreSQL's
// own reader (readTimeLineHistory) refuses, and LSNs that go backwards: a file PostgreSQL could
// not read would stop every recovery that asks for it.

import { type Lsn, parseLsn } from './lsn';

export interface TimelineSwitch {
  /** the ancestor timeline */
  timeline: number;
  /** where the history left it (the first LSN of the next timeline) */
  switchLsn: Lsn;
}

/**
 * Parses a history file. Blank lines and `#` comments are skipped; every other line needs a
 * timeline ID and a switch LSN, timeline IDs ascend, LSNs never go backwards and, given the
 * file's own timeline (`ownTimeline`), every ancestor is below it. Throws a RangeError naming the line.
 */
export function parseHistory(text: string, ownTimeline?: number): TimelineSwitch[] {
  const out: TimelineSwitch[] = [];
  let lineNo = 0;
  for (const raw of text.split('\n')) {
    lineNo++;
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const where = `line ${lineNo} ("${line.slice(0, 80)}")`;
    const [tli, lsn] = line.split(/\s+/);
    if (!tli || !/^\d{1,10}$/.test(tli) || Number(tli) < 1 || Number(tli) > 0xffffffff) throw new RangeError(`bad history line ${lineNo}: expected a timeline ID, got "${line.slice(0, 80)}"`);
    let switchLsn: Lsn;
    try {
      switchLsn = parseLsn(lsn ?? '');
    } catch {
      throw new RangeError(`bad history line ${lineNo}: expected a switch LSN after the timeline ID, got "${line.slice(0, 80)}"`);
    }
    const prev = out[out.length - 1];
    const timeline = Number(tli);
    if (prev && timeline <= prev.timeline) throw new RangeError(`bad history ${where}: timeline IDs must ascend (${timeline} after ${prev.timeline})`);
    if (prev && switchLsn < prev.switchLsn) throw new RangeError(`bad history ${where}: switch LSNs must not go backwards`);
    if (ownTimeline !== undefined && timeline >= ownTimeline) throw new RangeError(`bad history ${where}: ancestor timeline ${timeline} is not below the file's own timeline ${ownTimeline}`);
    out.push({ timeline, switchLsn });
  }
  return out;
}

/** Checks a history file that claims to be `ownTimeline`'s: it parses and names at least its parent. */
export function validateHistory(text: string, ownTimeline: number): TimelineSwitch[] {
  if (ownTimeline < 2) throw new RangeError(`timeline ${ownTimeline} has no history (timeline 1 is the first)`);
  const switches = parseHistory(text, ownTimeline);
  if (switches.length === 0) throw new RangeError('the file names no parent timeline');
  return switches;
}
