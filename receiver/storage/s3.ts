// The storage driver for S3-compatible object storage (AWS S3, Ceph RADOS Gateway, MinIO...),
// through the official AWS SDK: no hand-written signing. A key is an object name below the
// configured prefix. An object exists only once its PutObject or CompleteMultipartUpload was
// answered: a write streams into @aws-sdk/lib-storage's Upload, which holds back the last part
// (and so the whole object) until commit() ends the stream; abort() ends the upload and aborts
// the multipart upload it may have begun, and `cleanup` aborts those a crash left behind.
//
// Every request with a body carries Content-MD5, which S3 and Ceph check, so bytes damaged on the
// way are refused instead of stored (Ceph 16 ignores the newer x-amz-checksum-* headers). The
// SDK's streaming checksum mode is off: Ceph answers a chunked upload with a trailing checksum
// with 411 MissingContentLength.

import { createHash } from 'node:crypto';
import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import { PassThrough, Readable } from 'node:stream';
import * as sdk from './aws-sdk';
import { BarmanError, ErrorCode } from '../../shared/errors';
import { type ByteRange, checkKey, checkPrefix, drained, type DriverWriteOptions, noSpace, notFound, type ObjectInfo, type ObjectWriter, type StorageDriver, type WriteResult } from './storage';

export interface S3Options {
  /** http(s)://host:port; absent: AWS's own endpoint for the region */
  endpoint?: string;
  bucket: string;
  region: string;
  /** prepended to every key; empty or ending in '/' */
  prefix: string;
  forcePathStyle: boolean;
  /** absent: the SDK's default chain (environment, ~/.aws) */
  credentials?: { accessKeyId: string; secretAccessKey: string };
  /** PEM of a private CA to trust for https endpoints */
  ca?: string;
  /** bytes per multipart part (min 5 MiB); a write holds at most (queueSize + 1) parts in memory */
  partSize?: number;
  /** parts of one write uploading at the same time */
  queueSize?: number;
  /** attempts per request (the SDK retries with backoff) */
  maxAttempts?: number;
  /** idle time (nothing sent or received) after which a request is abandoned */
  requestTimeoutMs?: number;
}

export const DEFAULT_PART_SIZE = 8 * 1024 * 1024;
/** the largest object a size hint turns into one PUT (a default-size WAL segment stored plain) */
const ONE_PUT_LIMIT = 16 * 1024 * 1024 + 1;

/** AWS's own hint names, for the errors a user can act on. */
const CREDENTIAL_ERRORS = new Set(['InvalidAccessKeyId', 'SignatureDoesNotMatch', 'InvalidToken', 'ExpiredToken', 'CredentialsProviderError', 'InvalidClientTokenId']);
const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'ETIMEDOUT', 'EPIPE', 'ECONNABORTED']);

// Says that future SDK versions will need Node 22: true but not something a DBA running this
// receiver can act on (the SDK version is pinned by the package); keep it off their terminal.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

export class S3Driver implements StorageDriver {
  readonly kind = 's3';
  readonly location: string;
  private readonly client: sdk.S3Client;
  private readonly partSize: number;
  private readonly queueSize: number;

  constructor(private readonly options: S3Options) {
    this.location = `s3://${options.bucket}/${options.prefix}${options.endpoint ? ` at ${options.endpoint}` : ''}`;
    this.partSize = Math.max(5 * 1024 * 1024, options.partSize ?? DEFAULT_PART_SIZE);
    this.queueSize = Math.max(1, options.queueSize ?? 2);
    const agentOptions = { keepAlive: true, maxSockets: 32 };
    const config: sdk.S3ClientConfig = {
      endpoint: options.endpoint,
      region: options.region,
      forcePathStyle: options.forcePathStyle,
      credentials: options.credentials,
      maxAttempts: options.maxAttempts ?? 3,
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      requestHandler: {
        connectionTimeout: 5000,
        // inactivity, not duration: a large part on a slow link is fine, a silent endpoint is not
        // (a Ceph cluster that is full stops answering writes)
        socketTimeout: options.requestTimeoutMs ?? 60_000,
        httpAgent: new HttpAgent(agentOptions),
        httpsAgent: new HttpsAgent({ ...agentOptions, ca: options.ca }),
      },
    };
    this.client = new sdk.S3Client(config);
    // Content-MD5 on every request whose body is in memory (PutObject, UploadPart, DeleteObjects)
    this.client.middlewareStack.add(
      (next) => async (args) => {
        const request = args.request as { headers?: Record<string, string>; body?: unknown };
        const body = request.body;
        if (request.headers && (typeof body === 'string' || body instanceof Uint8Array) && !Object.keys(request.headers).some((h) => h.toLowerCase() === 'content-md5')) {
          request.headers['content-md5'] = createHash('md5').update(body).digest('base64');
        }
        return next(args);
      },
      { step: 'build', name: 'barmanContentMd5' },
    );
  }

  private objectKey(key: string): string {
    return this.options.prefix + key;
  }

  /** Maps an SDK or network error to a stable code with a hint; `what` says what was being done. */
  mapError(err: unknown, what: string): BarmanError {
    if (err instanceof BarmanError) return err;
    const e = err as { name?: string; code?: string; message?: string; $metadata?: { httpStatusCode?: number } };
    const name = e?.name ?? '';
    const status = e?.$metadata?.httpStatusCode;
    const where = `${what} in ${this.location}`;
    const detail = `${name || e?.code || 'error'}${status ? ` ${status}` : ''}: ${e?.message ?? String(err)}`;
    if (name === 'NoSuchBucket') {
      return new BarmanError(ErrorCode.STORAGE_BUCKET_MISSING, `${where}: bucket "${this.options.bucket}" does not exist`, 'Create the bucket (e.g. `aws s3 mb` or `radosgw-admin`/`s3cmd mb`) or fix s3_bucket in the configuration.', { cause: err });
    }
    if (CREDENTIAL_ERRORS.has(name)) {
      return new BarmanError(ErrorCode.STORAGE_CREDENTIALS, `${where}: the credentials were refused (${name})`, 'Check aws_access_key_id and aws_secret_access_key in s3_credentials_file, and that the host clock is right (signatures are time-bound).', { cause: err });
    }
    if (name === 'AccessDenied' || name === 'AllAccessDisabled' || status === 403) {
      return new BarmanError(ErrorCode.STORAGE_PERMISSION, `${where}: access denied (${detail})`, 'Grant this key read, write, list and delete on the bucket and prefix (bucket policy or user caps).', { cause: err });
    }
    if (name === 'QuotaExceeded' || name === 'ServiceQuotaExceeded' || name === 'InsufficientCapacity') return noSpace(this.location, err);
    if (name === 'TimeoutError' || name === 'RequestTimeout') {
      return new BarmanError(ErrorCode.STORAGE_UNREACHABLE, `${where}: the object store did not answer in time (${detail})`, 'Check the object store\'s health (a full Ceph cluster stops answering writes) and the network to it, then retry.', { cause: err });
    }
    if (NETWORK_CODES.has(e?.code ?? '') || NETWORK_CODES.has(name) || /socket hang up|ECONNREFUSED|ECONNRESET/.test(e?.message ?? '')) {
      return new BarmanError(ErrorCode.STORAGE_UNREACHABLE, `${where}: cannot reach ${this.options.endpoint ?? 'the S3 endpoint'} (${detail})`, 'Check that the object store is up and reachable from this host (s3_endpoint, firewall, DNS), then retry.', { cause: err });
    }
    if (name === 'BadDigest' || name === 'InvalidDigest' || name === 'XAmzContentSHA256Mismatch') {
      return new BarmanError(ErrorCode.STORAGE, `${where}: the object store received other bytes than were sent (${detail})`, 'Something between this host and the object store damages data (a proxy, a NIC, memory); the upload was refused and nothing was stored. Retry, and check that path.', { cause: err });
    }
    if (status !== undefined && status >= 500) {
      return new BarmanError(ErrorCode.STORAGE_UNREACHABLE, `${where}: the object store failed (${detail})`, 'The object store reported an internal error or is overloaded; check its health, then retry.', { cause: err });
    }
    return new BarmanError(ErrorCode.STORAGE, `${where}: ${detail}`, 'Check the object store and the s3_* settings; run again with log_level = debug for details.', { cause: err });
  }

  async read(key: string, range?: ByteRange): Promise<Readable> {
    checkKey(key);
    const start = range?.start ?? 0;
    const end = range?.end;
    if (end !== undefined && end <= start) {
      if (!(await this.exists(key))) throw notFound(key, this.location);
      return Readable.from([]);
    }
    try {
      const out = await this.client.send(
        new sdk.GetObjectCommand({ Bucket: this.options.bucket, Key: this.objectKey(key), Range: range ? `bytes=${start}-${end === undefined ? '' : end - 1}` : undefined }),
      );
      const body = out.Body as Readable;
      // errors mid-body (the connection dropped) carry the same codes as the others
      const mapped = new PassThrough({ highWaterMark: 1024 * 1024 });
      body.on('error', (err) => mapped.destroy(this.mapError(err, `reading ${key}`)));
      mapped.on('close', () => body.destroy());
      body.pipe(mapped);
      return mapped;
    } catch (err) {
      const name = (err as { name?: string }).name;
      if (name === 'NoSuchKey') throw notFound(key, this.location);
      // a range starting at or past the end: nothing to read
      if (name === 'InvalidRange') return Readable.from([]);
      throw this.mapError(err, `reading ${key}`);
    }
  }

  async openWrite(key: string, options: DriverWriteOptions = {}): Promise<ObjectWriter> {
    checkKey(key);
    // an object that fits in one part of at most ONE_PUT_LIMIT goes as one PUT (lib-storage sends
    // a body that ends within its first part with PutObject)
    const hint = options.sizeHint ?? 0;
    const partSize = hint >= this.partSize && hint < ONE_PUT_LIMIT ? hint + 1 : this.partSize;
    return new S3Writer(this, this.client, key, this.options.bucket, this.objectKey(key), partSize, this.queueSize);
  }

  async putIfAbsent(key: string, bytes: Uint8Array): Promise<boolean> {
    checkKey(key);
    try {
      await this.client.send(new sdk.PutObjectCommand({ Bucket: this.options.bucket, Key: this.objectKey(key), Body: bytes, IfNoneMatch: '*' }));
      return true;
    } catch (err) {
      const status = (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
      // 412: the key exists; 409: a concurrent conditional write to it is in progress
      if (status === 412 || status === 409) return false;
      throw this.mapError(err, `writing ${key}`);
    }
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    checkKey(key);
    // a listing rather than HEAD: HEAD's 404 cannot tell a missing key from a missing bucket
    try {
      const out = await this.client.send(new sdk.ListObjectsV2Command({ Bucket: this.options.bucket, Prefix: this.objectKey(key), MaxKeys: 1 }));
      const first = out.Contents?.[0];
      if (!first || first.Key !== this.objectKey(key)) return undefined;
      return { key, size: first.Size ?? 0, mtime: first.LastModified ?? new Date(0) };
    } catch (err) {
      throw this.mapError(err, `looking up ${key}`);
    }
  }

  async exists(key: string): Promise<boolean> {
    return (await this.stat(key)) !== undefined;
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    checkPrefix(prefix);
    let token: string | undefined;
    do {
      let out;
      try {
        out = await this.client.send(new sdk.ListObjectsV2Command({ Bucket: this.options.bucket, Prefix: this.objectKey(prefix), ContinuationToken: token, MaxKeys: 1000 }));
      } catch (err) {
        throw this.mapError(err, `listing ${prefix || '/'}`);
      }
      for (const o of out.Contents ?? []) {
        if (!o.Key) continue;
        yield { key: o.Key.slice(this.options.prefix.length), size: o.Size ?? 0, mtime: o.LastModified ?? new Date(0) };
      }
      token = out.IsTruncated ? out.NextContinuationToken : undefined;
    } while (token);
  }

  async *listDirs(prefix: string): AsyncIterable<string> {
    checkPrefix(prefix);
    let token: string | undefined;
    do {
      let out;
      try {
        out = await this.client.send(new sdk.ListObjectsV2Command({ Bucket: this.options.bucket, Prefix: this.objectKey(prefix), Delimiter: '/', ContinuationToken: token, MaxKeys: 1000 }));
      } catch (err) {
        throw this.mapError(err, `listing ${prefix || '/'}`);
      }
      const start = this.objectKey(prefix).length;
      for (const p of out.CommonPrefixes ?? []) if (p.Prefix) yield p.Prefix.slice(start, -1);
      token = out.IsTruncated ? out.NextContinuationToken : undefined;
    } while (token);
  }

  async remove(key: string): Promise<void> {
    checkKey(key);
    try {
      await this.client.send(new sdk.DeleteObjectCommand({ Bucket: this.options.bucket, Key: this.objectKey(key) }));
    } catch (err) {
      throw this.mapError(err, `removing ${key}`);
    }
  }

  async removePrefix(prefix: string): Promise<number> {
    checkPrefix(prefix);
    let removed = 0;
    let batch: string[] = [];
    const flush = async () => {
      if (batch.length === 0) return;
      try {
        const out = await this.client.send(new sdk.DeleteObjectsCommand({ Bucket: this.options.bucket, Delete: { Objects: batch.map((Key) => ({ Key })), Quiet: true } }));
        const failed = out.Errors?.filter((e) => e.Code !== 'NoSuchKey') ?? [];
        if (failed.length > 0) throw Object.assign(new Error(`${failed.length} objects not removed, e.g. ${failed[0]!.Key}: ${failed[0]!.Code} ${failed[0]!.Message ?? ''}`), { name: failed[0]!.Code });
      } catch (err) {
        throw this.mapError(err, `removing ${prefix}`);
      }
      removed += batch.length;
      batch = [];
    };
    for await (const info of this.list(prefix)) {
      batch.push(this.objectKey(info.key));
      if (batch.length === 1000) await flush();
    }
    await flush();
    if (prefix.endsWith('/')) {
      // interrupted writes below the prefix: their incomplete multipart uploads go too
      try {
        for (const u of await this.incompleteUploads(prefix)) await this.abortUpload(this.objectKey(u.key), u.uploadId);
      } catch (err) {
        throw this.mapError(err, `removing ${prefix}`);
      }
    }
    return removed;
  }

  async sync(_keys: readonly string[]): Promise<void> {
    // an object exists only once it is stored durably: nothing to do
  }

  async cleanup(before: Date): Promise<number> {
    let aborted = 0;
    let keyMarker: string | undefined;
    let uploadIdMarker: string | undefined;
    try {
      do {
        const out = await this.client.send(new sdk.ListMultipartUploadsCommand({ Bucket: this.options.bucket, Prefix: this.options.prefix || undefined, KeyMarker: keyMarker, UploadIdMarker: uploadIdMarker }));
        for (const u of out.Uploads ?? []) {
          if (!u.Key || !u.UploadId || (u.Initiated && u.Initiated >= before)) continue;
          await this.abortUpload(u.Key, u.UploadId);
          aborted++;
        }
        keyMarker = out.IsTruncated ? out.NextKeyMarker : undefined;
        uploadIdMarker = out.IsTruncated ? out.NextUploadIdMarker : undefined;
      } while (keyMarker);
    } catch (err) {
      throw this.mapError(err, 'cleaning up interrupted uploads');
    }
    return aborted;
  }

  /** Incomplete multipart uploads under the prefix (what a crash mid-upload leaves), below `below` when given. */
  async incompleteUploads(below = ''): Promise<{ key: string; uploadId: string; initiated?: Date }[]> {
    const out = await this.client.send(new sdk.ListMultipartUploadsCommand({ Bucket: this.options.bucket, Prefix: this.objectKey(below) || undefined })).catch((err: unknown) => {
      throw this.mapError(err, 'listing multipart uploads');
    });
    return (out.Uploads ?? []).map((u) => ({ key: (u.Key ?? '').slice(this.options.prefix.length), uploadId: u.UploadId ?? '', initiated: u.Initiated }));
  }

  async abortUpload(objectKey: string, uploadId: string): Promise<void> {
    try {
      await this.client.send(new sdk.AbortMultipartUploadCommand({ Bucket: this.options.bucket, Key: objectKey, UploadId: uploadId }));
    } catch (err) {
      if ((err as { name?: string }).name !== 'NoSuchUpload') throw err;
    }
  }

  async check(): Promise<void> {
    try {
      await this.client.send(new sdk.HeadBucketCommand({ Bucket: this.options.bucket }));
    } catch (err) {
      // HEAD answers have no body: a 404 here is the bucket, a 403 with our keys is the keys or a policy
      const status = (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
      if (status === 404) throw this.mapError(Object.assign(new Error('no such bucket'), { name: 'NoSuchBucket' }), 'checking the bucket');
      if (status === 403) {
        // tell wrong keys from missing rights with a request whose error has a body
        try {
          await this.client.send(new sdk.ListObjectsV2Command({ Bucket: this.options.bucket, MaxKeys: 1, Prefix: this.options.prefix || undefined }));
        } catch (again) {
          throw this.mapError(again, 'checking the bucket');
        }
      }
      throw this.mapError(err, 'checking the bucket');
    }
  }

  async close(): Promise<void> {
    this.client.destroy();
  }
}

class S3Writer implements ObjectWriter {
  private readonly body = new PassThrough({ highWaterMark: 1024 * 1024 });
  private readonly upload: sdk.Upload;
  private readonly done: Promise<unknown>;
  private failure: unknown;
  private written = 0;
  private state: 'open' | 'committing' | 'committed' | 'aborted' = 'open';

  constructor(private readonly driver: S3Driver, client: sdk.S3Client, readonly key: string, bucket: string, private readonly objectKey: string, partSize: number, queueSize: number) {
    this.upload = new sdk.Upload({ client, params: { Bucket: bucket, Key: objectKey, Body: this.body }, partSize, queueSize, leavePartsOnError: false });
    this.done = this.upload.done();
    this.done.catch((err: unknown) => {
      this.failure ??= err;
      // stop whoever is waiting for the body to drain
      if (!this.body.destroyed) this.body.destroy();
    });
  }

  async write(chunk: Uint8Array): Promise<void> {
    if (this.state !== 'open') throw new BarmanError(ErrorCode.INTERNAL, `write to ${this.key} after it was ${this.state}`, 'This is a bug in barman-ts; please report it.');
    if (this.failure) throw this.driver.mapError(this.failure, `writing ${this.key}`);
    this.written += chunk.length;
    if (!this.body.write(chunk)) {
      try {
        await drained(this.body);
      } catch (err) {
        // the body closed because the upload failed: report why the upload failed
        const cause = await this.done.then(() => err, (failed: unknown) => failed);
        throw this.driver.mapError(cause, `writing ${this.key}`);
      }
    }
  }

  async commit(): Promise<WriteResult> {
    if (this.state !== 'open') throw new BarmanError(ErrorCode.INTERNAL, `commit of ${this.key} after it was ${this.state}`, 'This is a bug in barman-ts; please report it.');
    this.state = 'committing';
    this.body.end();
    try {
      await this.done;
    } catch (err) {
      this.state = 'open';
      await this.abort();
      throw this.driver.mapError(err, `writing ${this.key}`);
    }
    this.state = 'committed';
    return { key: this.key, size: this.written, storedSize: this.written };
  }

  async abort(): Promise<void> {
    if (this.state !== 'open') return;
    this.state = 'aborted';
    await this.upload.abort();
    await this.done.catch(() => undefined);
    if (!this.body.destroyed) this.body.destroy();
    // Upload's own AbortMultipartUpload runs in the background after done() rejected; make sure
    // no incomplete upload stays behind (a second abort is harmless)
    const inner = this.upload as unknown as { uploadId?: string; createMultiPartPromise?: Promise<{ UploadId?: string }> };
    const uploadId = inner.uploadId ?? (await inner.createMultiPartPromise?.catch(() => undefined))?.UploadId;
    if (uploadId) await this.driver.abortUpload(this.objectKey, uploadId).catch(() => undefined);
  }
}
