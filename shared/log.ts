// Logging: pino JSON on stderr. One child logger per server and session; tokens are never a
// field of any log line (the config objects that hold them are never logged whole). Times are
// ISO 8601 in UTC (`"time":"2026-11-25T11:00:05.123Z"`), readable without converting epoch
// milliseconds and sortable as text.

import pino, { type DestinationStream, type Logger } from 'pino';
import type { LogLevel } from './config/receiver';

export type { Logger };

export function createLogger(level: LogLevel, name: string, destination: DestinationStream = pino.destination({ fd: 2, sync: true })): Logger {
  return pino({ name, level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime, redact: { paths: ['token', '*.token', 'secret', '*.secret'], censor: '[secret]' } }, destination);
}
