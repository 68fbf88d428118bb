/**
 * The `yaml` library, loaded when a config needs it (text with `${VAR}`, or text that
 * fast-yaml.ts declines) rather than at agent start: its ~70 modules cost ~60 ms of CPU, and
 * an agent that reads Kubernetes, or a config js-yaml reads, never needs them
 * (docs/benchmarks/startup.md). Synchronous (parseConfig is): a require of its CommonJS build.
 */
import { createRequire } from 'node:module';
import type * as Yaml from 'yaml';

const require = createRequire(import.meta.url);

export function yamlLib(): typeof Yaml {
  return require('yaml') as typeof Yaml;
}
