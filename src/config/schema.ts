/**
 * The JSON Schema of the raw YAML (embedded mode, DESIGN.md), and its validation with
 * problems worded for people: `services[0].trafficPolicy.loadBalancer.type: must be one of ...`.
 *
 * The schema checks shape: keys, types, ranges, enums, address and duration syntax. Every
 * mapping is closed (`additionalProperties: false`) so that a misspelt key is an error, not a
 * silently ignored setting. Rules that span fields or objects live in normalize.ts.
 *
 * Compiling the schema with ajv costs ~350 ms of CPU (and loading ajv ~75 ms more): time an
 * agent restarted after a crash must not spend before it serves its node's pods. So the build
 * compiles it once into JavaScript (config/schema-build.ts writes schema-validator.cjs beside
 * this module, with a hash of the schema and options), and the agent loads that. Without the
 * file, or with one compiled from another schema, the schema is compiled here as before.
 */
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import { setFlagsFromString } from 'node:v8';
import type { Ajv, ErrorObject, Options, SchemaObject, ValidateFunction } from 'ajv';
import { LOG_LEVELS } from './defaults.js';
import { parseDuration } from './duration.js';
import { formatPath, pointerSegments, type PathSegment } from './path.js';
import { DNS_LABEL, DNS_SUBDOMAIN, HEADER_NAME, HTTP_METHOD, isIPv4 } from './patterns.js';

export const LOAD_BALANCER_TYPES = ['random', 'round-robin', 'weighted-round-robin', 'least-request', 'peak-ewma', 'ring-hash', 'maglev'] as const;
export const RETRY_ON = ['connect-failure', 'reset', '5xx', 'gateway-error', 'retriable-status-codes', 'unavailable', 'resource-exhausted', 'cancelled', 'deadline-exceeded', 'internal'] as const;

// --- builders -------------------------------------------------------------------------

function obj(properties: Record<string, SchemaObject>, required: string[] = [], extra: SchemaObject = {}): SchemaObject {
  return { type: 'object', properties, required, additionalProperties: false, ...extra };
}
function list(items: SchemaObject, minItems = 0): SchemaObject {
  return minItems ? { type: 'array', items, minItems } : { type: 'array', items };
}
function int(minimum: number, maximum?: number): SchemaObject {
  return maximum === undefined ? { type: 'integer', minimum } : { type: 'integer', minimum, maximum };
}
function num(minimum: number, maximum?: number): SchemaObject {
  return maximum === undefined ? { type: 'number', minimum } : { type: 'number', minimum, maximum };
}
function oneOfStrings(values: readonly string[]): SchemaObject {
  return { type: 'string', enum: [...values] };
}
function str(pattern: string, message: string): SchemaObject {
  return { type: 'string', pattern, message };
}

const duration: SchemaObject = { weftDuration: true };
const nonEmpty: SchemaObject = { type: 'string', minLength: 1 };
const ipv4: SchemaObject = { type: 'string', format: 'ipv4', message: 'must be an IPv4 address like 10.77.0.1' };
const port: SchemaObject = int(1, 65535);
const agentPort: SchemaObject = int(0, 65535);
const labelName = str(DNS_LABEL, 'must be a DNS label: lower-case letters, digits and "-", at most 63 characters');
const subdomainName = str(DNS_SUBDOMAIN, 'must be a DNS name: lower-case letters, digits, "-" and ".", at most 253 characters');
const labels: SchemaObject = {
  type: 'object',
  additionalProperties: { type: 'string', message: 'must be a string (quote numbers and booleans: "1", "true")' },
};
const headerName = str(HEADER_NAME, 'must be an HTTP header name');
const absolutePath = str('^/', 'must be an absolute path');
const stringList: SchemaObject = list(nonEmpty, 1);

// --- the schema ------------------------------------------------------------------------

const hashOn = obj({ header: headerName, sourceIp: { type: 'boolean' } }, [], { minProperties: 1 });

const trafficPolicy = obj({
  loadBalancer: obj({
    type: oneOfStrings(LOAD_BALANCER_TYPES),
    hashOn,
    minRingSize: int(1, 8_388_608),
    tableSize: int(1, 5_000_011),
  }),
  healthCheck: obj({
    type: oneOfStrings(['tcp', 'http']),
    path: str('^/', 'must be an absolute request path, like /healthz'),
    interval: duration,
    timeout: duration,
    unhealthyThreshold: int(1),
    healthyThreshold: int(1),
    jitter: num(0, 1),
  }),
  outlierDetection: obj({
    consecutive5xx: int(0),
    consecutiveGatewayErrors: int(0),
    interval: duration,
    baseEjectionTime: duration,
    maxEjectionTime: duration,
    maxEjectionPercent: num(0, 100),
    successRateMinimumHosts: int(0),
    successRateRequestVolume: int(1),
    successRateStdevFactor: { type: 'number', exclusiveMinimum: 0 },
    panicThreshold: num(0, 100),
  }),
  retries: obj({
    attempts: int(0, 10),
    perTryTimeout: duration,
    retryOn: { ...list(oneOfStrings(RETRY_ON), 1), uniqueItems: true },
    retriableStatusCodes: { ...list(int(100, 599), 1), uniqueItems: true },
    budget: obj({ percent: num(0, 100), minPerSecond: int(0) }),
    backoff: obj({ base: duration, max: duration }),
  }),
  timeout: duration,
  connectionPool: obj({
    maxConnections: int(1),
    maxPendingRequests: int(1),
    maxRequests: int(1),
    connectTimeout: duration,
    idleTimeout: duration,
  }),
  circuitBreaker: obj({
    consecutiveFailures: int(1),
    openDuration: duration,
    maxOpenDuration: duration,
    halfOpenRequests: int(1),
  }),
  fallback: obj({ service: labelName }, ['service']),
  // Upgrade protocol names (RFC 9110 tokens, without a version): websocket, h2c, ...
  upgrades: { ...list(str("^[A-Za-z0-9!#$%&'*+.^_`|~-]+$", 'must be an Upgrade protocol name, like websocket'), 0), uniqueItems: true },
});

const servicePort = obj(
  {
    name: labelName,
    port,
    targetPort: port,
    protocol: oneOfStrings(['http', 'http2', 'grpc', 'tcp']),
  },
  ['port'],
);

const jwtRule = obj(
  {
    issuer: nonEmpty,
    audiences: list(nonEmpty),
    jwksFile: nonEmpty,
    jwksUri: str('^https?://[^\\s]+$', 'must be an http:// or https:// URL'),
    fromHeader: headerName,
    forwardOriginalToken: { type: 'boolean' },
  },
  ['issuer'],
);

const policySource = obj(
  {
    principals: stringList,
    notPrincipals: stringList,
    namespaces: stringList,
    notNamespaces: stringList,
    requestPrincipals: stringList,
    notRequestPrincipals: stringList,
    ipBlocks: stringList,
    notIpBlocks: stringList,
  },
  [],
  { minProperties: 1 },
);

const method = str(HTTP_METHOD, 'must be an upper-case HTTP method, like GET');
const policyOperation = obj(
  {
    ports: list(port, 1),
    notPorts: list(port, 1),
    methods: list(method, 1),
    notMethods: list(method, 1),
    paths: stringList,
    notPaths: stringList,
    hosts: stringList,
    notHosts: stringList,
  },
  [],
  { minProperties: 1 },
);

// --- routes (Gateway API HTTPRoute / GRPCRoute / TCPRoute on a Service, DESIGN.md "Routes") ---

export const PATH_MATCH_TYPES = ['Exact', 'PathPrefix', 'RegularExpression'] as const;
export const STRING_MATCH_TYPES = ['Exact', 'RegularExpression'] as const;
export const ROUTE_KINDS = ['HTTPRoute', 'GRPCRoute', 'TCPRoute'] as const;
export const ROUTE_FILTER_TYPES = ['RequestHeaderModifier', 'ResponseHeaderModifier', 'URLRewrite', 'RequestRedirect', 'RequestMirror'] as const;
export const REDIRECT_STATUS_CODES = [301, 302, 303, 307, 308] as const;

const valueMatch = obj({ type: oneOfStrings(STRING_MATCH_TYPES), name: headerName, value: { type: 'string' } }, ['name', 'value']);
const headerPair = obj({ name: headerName, value: { type: 'string' } }, ['name', 'value']);
const headerModifier = obj({ set: list(headerPair), add: list(headerPair), remove: list(headerName) }, [], { minProperties: 1 });
const pathModifier = obj(
  {
    type: oneOfStrings(['ReplaceFullPath', 'ReplacePrefixMatch']),
    replaceFullPath: absolutePath,
    replacePrefixMatch: absolutePath,
  },
  ['type'],
);
const hostname = str('^[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?$', 'must be a host name');
const backendName = obj({ name: labelName, port }, ['name']);
const percent = num(0, 100);
const routeMatch = obj({
  path: obj({ type: oneOfStrings(PATH_MATCH_TYPES), value: nonEmpty }, ['value']),
  headers: list(valueMatch),
  queryParams: list(obj({ type: oneOfStrings(STRING_MATCH_TYPES), name: nonEmpty, value: { type: 'string' } }, ['name', 'value'])),
  // HTTPRoute: an HTTP method; GRPCRoute: { service, method } (normalize.ts checks which the kind takes).
  method: { weftRouteMethod: true },
});
const routeFilter = obj(
  {
    type: oneOfStrings(ROUTE_FILTER_TYPES),
    requestHeaderModifier: headerModifier,
    responseHeaderModifier: headerModifier,
    urlRewrite: obj({ hostname, path: pathModifier }, [], { minProperties: 1 }),
    requestRedirect: obj({
      scheme: oneOfStrings(['http', 'https']),
      hostname,
      port,
      path: pathModifier,
      statusCode: { type: 'integer', enum: [...REDIRECT_STATUS_CODES] },
    }),
    requestMirror: obj({ backendRef: backendName, percent }, ['backendRef']),
  },
  ['type'],
);
const routeRule = obj({
  name: labelName,
  matches: list(routeMatch),
  filters: list(routeFilter),
  backendRefs: list(obj({ name: labelName, port, weight: int(0, 1_000_000) }, ['name'])),
  timeouts: obj({ request: duration, backendRequest: duration }, [], { minProperties: 1 }),
  retry: obj({ attempts: int(0, 10), codes: { ...list(int(400, 599), 1), uniqueItems: true }, backoff: duration }),
  fault: obj(
    {
      delay: obj({ fixedDelay: duration, percent }, ['fixedDelay']),
      abort: obj({ httpStatus: int(200, 599), percent }, ['httpStatus']),
    },
    [],
    { minProperties: 1 },
  ),
});
const route = obj(
  {
    name: subdomainName,
    namespace: labelName,
    kind: oneOfStrings(ROUTE_KINDS),
    parentRefs: list(obj({ name: labelName, port }, ['name']), 1),
    rules: list(routeRule, 1),
  },
  ['name', 'namespace', 'parentRefs', 'rules'],
);

/** The raw YAML of embedded mode. */
export const CONFIG_SCHEMA: SchemaObject = obj(
  {
    node: obj({ name: subdomainName, address: ipv4 }, ['name', 'address']),
    nodes: list(obj({ name: subdomainName, address: ipv4 }, ['name', 'address'])),
    mesh: obj({ trustDomain: subdomainName }),
    // 0: any free port (tests); Agent.addresses tells which.
    ports: obj({ outbound: agentPort, inbound: agentPort, tunnel: agentPort, admin: agentPort, metrics: agentPort }),
    ca: obj({
      url: str('^https://[^\\s]+$', 'must be an https:// URL'),
      rootCert: nonEmpty,
      tokenFile: nonEmpty,
      certTtl: duration,
    }),
    stateDir: nonEmpty,
    namespaces: list(obj({ name: labelName, labels, peerAuthentication: oneOfStrings(['strict', 'permissive']) }, ['name'])),
    workloads: list(
      obj(
        {
          name: subdomainName,
          namespace: labelName,
          workload: subdomainName,
          node: subdomainName,
          ip: ipv4,
          serviceAccount: subdomainName,
          labels,
          weight: int(1, 1_000_000),
          ready: { type: 'boolean' },
          peerIdentity: { type: 'boolean' },
          cgroup: absolutePath,
          uid: nonEmpty,
          probePorts: list(port),
        },
        ['name', 'namespace', 'ip'],
      ),
    ),
    services: list(
      obj(
        {
          name: labelName,
          namespace: labelName,
          vip: ipv4,
          ports: list(servicePort, 1),
          selector: labels,
          trafficPolicy,
        },
        ['name', 'namespace', 'vip', 'ports'],
      ),
    ),
    requestAuthentications: list(obj({ name: subdomainName, namespace: labelName, selector: labels, jwtRules: list(jwtRule, 1) }, ['name', 'namespace', 'jwtRules'])),
    policies: list(
      obj(
        {
          name: subdomainName,
          namespace: labelName,
          selector: labels,
          action: oneOfStrings(['ALLOW', 'DENY']),
          rules: list(obj({ from: list(policySource), to: list(policyOperation) })),
        },
        ['name', 'namespace'],
      ),
    ),
    routes: list(route),
    agent: obj({
      drainTimeout: duration,
      logLevel: oneOfStrings(LOG_LEVELS),
      jwksAllowLocalUris: { type: 'boolean' },
      maxDownstreamConnections: obj({ outbound: int(1), inbound: int(1), tunnel: int(1) }),
      workers: int(1, 256),
    }),
  },
  ['node'],
  // `x-` keys are ignored (a docker-compose convention): a place for YAML anchors to share.
  { patternProperties: { '^x-': {} } },
);

// --- validation ------------------------------------------------------------------------

/** The `weftDuration` keyword: parseDuration's own message becomes the problem. */
function validateDuration(_schema: boolean, data: unknown): boolean {
  try {
    parseDuration(data);
    return true;
  } catch (err) {
    validateDuration.errors = [{ keyword: 'weftDuration', message: (err as Error).message, params: {} }];
    return false;
  }
}
validateDuration.errors = undefined as Partial<ErrorObject>[] | undefined;

const GRPC_METHOD_KEYS = new Set(['type', 'service', 'method']);

/**
 * The `weftRouteMethod` keyword: a route match's `method` is an HTTP method (HTTPRoute) or
 * `{ type, service, method }` (GRPCRoute). One message instead of anyOf's two branches of noise.
 */
function validateRouteMethod(_schema: boolean, data: unknown): boolean {
  const fail = (message: string) => {
    validateRouteMethod.errors = [{ keyword: 'weftRouteMethod', message, params: {} }];
    return false;
  };
  if (typeof data === 'string') {
    return new RegExp(HTTP_METHOD).test(data) ? true : fail(`must be an upper-case HTTP method, like GET (got ${shown(data)})`);
  }
  if (data === null || typeof data !== 'object' || Array.isArray(data)) {
    return fail(`must be an HTTP method like GET (HTTPRoute), or { service, method } (GRPCRoute) (got ${shown(data)})`);
  }
  const o = data as Record<string, unknown>;
  for (const k of Object.keys(o)) if (!GRPC_METHOD_KEYS.has(k)) return fail(`unknown key "${k}"; expected one of: type, service, method`);
  if (o.service === undefined && o.method === undefined) return fail('must set at least one of: service, method');
  for (const k of ['service', 'method'] as const) {
    if (o[k] !== undefined && (typeof o[k] !== 'string' || o[k] === '')) return fail(`${k} must be a non-empty string`);
  }
  if (o.type !== undefined && o.type !== 'Exact' && o.type !== 'RegularExpression') return fail(`type must be one of Exact, RegularExpression (got ${shown(o.type)})`);
  return true;
}
validateRouteMethod.errors = undefined as Partial<ErrorObject>[] | undefined;

/** The formats and keywords of CONFIG_SCHEMA (the precompiled validator requires them from here). */
export const SCHEMA_FORMATS = { ipv4: { type: 'string' as const, validate: isIPv4 } };
export const SCHEMA_KEYWORDS = { weftDuration: validateDuration, weftRouteMethod: validateRouteMethod };

const AJV_OPTIONS = { allErrors: true, strict: true, verbose: true } as const;

const require = createRequire(import.meta.url);

/** The ajv instance CONFIG_SCHEMA is compiled with, here or at build time (`extra`: its code options). */
export function configAjv(extra: Options = {}): Ajv {
  const { Ajv } = require('ajv') as typeof import('ajv');
  const ajv = new Ajv({ ...AJV_OPTIONS, ...extra });
  ajv.addVocabulary(['message']);
  ajv.addFormat('ipv4', SCHEMA_FORMATS.ipv4);
  for (const [keyword, validate] of Object.entries(SCHEMA_KEYWORDS)) ajv.addKeyword({ keyword, schemaType: 'boolean', errors: true, validate });
  return ajv;
}

/** What a precompiled validator must have been compiled from: the schema and the options. */
export function schemaHash(): string {
  return createHash('sha256')
    .update(JSON.stringify({ schema: CONFIG_SCHEMA, options: AJV_OPTIONS, formats: Object.keys(SCHEMA_FORMATS), keywords: Object.keys(SCHEMA_KEYWORDS) }))
    .digest('hex');
}

/** The file config/schema-build.ts writes, beside this module. */
export const PRECOMPILED_VALIDATOR = 'schema-validator.cjs';

/** How the validator in use was made (`schemaValidatorSource()`, for tests and the start-up bench). */
let validatorSource: 'precompiled' | 'compiled' | undefined;

/**
 * require(), with V8 compiling every function of the module at once. The precompiled
 * validator is one 400 KB function: compiled lazily, V8 pre-parses it at the require and
 * parses and compiles it again at the first check (20-50 ms of an agent's start-up); compiled
 * eagerly it is parsed once, and Node's compile cache (bin/weft.js) keeps its bytecode with
 * the module's, so a restarted agent compiles none of it (docs/benchmarks/startup.md). `lazy`
 * is read when a script is parsed: it is off for this one synchronous require only.
 */
function requireEagerly(id: string): unknown {
  setFlagsFromString('--no-lazy');
  try {
    return require(id);
  } finally {
    setFlagsFromString('--lazy');
  }
}

function buildValidator(): ValidateFunction {
  try {
    // schema-build.ts: a function of the formats and keywords, which it gets from here.
    const precompiled = requireEagerly(`./${PRECOMPILED_VALIDATOR}`) as ((schema: { SCHEMA_FORMATS: typeof SCHEMA_FORMATS; SCHEMA_KEYWORDS: typeof SCHEMA_KEYWORDS }) => ValidateFunction) & {
      schemaHash?: string;
    };
    if (typeof precompiled === 'function' && precompiled.schemaHash === schemaHash()) {
      validatorSource = 'precompiled';
      return precompiled({ SCHEMA_FORMATS, SCHEMA_KEYWORDS });
    }
  } catch (err) {
    // Only the validator's own absence (running from src/): not a module it requires.
    const e = err as NodeJS.ErrnoException;
    if (e.code !== 'MODULE_NOT_FOUND' || !e.message.split('\n')[0]!.includes(PRECOMPILED_VALIDATOR)) throw err;
  }
  validatorSource = 'compiled';
  return configAjv().compile(CONFIG_SCHEMA);
}

let validator: ValidateFunction | undefined;

/** 'precompiled' when the build's validator is in use, 'compiled' when the schema was compiled here; undefined before the first check. */
export function schemaValidatorSource(): 'precompiled' | 'compiled' | undefined {
  return validatorSource;
}

/**
 * Check the raw (parsed YAML) config against CONFIG_SCHEMA.
 * @returns every problem found, `path: what is wrong`; empty when the shape is valid.
 */
export function schemaProblems(raw: unknown): string[] {
  validator ??= buildValidator();
  if (validator(raw)) return [];
  const out: string[] = [];
  for (const err of validator.errors ?? []) {
    const [segments, message] = describe(err);
    const line = `${formatPath(segments)}: ${message}`;
    if (!out.includes(line)) out.push(line);
  }
  return out;
}

const TYPE_NAMES: Record<string, string> = {
  object: 'a mapping',
  array: 'a list',
  string: 'a string',
  integer: 'an integer',
  number: 'a number',
  boolean: 'a boolean (true or false)',
};

function shown(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'object') return 'a mapping';
  const text = JSON.stringify(value);
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

/** `must be an integer from 1 to 65535`, `must be a number >= 0`, `must be a number > 0`. */
function range(schema: SchemaObject): string {
  const kind = schema.type === 'integer' ? 'an integer' : 'a number';
  const { minimum, maximum, exclusiveMinimum } = schema as { minimum?: number; maximum?: number; exclusiveMinimum?: number };
  if (minimum !== undefined && maximum !== undefined) return `must be ${kind} from ${minimum} to ${maximum}`;
  if (minimum !== undefined) return `must be ${kind} >= ${minimum}`;
  if (maximum !== undefined) return `must be ${kind} <= ${maximum}`;
  return `must be ${kind} > ${exclusiveMinimum}`;
}

/** Edit distance, for "did you mean" on unknown keys. */
function distance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cur = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, prev + (a[i - 1]!.toLowerCase() === b[j - 1]!.toLowerCase() ? 0 : 1));
      prev = cur;
    }
  }
  return row[b.length]!;
}

function unknownKey(key: string, allowed: string[]): string {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const candidate of allowed) {
    const d = distance(key, candidate);
    if (d < bestDistance) [best, bestDistance] = [candidate, d];
  }
  if (best !== undefined && bestDistance <= Math.max(2, Math.floor(key.length / 3))) {
    return `unknown key (did you mean "${best}"?)`;
  }
  return allowed.length ? `unknown key; expected one of: ${allowed.join(', ')}` : 'unknown key';
}

function describe(err: ErrorObject): [PathSegment[], string] {
  const segments = pointerSegments(err.instancePath);
  const schema = (err.parentSchema ?? {}) as SchemaObject;
  const got = ` (got ${shown(err.data)})`;
  switch (err.keyword) {
    case 'required':
      return [[...segments, err.params.missingProperty as string], 'is required'];
    case 'additionalProperties':
      return [[...segments, err.params.additionalProperty as string], unknownKey(err.params.additionalProperty as string, Object.keys(schema.properties ?? {}))];
    case 'minProperties':
      return [segments, `must set at least one of: ${Object.keys(schema.properties ?? {}).join(', ')}`];
    case 'type':
      if (err.data === null && schema.type === 'object') {
        return [segments, 'must be a mapping (write {} to take every default)'];
      }
      return [segments, (schema.message as string | undefined) ?? `must be ${TYPE_NAMES[String(err.params.type)] ?? err.params.type}${got}`];
    case 'enum':
      return [segments, `must be one of ${(err.params.allowedValues as unknown[]).join(', ')}${got}`];
    case 'minimum':
    case 'maximum':
    case 'exclusiveMinimum':
      return [segments, `${range(schema)}${got}`];
    case 'minItems':
      return [segments, err.params.limit === 1 ? 'must not be empty' : `must have at least ${err.params.limit} items`];
    case 'minLength':
      return [segments, 'must not be empty'];
    case 'uniqueItems': {
      const [a, b] = [err.params.i as number, err.params.j as number].sort((x, y) => x - y);
      return [segments, `must not repeat an item (items ${a} and ${b} are equal)`];
    }
    case 'pattern':
    case 'format':
      return [segments, `${(schema.message as string | undefined) ?? err.message}${got}`];
    case 'weftDuration':
    case 'weftRouteMethod':
      return [segments, err.message ?? 'must be a duration'];
    default:
      return [segments, err.message ?? `failed ${err.keyword}`];
  }
}
