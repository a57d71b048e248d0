/** Small pure helpers used by the entry point (kept out of it so that tests can load them). */

import { parseStatus, summarizeStatus } from './status';

export { SECTION, toggleTarget } from './settings';

/** A one-line summary of a status answer, or its JSON when it is not one. */
export function summarizeOrRaw(raw: unknown): string {
  const status = parseStatus(raw);
  return status === undefined ? `Swiftguard status: ${JSON.stringify(raw)}` : summarizeStatus(status);
}
