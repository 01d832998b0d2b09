// The integration-test harness: real PostgreSQL clusters, a real receiver, the real agent.
// Nothing is mocked; every process is tracked and stopped when its test (or file) ends.

export { type AgentConfigFile, type AgentConfigOptions, writeAgentConfig } from './agent';
export { agentCommandLine, archiveCommandLine, runAgent, runReceiverCli } from './cli';
export { type ArchiverStats, cloneCluster, type CloneOptions, Cluster, type ClusterOptions, createCluster, postmasterPidOf, type StopMode } from './cluster';
export { freePort, makeDir, makeTempDir, pgBin, pgBinDir, pgBinDirFor, pgMajorOf, postgresUser, runPaths } from './env';
export { expectCatalogMatchesCluster, expectFailure, expectSuccess } from './expect';
export { crc32cOfBytes, hiddenFiles, listDir, plainBytesOf, plainSha256Of, sha256Of, sha256OfBytes, snapshotTree, wireBytesOf } from './fs';
export { KEEP_TMP } from './keep';
export { ClosedError, type CloseInfo, RawClient } from './raw-client';
export { commandsOnlyConfig, iniText, newToken, Receiver, type ReceiverOptions, type ReceiverServerOptions, startReceiver, writeTokenFile } from './receiver';
export { describeRun, run, runOk, type RunOptions, type RunResult } from './run';
export { waitFor, type WaitOptions } from './wait';
export { type Certificate, makeSelfSignedCert } from './tls';
export { AgentDaemon, type DaemonLogLine, receiverCheck, receiverStatus, startDaemon, type StatusJson, waitStreamCaughtUp } from './daemon';
export { type Interception, startRelay, TcpRelay } from './relay';
