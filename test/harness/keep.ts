// KEEP_TMP=1 keeps every temporary folder of a run (clusters, catalogs, logs) for inspection.
export const KEEP_TMP = process.env.KEEP_TMP === '1';
