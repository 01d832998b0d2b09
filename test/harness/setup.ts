// Loaded into every test file (vitest setupFiles): ties the harness's resource scopes to the
// test lifecycle so nothing a test started outlives it, whether it passed or failed.
import { afterAll, afterEach, beforeEach } from 'vitest';
import { beginTestScope, endFileScope, endTestScope } from './resources';

beforeEach(() => beginTestScope());
afterEach(() => endTestScope());
afterAll(() => endFileScope());
