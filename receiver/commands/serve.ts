// `barman-receiver serve`: the service in the foreground. SIGTERM/SIGINT drain and exit 0.

import type { ReceiverConfig } from '../../shared/config/receiver';
import { createLogger } from '../../shared/log';
import { ReceiverService } from '../server/server';

export async function serve(config: ReceiverConfig): Promise<void> {
  const log = createLogger(config.logLevel, 'barman-receiver');
  const service = new ReceiverService(config, log);
  await service.start();
  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      log.info({ signal }, 'shutting down');
      service.stop().catch((err: unknown) => log.error({ err: String(err) }, 'shutdown did not complete cleanly')).finally(resolve);
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
}
