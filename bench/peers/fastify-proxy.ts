/**
 * The Node peer of the bench: @fastify/http-proxy with its defaults (undici pool to the
 * upstream, fastify's logger off), forwarding every path to one upstream.
 *
 *   node dist/bench/peers/fastify-proxy.js --listen HOST:PORT --upstream http://IP:PORT
 *
 * Prints `fastify-proxy listening on HOST:PORT` once it accepts connections.
 */
import Fastify from 'fastify';
import httpProxy from '@fastify/http-proxy';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: { listen: { type: 'string' }, upstream: { type: 'string' } },
  strict: true,
});
if (!values.listen || !values.upstream) {
  process.stderr.write('usage: fastify-proxy --listen HOST:PORT --upstream http://IP:PORT\n');
  process.exit(2);
}
const i = values.listen.lastIndexOf(':');
const host = values.listen.slice(0, i);
const port = Number(values.listen.slice(i + 1));

const app = Fastify({ logger: false });
await app.register(httpProxy, { upstream: values.upstream });
await app.listen({ host, port });
process.stdout.write(`fastify-proxy listening on ${host}:${port}\n`);

const stop = (): void => {
  void app.close().then(() => process.exit(0));
  setTimeout(() => process.exit(0), 2_000).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
