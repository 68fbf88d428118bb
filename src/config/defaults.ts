/**
 * Every default the loader fills in, in one place so that the Kubernetes discovery (CRDs)
 * can apply the same ones. Durations in ms. types.ts documents each field with its default.
 */
import type { CircuitBreakerPolicy, ConnectionPoolPolicy, HealthCheckPolicy, LoadBalancerType, OutlierDetectionPolicy, PeerAuthMode, RetryPolicy } from './types.js';

export const DEFAULT_TRUST_DOMAIN = 'cluster.local';
export const DEFAULT_STATE_DIR = '/var/lib/weft';
export const DEFAULT_SERVICE_ACCOUNT = 'default';
export const DEFAULT_PEER_AUTHENTICATION: PeerAuthMode = 'strict';
/** Namespace label that sets the mTLS mode when the `peerAuthentication:` key is absent. */
export const PEER_AUTH_LABEL = 'weft.io/peer-authentication';

export const DEFAULT_AGENT = {
  drainTimeout: 20_000,
  logLevel: 'info',
  jwksAllowLocalUris: false,
  maxDownstreamConnections: { outbound: 16_384, inbound: 4_096, tunnel: 16_384 },
} as const;
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

export const DEFAULT_LOAD_BALANCER: LoadBalancerType = 'round-robin';
export const DEFAULT_RING_SIZE = 1024;
export const DEFAULT_MAGLEV_TABLE_SIZE = 65537;

/**
 * Whole-request timeout when a service sets none: 15s, Envoy's default route timeout. An
 * upstream that hangs must not pin a client and a proxy slot forever; `timeout: 0` opts out.
 */
export const DEFAULT_TIMEOUT = 15_000;

export const DEFAULT_CONNECTION_POOL: ConnectionPoolPolicy = {
  maxConnections: 1024,
  maxPendingRequests: 1024,
  maxRequests: 1024,
  connectTimeout: 5_000,
  idleTimeout: 3_600_000,
};

/** Applied only when a service has a `healthCheck:` key. */
export const DEFAULT_HEALTH_CHECK: HealthCheckPolicy = {
  type: 'tcp',
  path: '/healthz',
  interval: 5_000,
  timeout: 1_000,
  unhealthyThreshold: 3,
  healthyThreshold: 2,
  jitter: 0.1,
};

/** Applied only when a service has an `outlierDetection:` key (Envoy's defaults, but 10% ejection cap). */
export const DEFAULT_OUTLIER_DETECTION: OutlierDetectionPolicy = {
  consecutive5xx: 5,
  consecutiveGatewayErrors: 5,
  interval: 10_000,
  baseEjectionTime: 30_000,
  maxEjectionTime: 300_000,
  maxEjectionPercent: 10,
  successRateMinimumHosts: 5,
  successRateRequestVolume: 100,
  successRateStdevFactor: 1.9,
  panicThreshold: 50,
};

/**
 * Applied only when a service has a `retries:` key. retryOn follows Envoy's `5xx` plus the
 * connection-level failures; perTryTimeout 0 means each try may use what is left of the
 * whole-request timeout.
 */
export const DEFAULT_RETRIES: RetryPolicy = {
  attempts: 2,
  perTryTimeout: 0,
  retryOn: ['connect-failure', 'reset', '5xx'],
  retriableStatusCodes: [],
  budget: { percent: 20, minPerSecond: 10 },
  backoff: { base: 25, max: 250 },
};

/** Applied only when a service has a `circuitBreaker:` key. */
export const DEFAULT_CIRCUIT_BREAKER: CircuitBreakerPolicy = {
  consecutiveFailures: 5,
  openDuration: 5_000,
  maxOpenDuration: 60_000,
  halfOpenRequests: 1,
};
