// Logging: pino JSON on stderr. One child logger per server and session; tokens are never a
// field of any log line (the config objects that hold them are never logged whole).

import pino, { type Logger } from 'pino';
import type { LogLevel } from './config/receiver';

export type { Logger };

export function createLogger(level: LogLevel, name: string): Logger {
  return pino({ name, level, base: { pid: process.pid }, redact: { paths: ['token', '*.token', 'secret', '*.secret'], censor: '[secret]' } }, pino.destination({ fd: 2, sync: true }));
}
