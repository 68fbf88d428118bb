/**
 * `node:http` for the agent's modules, loaded as CommonJS. An ES `import` of node:http builds
 * the module's ES facade, which reads every export, and `http.WebSocket` (with CloseEvent and
 * MessageEvent) is a getter that loads all of undici: 150-350 ms of the agent's start-up, for
 * something it never uses. A restarted agent must serve within 500 ms (DESIGN.md).
 * Types come from `import type`, which costs nothing at run time.
 */
import { createRequire } from 'node:module';
import type * as Http from 'node:http';

const http = createRequire(import.meta.url)('node:http') as typeof Http;

export default http;
