/**
 * Node's floor for a proxy: a raw TCP pipe, no parsing. Each accepted connection gets its
 * own upstream connection and the bytes are piped both ways with `net.Socket.pipe`: what
 * Node.js itself needs to move a request and its answer through one process, with nothing
 * an HTTP proxy does (no head parsing, no routing, no pooling, no logging).
 *
 *   node dist/bench/peers/node-pipe.js --listen HOST:PORT --upstream IP:PORT
 *
 * Prints `node-pipe listening on HOST:PORT` once it accepts connections.
 */
import net from 'node:net';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: { listen: { type: 'string' }, upstream: { type: 'string' } },
  strict: true,
});
if (!values.listen || !values.upstream) {
  process.stderr.write('usage: node-pipe --listen HOST:PORT --upstream IP:PORT\n');
  process.exit(2);
}
const split = (s: string): [string, number] => {
  const i = s.lastIndexOf(':');
  return [s.slice(0, i), Number(s.slice(i + 1))];
};
const [host, port] = split(values.listen);
const [upHost, upPort] = split(values.upstream);

const server = net.createServer({ noDelay: true }, (down) => {
  const up = net.connect({ host: upHost, port: upPort, noDelay: true });
  const close = (): void => {
    down.destroy();
    up.destroy();
  };
  down.on('error', close);
  up.on('error', close);
  down.on('close', close);
  up.on('close', close);
  down.pipe(up);
  up.pipe(down);
});
server.listen({ host, port, backlog: 4096 }, () => process.stdout.write(`node-pipe listening on ${host}:${port}\n`));

const stop = (): void => {
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2_000).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
