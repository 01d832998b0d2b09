// The one entry point from configuration to storage: `storage = posix` keeps the catalog under
// barman_home, `storage = s3` in the configured bucket and prefix. The S3 driver (and the AWS SDK
// behind it) is loaded only when configured; in the built receiver the SDK is a bundle of its own
// in dist/node_modules (aws-sdk.ts).

import type { StorageConfig } from '../../shared/config/receiver';
import { BarmanError, ErrorCode } from '../../shared/errors';
import { PosixDriver } from './posix-driver';
import type { S3Options } from './s3';
import { Storage, type StorageDriver } from './storage';

export interface OpenStorageOptions {
  /** the S3 driver's tuning (part size, parallel parts, retries); tests make failures quick */
  s3?: Pick<S3Options, 'partSize' | 'queueSize' | 'maxAttempts' | 'requestTimeoutMs'>;
}

export async function openDriver(config: StorageConfig, barmanHome: string, options: OpenStorageOptions = {}): Promise<StorageDriver> {
  if (config.kind === 'posix') return new PosixDriver(barmanHome);
  const { S3Driver } = await import('./s3').catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'MODULE_NOT_FOUND') throw err;
    throw new BarmanError(ErrorCode.STORAGE, `storage = s3 needs the AWS SDK, which this receiver cannot load (${err.message.split('\n')[0]})`, 'Copy dist/node_modules (it holds barman-aws-sdk.cjs) beside barman-receiver.cjs, as the build left them, or run npm ci in the checkout again.', { cause: err });
  });
  return new S3Driver({ ...config, ...options.s3 });
}

export async function openStorage(config: StorageConfig, barmanHome: string, options: OpenStorageOptions = {}): Promise<Storage> {
  return new Storage(await openDriver(config, barmanHome, options));
}
