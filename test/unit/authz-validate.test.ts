import t from 'tap';
import { validatePolicies } from '../../src/authz/engine.js';

const ok = { name: 'p', namespace: 'shop', selector: {}, action: 'ALLOW', rules: [] };

t.test('valid policies: no problems', async (t) => {
  t.same(validatePolicies([]), []);
  t.same(validatePolicies(undefined), []);
  t.same(
    validatePolicies([
      {
        ...ok,
        rules: [
          {
            from: [{ principals: ['cluster.local/ns/shop/sa/*'], namespaces: ['*'], ipBlocks: ['10.0.0.0/8', '10.1.1.1', 'fd00::/8'], requestPrincipals: ['https://i/*'] }],
            to: [{ ports: [8080], methods: ['GET'], paths: ['/items', '/items/*', '*.png', '*'], hosts: ['*.shop'], notPaths: ['/admin/*'] }],
          },
        ],
      },
    ]),
    [],
  );
});

t.test('messages name the exact place', async (t) => {
  const problems = validatePolicies([
    ok,
    { ...ok, name: 'second' },
    {
      ...ok,
      name: 'third',
      action: 'AUDIT',
      rules: [
        {
          from: [{ principals: ['spiffe://cluster.local/ns/a/sa/b'], ipBlocks: ['10.0.0.0/33'], namespaces: ['a*b'] }],
          to: [{ ports: [0, 70000, 8080.5], paths: ['/ok', '/a*b', 'admin', '/a/../b', '/x%2Fy', '/q?x=1'], methods: ['**'] }],
        },
      ],
    },
  ]);
  t.same(problems, [
    'policies[2].action: unknown action "AUDIT" (want ALLOW or DENY)',
    "policies[2].rules[0].from[0].principals[0]: a principal is a SPIFFE ID without 'spiffe://'",
    "policies[2].rules[0].from[0].namespaces[0]: '*' may only lead or trail",
    "policies[2].rules[0].from[0].ipBlocks[0]: '10.0.0.0/33' is not an IP address or CIDR block",
    "policies[2].rules[0].to[0].methods[0]: '*' may appear only once (only a leading or a trailing '*' is supported)",
    "policies[2].rules[0].to[0].paths[1]: '*' may only lead or trail",
    "policies[2].rules[0].to[0].paths[2]: must start with '/' (or '*' for a suffix match)",
    "policies[2].rules[0].to[0].paths[3]: requests are matched after path normalization; write '/b'",
    'policies[2].rules[0].to[0].paths[4]: requests with such a path are refused before matching; this pattern can never match',
    'policies[2].rules[0].to[0].paths[5]: paths are matched without the query; remove it',
    'policies[2].rules[0].to[0].ports[0]: 0 is not a port (1-65535)',
    'policies[2].rules[0].to[0].ports[1]: 70000 is not a port (1-65535)',
    'policies[2].rules[0].to[0].ports[2]: 8080.5 is not a port (1-65535)',
  ]);
});

t.test('shape problems, unknown fields, duplicates', async (t) => {
  t.same(validatePolicies({}), ['policies: must be a list']);
  t.same(
    validatePolicies([
      { ...ok, rules: [{ from: [{ principal: ['x'] }], when: [{ key: 'k' }] }] },
      { ...ok, namespace: '', name: undefined },
      ok,
      { ...ok, selector: { app: 1 }, rules: [{ to: {} }, 'x'] },
    ]),
    [
      "policies[0].rules[0]: unknown field 'when'",
      "policies[0].rules[0].from[0]: unknown field 'principal'",
      'policies[1].name: required',
      'policies[1].namespace: required',
      'policies[2]: duplicate policy shop/p (also policies[0])',
      'policies[3]: duplicate policy shop/p (also policies[0])',
      'policies[3].selector.app: must be a string',
      'policies[3].rules[0].to: must be a list',
      'policies[3].rules[1]: must be a mapping',
    ],
  );
  t.same(validatePolicies([{ ...ok, rules: [{ to: [{ paths: 'x' }] }] }], 'spec.policies'), ['spec.policies[0].rules[0].to[0].paths: must be a list']);
});
