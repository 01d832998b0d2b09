// One file being received into the catalog, whatever it is (a WAL file, a backup's file): the
// session feeds it chunks in order and finishes it with the sender's checksum.

export type StoreResult = 'stored' | 'duplicate';

export interface Upload {
  /** what to call it in logs */
  readonly label: string;
  write(chunk: Uint8Array): Promise<void>;
  /**
   * Resolves once the bytes are where they belong (durable for WAL; for backup files, at the
   * backup's end). A backup file is checked against the sender's CRC-32C, a WAL file against its
   * SHA-256 (which a backup file's end carries only where backup_checksum = sha256).
   */
  finish(senderSha256: string | undefined, senderCrc32c?: string): Promise<StoreResult>;
  abort(): Promise<void>;
}
