// Timeline history files (<tli>.history): one line per ancestor timeline,
// `<parent tli>\t<switch LSN>\t<reason>`. The only parser of them.

import { type Lsn, parseLsn } from './lsn';

export interface TimelineSwitch {
  /** the ancestor timeline */
  timeline: number;
  /** where the history left it (the first LSN of the next timeline) */
  switchLsn: Lsn;
}

export function parseHistory(text: string): TimelineSwitch[] {
  const out: TimelineSwitch[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const [tli, lsn] = line.split(/\s+/);
    if (!tli || !lsn || !/^\d+$/.test(tli)) throw new RangeError(`bad history line: ${line.slice(0, 80)}`);
    out.push({ timeline: Number(tli), switchLsn: parseLsn(lsn) });
  }
  return out;
}
