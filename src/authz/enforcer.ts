import type { MeshConfig, Workload } from '../config/types.js';
import type { Logger } from '../telemetry/log.js';
import type { Metrics } from '../telemetry/metrics.js';
import type { StateStore } from '../state/store.js';
import type { Endpoint } from '../cluster/endpoint.js';
import { WeftError } from '../errors.js';
import { compilePolicies, type CompiledPolicies, type Decision } from './engine.js';
import { JwtAuthenticator, type HeaderMap } from './jwt.js';
import type { AuthzVerdict } from '../proxy/l7/attempt.js';
import type { RequestView } from '../proxy/l7/request.js';

/** The parts of a request that authorization reads (the L7 pipeline's protocol-free view). */
export type HttpRequestView = Pick<RequestView, 'method' | 'path' | 'authority'> & { headers: HeaderMap };

/** Who is calling, as the destination's agent established it. */
export interface PeerIdentity {
  /** SPIFFE ID without `spiffe://`: from the verified tunnel certificate, or from the local source workload. */
  principal?: string;
  namespace?: string;
  ip: string;
}

export function principalOf(trustDomain: string, w: Pick<Workload, 'namespace' | 'serviceAccount'>): string {
  return `${trustDomain}/ns/${w.namespace}/sa/${w.serviceAccount}`;
}

/**
 * Authorization and request authentication where the destination workload lives: policies
 * are compiled once per config change, then evaluated per request (HTTP) or per connection
 * (TCP, before any byte reaches the pod). Every denial is logged with the deciding policy
 * and counted in `weft_authz_denied_total{policy}`.
 */
export class Enforcer {
  private compiled: CompiledPolicies;
  private readonly jwt: JwtAuthenticator;
  private readonly log: Logger;
  private policiesJson = '';
  private rasJson = '';

  constructor(
    private readonly state: StateStore,
    private readonly metrics: Metrics,
    log: Logger,
  ) {
    this.log = log.child({ component: 'authz' });
    const cfg = state.config;
    this.compiled = compilePolicies(cfg.policies, { trustDomain: cfg.mesh.trustDomain });
    this.jwt = new JwtAuthenticator(cfg.requestAuthentications, { logger: this.log as never, allowLocalUris: cfg.agent.jwksAllowLocalUris, nodeAddresses: [cfg.node.address] });
    this.policiesJson = JSON.stringify(cfg.policies);
    this.rasJson = JSON.stringify(cfg.requestAuthentications);
  }

  /** Recompile after a config change (the config was validated already). */
  update(cfg: MeshConfig): void {
    const p = JSON.stringify(cfg.policies);
    if (p !== this.policiesJson) {
      this.compiled = compilePolicies(cfg.policies, { trustDomain: cfg.mesh.trustDomain });
      this.policiesJson = p;
    }
    const r = JSON.stringify(cfg.requestAuthentications);
    if (r !== this.rasJson) {
      this.jwt.update(cfg.requestAuthentications);
      this.rasJson = r;
    }
  }

  private destination(ep: Endpoint): Workload | undefined {
    return this.state.workload(ep.info.namespace, ep.info.workload);
  }

  /** Local source workload -> peer identity (same-node traffic: the cgroup told us who it is). */
  peerOfLocal(source: Workload | undefined, ip: string): PeerIdentity {
    if (!source) return { ip };
    return { principal: principalOf(this.state.config.mesh.trustDomain, source), namespace: source.namespace, ip };
  }

  /** Whether any DENY or ALLOW policy selects `w`: when none does, every connection to it is allowed. */
  governs(w: Workload): boolean {
    const wp = this.compiled.forWorkload(w);
    return wp.deny.length > 0 || wp.allow.length > 0;
  }

  /**
   * The destination workload of `ep` is not (or no longer) in the state: nothing can be said
   * about the policies that select it, so the connection or request is refused (fail closed)
   * rather than let through unchecked.
   */
  private unknownDestination(peer: PeerIdentity, ep: Endpoint, protocol: string): Decision {
    const d: Decision = { allowed: false, policy: 'unknown-destination' };
    this.metrics.authzDenied.inc({ policy: d.policy! });
    this.log.warn(
      { policy: d.policy, protocol, src: peer.principal, src_ip: peer.ip, endpoint: ep.id, dst: `${ep.info.namespace}/${ep.info.workload}` },
      'refused: the destination workload is unknown (fail closed)',
    );
    return d;
  }

  /** TCP: may `peer` open a connection to `ep`? */
  tcp(peer: PeerIdentity, ep: Endpoint): Decision {
    const dst = this.destination(ep);
    if (!dst) return this.unknownDestination(peer, ep, 'tcp');
    const d = this.compiled.forWorkload(dst).evaluate({ protocol: 'tcp', sourcePrincipal: peer.principal, sourceNamespace: peer.namespace, sourceIp: peer.ip, port: ep.info.port });
    if (!d.allowed) this.denied(d, peer, dst, ep, 'tcp');
    return d;
  }

  /**
   * HTTP (and each gRPC call): authenticate the request's JWT, then authorize; returns the
   * verdict (the error to answer with, or headers to strip), undefined to let it through as
   * is. Synchronous unless a JWT rule applies to the destination (verifying a token is
   * asynchronous): the proxy's common path then does not wait for a microtask.
   */
  http(peer: PeerIdentity, ep: Endpoint, req: HttpRequestView): AuthzVerdict | undefined | Promise<AuthzVerdict | undefined> {
    const dst = this.destination(ep);
    if (!dst) {
      this.unknownDestination(peer, ep, 'http');
      return { deny: new WeftError('WEFT_ERR_DENIED', 'the destination workload is unknown') };
    }
    if (this.jwt.appliesTo(dst)) return this.httpWithJwt(peer, ep, dst, req);
    return this.authorizeHttp(peer, ep, dst, req, undefined);
  }

  private async httpWithJwt(peer: PeerIdentity, ep: Endpoint, dst: Workload, req: HttpRequestView): Promise<AuthzVerdict | undefined> {
    const authn = await this.jwt.authenticate(dst, req.headers);
    if (!authn.ok) {
      this.log.warn({ src: peer.principal, src_ip: peer.ip, dst: `${dst.namespace}/${dst.name}`, reason: authn.reason }, 'request refused: invalid JWT');
      return { deny: new WeftError('WEFT_ERR_UNAUTHENTICATED', `invalid token: ${authn.reason}`) };
    }
    const denied = this.authorizeHttp(peer, ep, dst, req, authn.principal);
    if (denied !== undefined) return denied;
    // A token that must not be forwarded is stripped by the proxy.
    if (authn.principal && authn.forwardOriginalToken === false && authn.header) return { removeHeaders: [authn.header.toLowerCase()] };
    return undefined;
  }

  private authorizeHttp(peer: PeerIdentity, ep: Endpoint, dst: Workload, req: HttpRequestView, requestPrincipal: string | undefined): AuthzVerdict | undefined {
    const host = req.authority;
    const d = this.compiled.forWorkload(dst).evaluate({
      protocol: 'http',
      sourcePrincipal: peer.principal,
      sourceNamespace: peer.namespace,
      sourceIp: peer.ip,
      requestPrincipal,
      port: ep.info.port,
      method: req.method,
      path: req.path,
      host,
    });
    if (d.allowed) return undefined;
    this.denied(d, peer, dst, ep, 'http', req);
    const err = new WeftError('WEFT_ERR_DENIED', `denied by ${d.policy ?? 'policy'}`) as WeftError & { policy?: string };
    err.policy = d.policy;
    return { deny: err };
  }

  private denied(d: Decision, peer: PeerIdentity, dst: Workload, ep: Endpoint, protocol: string, req?: HttpRequestView): void {
    this.metrics.authzDenied.inc({ policy: d.policy ?? 'unknown' });
    this.log.warn(
      { policy: d.policy, action: d.action, protocol, src: peer.principal, src_ip: peer.ip, dst: `${dst.namespace}/${dst.name}`, endpoint: ep.id, method: req?.method, path: req?.path },
      protocol === 'tcp' ? 'connection denied by authorization policy' : 'request denied by authorization policy',
    );
  }

  describe(): unknown {
    return { policies: this.compiled.describe(this.state.allWorkloads() as Workload[]), requestAuthentication: this.jwt.describe(this.state.allWorkloads() as Workload[]) };
  }

  close(): void {
    this.jwt.close();
  }
}
