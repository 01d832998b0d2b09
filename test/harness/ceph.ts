// The tests' Ceph RADOS Gateway (ceph-gateway.ts): in a temp folder of the run, on free ports,
// tracked like every other resource of a test.

import { CephGateway } from './ceph-gateway';
import { freePort, makeTempDir, productEnv } from './env';

export { CEPH_PROGRAMS, CephGateway, cephInstalled, type S3Credentials } from './ceph-gateway';

export async function startCeph(): Promise<CephGateway> {
  return CephGateway.start(makeTempDir('ceph'), { mon: await freePort(), gateway: await freePort() }, productEnv());
}
