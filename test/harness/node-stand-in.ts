// A stand-in for the Node program beside the agent's launcher (dist/barman-agent.cjs) in tests
// of the launcher: it prints `node <its arguments>` and exits 9, so a test sees whether the
// launcher handed the command to Node, and with what.

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** Writes the stand-in as `<bin>/barman-agent.cjs`, beside a launcher copied to `<bin>`. */
export function writeNodeStandIn(bin: string): void {
  writeFileSync(join(bin, 'barman-agent.cjs'), 'process.stdout.write("node " + process.argv.slice(2).join(" ")); process.exitCode = 9;\n');
}
