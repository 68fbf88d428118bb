import { EventEmitter } from 'node:events';
import type { MeshConfig } from '../config/types.js';
import type { Discovery } from './types.js';

/** A discovery source fed by its owner (tests, embedding): `set()` emits an update. */
export class StaticDiscovery extends EventEmitter implements Discovery {
  constructor(private cfg: MeshConfig) {
    super();
  }

  async start(): Promise<MeshConfig> {
    return this.cfg;
  }

  set(cfg: MeshConfig): void {
    this.cfg = cfg;
    this.emit('update', cfg);
  }

  async stop(): Promise<void> {}
}
