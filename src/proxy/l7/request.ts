/**
 * The request as every L7 stage sees it, whatever the codec (HTTP/1.1 or HTTP/2) that
 * parsed it: routing, hashing and authorization read this view and nothing else.
 */

/** Header values by lower-case name, as node:http and node:http2 present them. */
export type HeaderMap = Readonly<Record<string, string | string[] | undefined>>;

export interface RequestView {
  readonly method: string;
  /** `Host` (HTTP/1.1) or `:authority` (HTTP/2); undefined when the client sent none. */
  readonly authority: string | undefined;
  /** The request target as sent: path and query (for gRPC, `/package.Service/Method`). */
  readonly path: string;
  readonly headers: HeaderMap;
  /** A gRPC call (HTTP/2 with `content-type: application/grpc*`). */
  readonly grpc: boolean;
}

/** Anything that can produce the view on demand (codecs build it lazily: most requests never need it). */
export interface HasRequestView {
  view(): RequestView;
}
