// One file being received into the catalog, whatever it is (a WAL file, a backup's file): the
// session feeds it chunks in order and finishes it with the sender's checksum.

export type StoreResult = 'stored' | 'duplicate';

export interface Upload {
  /** what to call it in logs */
  readonly label: string;
  write(chunk: Uint8Array): Promise<void>;
  /**
   * Resolves once the bytes are where they belong (durable for WAL; for backup files, at the
   * backup's end). Every file is checked against the sender's CRC-32C; a WAL file's end also
   * repeats the SHA-256 its put declared, and a backup file's carries one only where
   * backup_checksum = sha256.
   */
  finish(senderSha256: string | undefined, senderCrc32c?: string): Promise<StoreResult>;
  abort(): Promise<void>;
}
