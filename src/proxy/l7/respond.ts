/**
 * The respond stage: what the client sees when the agent answers itself. Every codec builds
 * its answer from one `Answer`: HTTP/1.1 and HTTP/2 send `status` with `x-weft-error`; a gRPC
 * call gets a trailers-only response (`:status 200`, `grpc-status`, `grpc-message`,
 * `x-weft-error`), as DESIGN.md "Protocols" maps them.
 */
import { HTTP_ERRORS, type WeftError, type WeftErrorCode } from '../../errors.js';
import { outlierResultForStatus, type OutlierResult } from '../../health/outlier.js';

export interface Answer {
  readonly status: number;
  /** The `x-weft-error` value; '' for an answer that is not an error of the agent (a route's redirect or injected fault). */
  readonly header: string;
  readonly grpcStatus: number;
  readonly message: string;
  /** Absent for a route's redirect or injected fault (no error in the access log). */
  readonly code?: WeftErrorCode;
  /** More headers of the answer (a redirect's `location`). */
  readonly headers?: readonly (readonly [string, string])[];
}

const UNKNOWN = { header: 'upstream_reset', status: 503, grpc: 14 };

export function answerFor(err: WeftError): Answer {
  const m = HTTP_ERRORS[err.code] ?? UNKNOWN;
  return { status: m.status, header: m.header, grpcStatus: m.grpc, message: err.message, code: err.code };
}

/** An answer for a status the codec decided itself (417, 400 for CONNECT, ...). */
export function answerStatus(status: number, header: string, message: string, code: WeftErrorCode = 'WEFT_ERR_BAD_REQUEST'): Answer {
  return { status, header, grpcStatus: grpcForHttp(status), message, code };
}

/** The `x-weft-error` value of an error code, for access logs. */
export function errorHeader(code: WeftErrorCode): string {
  return HTTP_ERRORS[code]?.header ?? code;
}

/** The headers of a trailers-only gRPC answer. */
export function grpcTrailersOnly(a: Answer): Record<string, string | number> {
  const h: Record<string, string | number> = { ':status': 200, 'content-type': 'application/grpc', 'grpc-status': a.grpcStatus, 'grpc-message': encodeURIComponent(a.message) };
  if (a.header !== '') h['x-weft-error'] = a.header;
  return h;
}

/** gRPC's mapping of an HTTP status that did not come with a grpc-status (doc/http-grpc-status-mapping.md). */
export function grpcForHttp(status: number): number {
  switch (status) {
    case 400:
      return 13;
    case 401:
      return 16;
    case 403:
      return 7;
    case 404:
      return 12;
    case 429:
    case 502:
    case 503:
    case 504:
      return 14;
    default:
      return 2;
  }
}

/** The HTTP status a gRPC status stands for (Envoy's mapping), so outlier detection and the breaker count gRPC failures as 5xx. */
export function httpForGrpc(g: number): number {
  switch (g) {
    case 0:
      return 200;
    case 1:
      return 499;
    case 3:
    case 9:
    case 11:
      return 400;
    case 4:
      return 504;
    case 5:
    case 12:
      return 404;
    case 6:
    case 10:
      return 409;
    case 7:
      return 403;
    case 8:
      return 429;
    case 14:
      return 503;
    case 16:
      return 401;
    default:
      return 500; // 2 UNKNOWN, 13 INTERNAL, 15 DATA_LOSS
  }
}

/** How an answered try counts for outlier detection: by its HTTP status, or by its gRPC status when it has one. */
export function outlierResult(status: number, grpcStatus: number | undefined): OutlierResult {
  return outlierResultForStatus(grpcStatus === undefined || status !== 200 ? status : httpForGrpc(grpcStatus));
}

/** Whether an answered try counts as a success for the circuit breaker. */
export function answeredOk(status: number, grpcStatus: number | undefined): boolean {
  return status < 500 && (grpcStatus === undefined || httpForGrpc(grpcStatus) < 500);
}
