// pg-copy-streams ships no types for copy-both (the replication protocol's CopyBoth mode), the
// one part of it we use.
declare module 'pg-copy-streams' {
  import type { Duplex, DuplexOptions } from 'node:stream';
  import type { Connection, Submittable } from 'pg';

  export interface CopyBothQueryStream extends Duplex, Submittable {
    submit(connection: Connection): void;
  }
  /** options also go to the Duplex constructor (readableObjectMode, highWaterMark...) */
  export function both(text: string, options?: DuplexOptions & { alignOnCopyDataFrame?: boolean }): CopyBothQueryStream;
}
