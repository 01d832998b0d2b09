// A self-signed certificate made with openssl, for wss:// between agent and receiver.

import { chmodSync } from 'node:fs';
import { join } from 'node:path';
import { makeTempDir } from './env';
import { runOk } from './run';

export interface Certificate {
  /** PEM certificate, readable by everyone: the receiver's tls_cert and the agent's ca_file */
  cert: string;
  /** PEM private key, readable by root only */
  key: string;
}

/** A certificate for 127.0.0.1 and localhost, valid for two days. */
export async function makeSelfSignedCert(): Promise<Certificate> {
  const dir = makeTempDir('tls', 'root', 0o755);
  const cert = join(dir, 'receiver.crt');
  const key = join(dir, 'receiver.key');
  await runOk('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2',
    '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost', '-keyout', key, '-out', cert,
  ]);
  chmodSync(key, 0o600);
  chmodSync(cert, 0o644);
  return { cert, key };
}
