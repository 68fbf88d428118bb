/**
 * Embedded-mode discovery: the mesh from one YAML file, watched.
 *
 * Editors and config tools rarely write a file in place: vim and most tools write a new file
 * and rename it over the old one; Kubernetes ConfigMap volumes swap a `..data` symlink. A
 * watch on the file itself loses track after the first rename, so this watches the file's
 * directory and, after any event there, re-reads the file (debounced) and compares a hash of
 * its content. A slow stat poll backs the watch up (network filesystems, a symlinked file
 * whose target lives elsewhere, a directory that was replaced).
 */
import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { watch, type FSWatcher } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import type { Logger } from 'pino';
import { parseConfig } from '../config/load.js';
import type { MeshConfig } from '../config/types.js';
import { ConfigError } from '../errors.js';
import { silentLogger } from '../telemetry/log.js';
import type { Discovery } from './types.js';

export interface FileDiscoveryOptions {
  log?: Logger;
  /** Quiet time after the last filesystem event before the file is re-read, ms (default 100). */
  debounceMs?: number;
  /** Stat poll interval, a backstop for missed watch events, ms (default 2000; 0 disables). */
  pollMs?: number;
  /** Variables for `${VAR}` substitution (default: process.env). */
  env?: Readonly<Record<string, string | undefined>>;
}

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

function statKey(s: { ino: number; size: number; mtimeMs: number }): string {
  return `${s.ino}:${s.size}:${s.mtimeMs}`;
}

/**
 * Events: `update` (MeshConfig) when the file changed to a valid config; `rejected`
 * (ConfigError) when it changed to an invalid one, and the last good config stays in force.
 * Content identical to what was last read emits nothing.
 */
export class FileDiscovery extends EventEmitter implements Discovery {
  /** Absolute path of the watched file. */
  readonly path: string;
  private readonly log: Logger;
  private readonly debounceMs: number;
  private readonly pollMs: number;
  private readonly env: Readonly<Record<string, string | undefined>> | undefined;

  private current: MeshConfig | undefined;
  /** Hash of the content now in force, and of the content last read (valid or not). */
  private goodHash: string | undefined;
  private seenHash: string | undefined;
  private lastStat: string | undefined;
  private missingLogged = false;

  private watcher: FSWatcher | undefined;
  private debounceTimer: NodeJS.Timeout | undefined;
  private pollTimer: NodeJS.Timeout | undefined;
  /** Checks run one at a time, in order. */
  private queue: Promise<void> = Promise.resolve();
  private running = false;

  constructor(path: string, opts: FileDiscoveryOptions = {}) {
    super();
    this.path = resolve(path);
    this.log = opts.log ?? silentLogger;
    this.debounceMs = opts.debounceMs ?? 100;
    this.pollMs = opts.pollMs ?? 2000;
    this.env = opts.env;
  }

  /** The config in force (the last good one), once start() has resolved. */
  get config(): MeshConfig | undefined {
    return this.current;
  }

  /**
   * Load the file and start watching it.
   * @throws ConfigError when the file cannot be read or is invalid: there is no good config to fall back to.
   */
  async start(): Promise<MeshConfig> {
    if (this.running) throw new Error('FileDiscovery already started');
    this.running = true;
    // Watch before the first read, so that a change racing the read is not lost.
    this.watchDirectory();
    try {
      const before = await stat(this.path).catch(() => undefined);
      const text = await this.read();
      const config = parseConfig(text, this.path, { env: this.env, baseDir: dirname(this.path) });
      this.current = config;
      this.goodHash = this.seenHash = sha256(text);
      this.lastStat = before ? statKey(before) : undefined;
    } catch (err) {
      await this.stop();
      throw err;
    }
    if (this.pollMs > 0) {
      this.pollTimer = setInterval(() => void this.poll(), this.pollMs);
      this.pollTimer.unref();
    }
    this.log.info({ path: this.path, hash: this.goodHash!.slice(0, 12) }, 'config loaded');
    return this.current;
  }

  /**
   * Re-read the file now (for SIGHUP). Emits `update` or `rejected` as a watch event would;
   * nothing when the content has not changed. Never rejects.
   */
  reload(): Promise<void> {
    this.queue = this.queue
      .then(() => this.check())
      .catch((err: unknown) => {
        this.log.error({ err, path: this.path }, 'config reload failed');
      });
    return this.queue;
  }

  async stop(): Promise<void> {
    this.running = false;
    this.watcher?.close();
    this.watcher = undefined;
    clearTimeout(this.debounceTimer);
    clearInterval(this.pollTimer);
    this.debounceTimer = this.pollTimer = undefined;
    await this.queue;
  }

  private async read(): Promise<string> {
    try {
      return await readFile(this.path, 'utf8');
    } catch (err) {
      throw new ConfigError(this.path, [`cannot read the config file: ${(err as Error).message}`]);
    }
  }

  private watchDirectory(): void {
    if (this.watcher || !this.running) return;
    try {
      // persistent: false: an open watch alone must not keep the process alive.
      // Any name in the directory counts: a ConfigMap swaps `..data`, not the file itself, and
      // some platforms report no name. The hash check keeps the extra reads cheap.
      this.watcher = watch(dirname(this.path), { persistent: false }, () => this.schedule());
    } catch (err) {
      this.log.warn({ err, path: this.path }, 'cannot watch the config directory; polling only');
      return;
    }
    this.watcher.on('error', (err) => {
      // The directory went away or was replaced: the poll re-creates the watch.
      this.log.warn({ err, path: this.path }, 'config watch failed; will retry');
      this.watcher?.close();
      this.watcher = undefined;
    });
  }

  private schedule(): void {
    if (!this.running) return;
    clearTimeout(this.debounceTimer);
    this.debounceTimer = setTimeout(() => {
      this.debounceTimer = undefined;
      void this.reload();
    }, this.debounceMs);
    this.debounceTimer.unref();
  }

  private async poll(): Promise<void> {
    if (!this.running) return;
    this.watchDirectory();
    const s = await stat(this.path).catch(() => undefined);
    const key = s ? statKey(s) : undefined;
    if (key !== this.lastStat) this.schedule();
  }

  private async check(): Promise<void> {
    if (!this.running) return;
    let before;
    let text: string;
    try {
      before = await stat(this.path);
      text = await readFile(this.path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        // Often a replacement in progress (delete, then create); the create will bring us back.
        if (!this.missingLogged) this.log.warn({ path: this.path }, 'config file missing, keeping last good config');
        this.missingLogged = true;
        this.lastStat = undefined;
        return;
      }
      this.reject(new ConfigError(this.path, [`cannot read the config file: ${(err as Error).message}`]));
      return;
    }
    this.missingLogged = false;
    const after = await stat(this.path).catch(() => undefined);
    if (!after || statKey(after) !== statKey(before)) {
      // Written to while we read it: wait for the writer to finish.
      this.schedule();
      return;
    }
    this.lastStat = statKey(after);
    const hash = sha256(text);
    if (hash === this.seenHash) return;
    this.seenHash = hash;

    let config: MeshConfig;
    try {
      config = parseConfig(text, this.path, { env: this.env, baseDir: dirname(this.path) });
    } catch (err) {
      if (err instanceof ConfigError) this.reject(err);
      else throw err;
      return;
    }
    if (hash === this.goodHash) {
      this.log.info({ path: this.path }, 'config is back to the one in force');
      return;
    }
    this.current = config;
    this.goodHash = hash;
    this.log.info({ path: this.path, hash: hash.slice(0, 12) }, 'config updated');
    this.emit('update', config);
  }

  private reject(err: ConfigError): void {
    this.log.error({ path: this.path, problems: err.problems }, 'config rejected, keeping last good config');
    this.emit('rejected', err);
  }
}
