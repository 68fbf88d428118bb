import t from 'tap';
import type { Endpoint } from '../../src/cluster/endpoint.js';
import { matchPrevious } from '../../src/balancer/match-previous.js';
import { seededRandom } from '../../src/balancer/options.js';
import { endpoints } from '../lib/endpoints.js';

/** What matchPrevious says, and the truth by indexOf. */
function match(prev: Endpoint[], next: Endpoint[]): [number[], number[]] {
  const out = new Int32Array(next.length);
  matchPrevious(prev, prev.length, next, next.length, out);
  return [[...out], next.map((ep) => prev.indexOf(ep))];
}

t.test('matches exactly in every shape of change', async (t) => {
  const all = endpoints(300);
  const base = all.slice(0, 200);
  t.same(...match(base, base), 'same list');
  t.same(
    ...match(
      base,
      base.filter((_, i) => i !== 17),
    ),
    'one removed',
  );
  t.same(
    ...match(
      base,
      base.filter((_, i) => i % 3 !== 0),
    ),
    'a third removed',
  );
  t.same(...match(base, [...base.slice(0, 50), all[250]!, ...base.slice(50)]), 'one added in the middle');
  t.same(...match(base, [...base, ...all.slice(200)]), 'many added at the end');
  t.same(...match(base, [...all.slice(200), ...base]), 'many added at the front');
  t.same(...match(base, [...base.slice(100), ...base.slice(0, 100)]), 'rotated');
  t.same(...match(base, [...base].reverse()), 'reversed');
  const r = seededRandom(1);
  const shuffled = [...base].sort(() => r() - 0.5);
  t.same(...match(base, shuffled), 'shuffled');
  t.same(...match(base, [...shuffled.slice(0, 120), ...all.slice(260)]), 'shuffled, some gone, some new');
  t.same(...match([], base), 'from empty');
  t.same(...match(base, []), 'to empty');
});
