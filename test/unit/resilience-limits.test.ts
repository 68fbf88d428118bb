import t from 'tap';
import { ConnectionLimits } from '../../src/resilience/limits.js';

t.test('requests, pending and connections each capped independently', async (t) => {
  const l = new ConnectionLimits({ maxRequests: 3, maxPendingRequests: 2, maxConnections: 1 });
  t.ok(l.tryStartRequest());
  t.ok(l.tryStartRequest());
  t.ok(l.tryStartRequest());
  t.notOk(l.tryStartRequest(), 'the 4th concurrent request overflows');
  t.equal(l.activeRequests, 3);
  t.ok(l.tryOpenConnection());
  t.notOk(l.tryOpenConnection());
  t.ok(l.tryAddPending());
  t.ok(l.tryAddPending());
  t.notOk(l.tryAddPending());
  t.equal(l.pending, 2);
  t.equal(l.overflows, 3);
  l.removePending();
  t.ok(l.tryAddPending());
  l.closeConnection();
  t.ok(l.tryOpenConnection());
  l.endRequest();
  t.ok(l.tryStartRequest());
  t.equal(l.connections, 1);
});

t.test('releases never go below zero', async (t) => {
  const l = new ConnectionLimits({ maxRequests: 1, maxPendingRequests: 1, maxConnections: 1 });
  l.endRequest();
  l.removePending();
  l.closeConnection();
  t.equal(l.activeRequests, 0);
  t.equal(l.pending, 0);
  t.equal(l.connections, 0);
  t.ok(l.tryStartRequest());
  t.notOk(l.tryStartRequest(), 'a stray release did not make room for two');
});

t.test('maxPendingRequests 0: no queueing; Infinity: no limit', async (t) => {
  const l = new ConnectionLimits({ maxRequests: Infinity, maxPendingRequests: 0, maxConnections: Infinity });
  t.notOk(l.tryAddPending());
  let admitted = 0;
  for (let i = 0; i < 10_000; i++) if (l.tryStartRequest() && l.tryOpenConnection()) admitted++;
  t.equal(admitted, 10_000);
  t.equal(l.activeRequests, 10_000);
  t.equal(l.overflows, 1);
});

t.test('setPolicy applies to the next admission; admitted work stays', async (t) => {
  const l = new ConnectionLimits({ maxRequests: 5, maxPendingRequests: 5, maxConnections: 5 });
  for (let i = 0; i < 4; i++) l.tryStartRequest();
  l.setPolicy({ maxRequests: 2, maxPendingRequests: 5, maxConnections: 5 });
  t.equal(l.activeRequests, 4);
  t.notOk(l.tryStartRequest());
  l.endRequest();
  l.endRequest();
  t.notOk(l.tryStartRequest());
  l.endRequest();
  t.ok(l.tryStartRequest());
});
