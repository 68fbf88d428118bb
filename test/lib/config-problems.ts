import { parseConfig } from '../../src/config/load.js';
import { ConfigError } from '../../src/errors.js';

/** The problems parseConfig reports for a config text (none: []); any other error is thrown. */
export function configProblems(text: string): string[] {
  try {
    parseConfig(text, 'test.yaml', { env: {} });
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  return [];
}
