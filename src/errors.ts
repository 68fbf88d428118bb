/**
 * One base class, one stable code per failure. The codes that an HTTP client can see map
 * to the `x-weft-error` header values of DESIGN.md ("Behaviour users rely on").
 */

export type WeftErrorCode =
  | 'WEFT_ERR_NO_HEALTHY_UPSTREAM'
  | 'WEFT_ERR_CIRCUIT_OPEN'
  | 'WEFT_ERR_OVERFLOW'
  | 'WEFT_ERR_UPSTREAM_TIMEOUT'
  | 'WEFT_ERR_UPSTREAM_RESET'
  | 'WEFT_ERR_CONNECT_FAILURE'
  | 'WEFT_ERR_DENIED'
  | 'WEFT_ERR_UNAUTHENTICATED'
  | 'WEFT_ERR_CONFIG'
  | 'WEFT_ERR_BPF'
  | 'WEFT_ERR_CAPTURE'
  | 'WEFT_ERR_IDENTITY'
  | 'WEFT_ERR_BAD_REQUEST'
  | 'WEFT_ERR_NO_ROUTE'
  | 'WEFT_ERR_NO_BACKEND';

/**
 * The `x-weft-error` value, HTTP status and gRPC status (DESIGN.md "Protocols") for each
 * client-visible failure.
 */
export const HTTP_ERRORS: Partial<Record<WeftErrorCode, { header: string; status: number; grpc: number }>> = {
  WEFT_ERR_NO_HEALTHY_UPSTREAM: { header: 'no_healthy_upstream', status: 503, grpc: 14 },
  WEFT_ERR_CIRCUIT_OPEN: { header: 'circuit_open', status: 503, grpc: 14 },
  WEFT_ERR_OVERFLOW: { header: 'overflow', status: 503, grpc: 14 },
  WEFT_ERR_UPSTREAM_RESET: { header: 'upstream_reset', status: 503, grpc: 14 },
  WEFT_ERR_CONNECT_FAILURE: { header: 'connect_failure', status: 503, grpc: 14 },
  WEFT_ERR_UPSTREAM_TIMEOUT: { header: 'upstream_timeout', status: 504, grpc: 4 },
  WEFT_ERR_DENIED: { header: 'denied', status: 403, grpc: 7 },
  WEFT_ERR_UNAUTHENTICATED: { header: 'unauthenticated', status: 401, grpc: 16 },
  // Routes (DESIGN.md "Routes"): no rule of the port's routes matched (gRPC UNIMPLEMENTED, as
  // for an HTTP 404); the matched rule's backend Service does not exist (gRPC INTERNAL).
  WEFT_ERR_NO_ROUTE: { header: 'no_route', status: 404, grpc: 12 },
  WEFT_ERR_NO_BACKEND: { header: 'no_backend', status: 500, grpc: 13 },
  // gRPC's own mapping of HTTP 400 (doc/http-grpc-status-mapping.md).
  WEFT_ERR_BAD_REQUEST: { header: 'bad_request', status: 400, grpc: 13 },
};

export class WeftError extends Error {
  readonly code: WeftErrorCode;
  constructor(code: WeftErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'WeftError';
    this.code = code;
  }
}

export class ConfigError extends WeftError {
  /** Every problem found, each `path: what is wrong`. */
  readonly problems: string[];
  constructor(source: string, problems: string[]) {
    super('WEFT_ERR_CONFIG', `invalid config ${source}: ${problems.join('; ')}`);
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

/** A failed syscall in the native addon: carries errno, its symbolic code and the operation. */
export class BpfError extends WeftError {
  readonly errno: number;
  readonly syscallCode: string;
  readonly op: string;
  constructor(op: string, errno: number, syscallCode: string, detail?: string) {
    super('WEFT_ERR_BPF', `${op} failed: ${syscallCode} (errno ${errno})${detail ? `: ${detail}` : ''}`);
    this.name = 'BpfError';
    this.errno = errno;
    this.syscallCode = syscallCode;
    this.op = op;
  }
}
