import type { EventEmitter } from 'node:events';
import type { MeshConfig } from '../config/types.js';
import type { ConfigError } from '../errors.js';

/**
 * A source of mesh configuration: the YAML file (embedded mode) or the Kubernetes API.
 * Each emits whole, validated snapshots; the state store diffs them.
 *
 * Events:
 * - `update` (config: MeshConfig): a new valid snapshot is in force.
 * - `rejected` (error: ConfigError): a change was refused; the last good snapshot stays in force.
 */
export interface Discovery extends EventEmitter {
  /** Resolves with the first valid snapshot; rejects if there is none to start from. */
  start(): Promise<MeshConfig>;
  stop(): Promise<void>;
}
