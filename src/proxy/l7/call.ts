/**
 * One L7 request through the pipeline, whatever its codec:
 *
 *   route (route.ts) -> admission (admission.ts) -> limits -> attempt: pick -> authorize ->
 *   lease -> send (attempt.ts) -> [retry (retry.ts)] -> answer or respond (respond.ts) -> record
 *
 * `L7Call` runs these stages and knows nothing of framing; a codec (http1/exchange.ts,
 * http2/stream.ts) extends it and implements the sink hooks below: send the request to an
 * endpoint, drop the upstream of a try, write an answer of the agent's own, cut a response
 * that cannot complete. The codec reports back through `tryFailed`, `responseHead`,
 * `responseDone`, `upstreamFailed` and `clientGone` (undici's dispatch-handler shape: the
 * pipeline is the dispatcher, the codec both the request source and the response sink).
 *
 * Written as a state machine with callbacks rather than promises, and as a base class rather
 * than an object per stage: the common path (one try, a pooled connection) allocates the
 * call itself and little else.
 */
import type { Cluster } from '../../cluster/cluster.js';
import type { ClusterManager } from '../../cluster/manager.js';
import type { Endpoint } from '../../cluster/endpoint.js';
import type { RetryPolicy } from '../../config/types.js';
import type { PickContext } from '../../balancer/types.js';
import { hashKey } from '../../balancer/hash.js';
import { WeftError, type WeftErrorCode } from '../../errors.js';
import type { OutlierResult } from '../../health/outlier.js';
import type { Logger } from '../../telemetry/log.js';
import type { Metrics } from '../../telemetry/metrics.js';
import type { ConnContext } from '../context.js';
import type { Transport } from '../transport.js';
import { admit, release, settle, type Admission } from './admission.js';
import { asWeftError, classifyFailure, endLease, takeLease, type AuthzVerdict, type L7Authorizer, type LeaseHolder } from './attempt.js';
import type { HasRequestView, RequestView } from './request.js';
import { answerFor, answeredOk, grpcForHttp, outlierResult, type Answer } from './respond.js';
import { maxAttemptsFor, retryAnswer, retryDelay, retryWanted, type RetryState } from './retry.js';
import { pickBackend, routeRequest, type RouteDecision } from './route.js';
import type { L7Telemetry, RequestRecord, TelemetryConn } from './telemetry.js';
import type { HeaderModifier } from '../../config/types.js';
import type { Mirror } from './mirror.js';
import { modifyHeaders } from './routes/filters.js';
import type { CompiledRule } from './routes/table.js';
import { armDeadline, clearDeadline, type DeadlineEntry, type DeadlineList } from './deadlines.js';

/** What the pipeline needs from the proxy that runs it. */
export interface L7Deps {
  clusters: ClusterManager;
  transport: Transport;
  metrics: Metrics;
  log: Logger;
  authorize?: L7Authorizer;
  /** Sends RequestMirror copies (routes); without it, mirrors are not sent. */
  mirror?: Mirror;
}

export interface CallHost {
  readonly deps: L7Deps;
  readonly telemetry: L7Telemetry;
  /** The proxy drains: answers close their connection (HTTP/1.1) or the session goes away (HTTP/2). */
  readonly draining: boolean;
  requestStarted(): void;
  requestEnded(): void;
  /** A bug surfaced (an exception out of the proxy's own code): logged and counted. */
  internalError(err: unknown): void;
}

/** How one try ended without an answer for the client. */
interface TryFailure {
  kind: 'connect-failure' | 'reset' | 'timeout' | 'status';
  status?: number;
  grpcStatus?: number;
  error: WeftError;
  /** The retry budget was already charged for the retry this failure asks for. */
  paid?: boolean;
}

const EMPTY_PICK: PickContext = {};
/** Methods whose requests carry no body unless they say so (for mirrors of HTTP/2 requests). */
const BODYLESS = new Set(['GET', 'HEAD', 'DELETE', 'OPTIONS', 'TRACE']);

export abstract class L7Call implements LeaseHolder, RetryState, RequestRecord, HasRequestView, DeadlineEntry {
  // --- what the codec provides ---
  abstract readonly ctx: ConnContext;
  abstract readonly conn: TelemetryConn;
  abstract readonly method: string;
  abstract readonly path: string;
  abstract readonly authority: string | undefined;
  abstract readonly protocol: string;
  protected abstract readonly callHost: CallHost;

  /** The protocol-free view of the request (built lazily by the codec). */
  abstract view(): RequestView;
  /** A request header's value (several joined with `,`), for hashing. */
  protected abstract headerValue(name: string): string | undefined;
  /** Send the request on `ep` (the lease is held). Report back through the methods below. */
  protected abstract send(ep: Endpoint): void;
  /** Stop using the current try's upstream (connection or stream), or stop waiting for one. */
  protected abstract dropUpstream(): void;
  /** Write the agent's own answer; nothing of a response was sent yet. */
  protected abstract writeAnswer(a: Answer): void;
  /** A response already under way cannot complete: make the client see it cut. */
  protected abstract cut(): void;
  /** The call is over and recorded. */
  protected abstract finished(): void;
  /** The authorizer asked for these (lower-case) headers to be removed. */
  protected abstract removeHeaders(names: readonly string[]): void;
  /** Could the request be sent again now (resilience `canReplay` on what the codec holds)? */
  protected abstract canReplayNow(): boolean;
  /**
   * A route rule's edits, before the first try: send `target` instead of the received
   * request target (when defined), with these header edits applied in order.
   */
  protected abstract editRequest(target: string | undefined, mods: readonly HeaderModifier[]): void;

  // --- state ---
  started = false;
  protected done = false;
  startedAt = 0;
  cluster: Cluster | undefined = undefined;
  /** The endpoint of the current (or last) try. */
  ep: Endpoint | undefined = undefined;
  attempts = 0;
  status = 0;
  /** For response_flags: the client left (DC), a fault rule aborted (FI) or delayed (DI) the request. */
  clientLeft = false;
  faultAborted = false;
  faultDelayed = false;
  grpcStatus: number | undefined = undefined;
  protected responseStarted = false;
  /** True for gRPC: answers are trailers-only, outcomes read grpc-status. */
  grpc = false;
  /**
   * HTTP/2: the request timeout bounds the wait for the response head; after it only the
   * call's own deadline (`grpc-timeout`) applies, so a long stream is not cut.
   */
  protected timeoutUntilHead = false;
  /** The call's own deadline (ms from its start; 0 none): `grpc-timeout`. */
  protected callTimeout = 0;

  // lease (attempt.ts)
  leaseEp: Endpoint | undefined = undefined;
  leaseCluster: Cluster | undefined = undefined;
  leaseT0 = 0;

  // route, admission, retry
  protected decision: RouteDecision | undefined = undefined;
  /** The route rule that decided, if the port has routes (access logs name it). */
  routeRule: CompiledRule | undefined = undefined;
  /** ResponseHeaderModifier of the rule: the codec applies it to the response head it forwards. */
  protected responseEdits: HeaderModifier | undefined = undefined;
  private faultTimer: NodeJS.Timeout | undefined = undefined;
  private adm: Admission | undefined = undefined;
  private admOpen = false;
  private holdsRequest = false;
  private counted = false;
  retries: RetryPolicy | undefined = undefined;
  maxAttempts = 1;
  attemptNo = 0;
  deadline = Infinity;
  private callDeadline = Infinity;
  private tryDeadline = Infinity;
  private hash: number | undefined = undefined;
  private tried: Set<Endpoint> | undefined = undefined;
  private lastFailure: TryFailure | undefined = undefined;
  /** Bumped whenever an asynchronous step (authorization) must be ignored when it completes. */
  protected gen = 0;
  // The call's timer (deadlines.ts): the try's or request's deadline, or the retry back-off.
  dlAt = 0;
  dlPrev: DeadlineEntry | null = null;
  dlNext: DeadlineEntry | null = null;
  dlList: DeadlineList | null = null;
  private backingOff = false;

  // ---------------------------------------------------------------------------------------
  // Route, admission, limits

  /** Route and admit the request, then send its first try (or answer the refusal). */
  start(): void {
    this.started = true;
    const host = this.callHost;
    host.requestStarted();
    this.counted = true;
    this.startedAt = performance.now();
    const early = this.refuseEarly();
    if (early !== undefined) {
      this.answer(early);
      return;
    }
    if (!this.routeCall()) return;
    const delay = this.decision!.plan?.delay ?? 0;
    if (delay > 0) {
      this.faultDelayed = true;
      // Fault injection: hold the request; the client leaving meanwhile ends it (clientGone).
      this.faultTimer = setTimeout(() => {
        this.faultTimer = undefined;
        if (!this.done) this.afterRoute();
      }, delay);
      return;
    }
    this.afterRoute();
  }

  /**
   * The route stage: pick the rule and backend (route.ts), apply the rule's filters, send its
   * mirrors. Answers and returns false when the rule answers itself (no_route, redirect).
   */
  private routeCall(): boolean {
    let d: RouteDecision;
    try {
      d = this.decision = routeRequest(this.callHost.deps.clusters, this.ctx.target, this);
    } catch (err) {
      this.answerError(asWeftError(err));
      return false;
    }
    if (d.rule === undefined) return true;
    this.routeRule = d.rule;
    if (d.redirect !== undefined) {
      this.answer({ status: d.redirect.status, header: '', headers: [['location', d.redirect.location]], grpcStatus: grpcForHttp(d.redirect.status), message: `redirect to ${d.redirect.location}` });
      return false;
    }
    const plan = d.plan!;
    this.responseEdits = plan.rule.responseHeaders;
    const mirror = this.callHost.deps.mirror;
    if (plan.mirrors.length && mirror !== undefined) this.sendMirrors(plan.mirrors, plan.requestHeaders, plan.target, mirror);
    if (plan.target !== undefined || plan.requestHeaders.length) this.editRequest(plan.target, plan.requestHeaders);
    return true;
  }

  private sendMirrors(refs: readonly { name: string; port?: number }[], mods: readonly HeaderModifier[], target: string | undefined, mirror: Mirror): void {
    const t = this.ctx.target;
    if (t.kind !== 'service') return;
    const v = this.view();
    let headers: string[] = [];
    for (const k in v.headers) {
      const val = v.headers[k];
      if (val === undefined || k.startsWith(':')) continue;
      if (Array.isArray(val)) for (const x of val) headers.push(k, x);
      else headers.push(k, val);
    }
    if (v.headers.host === undefined && v.authority !== undefined) headers.push('host', v.authority);
    for (const m of mods) headers = modifyHeaders(headers, m);
    const cl = v.headers['content-length'];
    const hasBody = (cl !== undefined && cl !== '0') || v.headers['transfer-encoding'] !== undefined || (cl === undefined && !BODYLESS.has(v.method) && this.protocol !== 'http/1.1');
    for (const ref of refs) {
      const b = this.callHost.deps.clusters.forBackend(t.service.namespace, ref.name, ref.port ?? t.port.port);
      if (b === undefined) continue;
      mirror.send(b.cluster, this.ctx, { method: v.method, target: target ?? v.path, headers, hasBody });
    }
  }

  /** The fault abort or a missing backend, answered; false when the request goes on. */
  private answeredByRoute(): boolean {
    const d = this.decision!;
    const abort = d.plan?.abort;
    if (abort !== undefined) {
      this.faultAborted = true;
      this.answer({ status: abort, header: '', grpcStatus: grpcForHttp(abort), message: 'fault filter abort' });
      return true;
    }
    if (d.noBackend !== undefined) {
      this.answerError(new WeftError('WEFT_ERR_NO_BACKEND', d.noBackend));
      return true;
    }
    return false;
  }

  /** After the route stage (and a fault delay): the fault abort, admission, limits, the first try. */
  private afterRoute(): void {
    const d = this.decision!;
    if (this.answeredByRoute()) return;
    if (!this.admitCall()) return;
    const cluster = this.cluster!;
    if (!cluster.limits.tryStartRequest()) {
      this.releaseAdm();
      this.answerError(new WeftError('WEFT_ERR_OVERFLOW', `request limit reached for ${cluster.serviceName}`));
      return;
    }
    this.holdsRequest = true;
    const retries = (this.retries = d.retries);
    this.maxAttempts = maxAttemptsFor(retries, this.planReplay(retries));
    // grpc-timeout is the call's deadline: the smaller of it and the request timeout. Both
    // count from here: an injected delay is not the upstream's time (as in Envoy's router).
    const own = this.callTimeout;
    const t = own > 0 && (d.timeout <= 0 || own < d.timeout) ? own : d.timeout;
    const now = performance.now();
    this.deadline = t > 0 ? now + t : Infinity;
    if (own > 0) this.callDeadline = now + own;
    const hashOn = cluster.policy.loadBalancer.hashOn;
    if (hashOn?.header) {
      const v = this.headerValue(hashOn.header);
      if (v !== undefined) this.hash = hashKey(v);
    } else if (hashOn?.sourceIp) this.hash = hashKey(this.ctx.sourceIp);
    this.pickAndSend();
  }

  /** The access log's `route` (`ns/name`) and `rule` (name or index), when a route decided. */
  get routeName(): string | undefined {
    return this.routeRule?.routeName;
  }

  get ruleName(): string | undefined {
    return this.routeRule?.ruleName;
  }

  /** An answer to give before routing (a request the codec cannot forward), or undefined. */
  protected refuseEarly(): Answer | undefined {
    return undefined;
  }

  /**
   * Decide whether the request can be replayed under `retries`; the codec may start holding
   * its body for that. Returns whether it is replayable at all (caps the attempts).
   */
  protected planReplay(_retries: RetryPolicy | undefined): boolean {
    return true;
  }

  /**
   * Route the request and admit it to the chosen backend's cluster (breaker, fallback),
   * holding the admission until settled or released; or answer the refusal and return false.
   */
  protected admitCall(): boolean {
    let adm: Admission;
    try {
      adm = admit(pickBackend(this.decision!));
    } catch (err) {
      this.answerError(asWeftError(err));
      return false;
    }
    this.adm = adm;
    this.admOpen = true;
    this.cluster = adm.cluster;
    return true;
  }

  protected settleAdm(ok: boolean): void {
    if (!this.admOpen) return;
    this.admOpen = false;
    settle(this.adm!, ok);
  }

  protected releaseAdm(): void {
    if (!this.admOpen) return;
    this.admOpen = false;
    release(this.adm!);
  }

  // ---------------------------------------------------------------------------------------
  // Attempt: pick -> authorize -> lease -> send

  private pickAndSend(): void {
    if (this.done) return;
    const cluster = this.cluster!;
    const ctx = this.tried !== undefined || this.hash !== undefined ? { hash: this.hash, tried: this.tried } : EMPTY_PICK;
    const ep = cluster.pick(ctx);
    if (ep === undefined) {
      this.lastFailure = { kind: 'connect-failure', error: new WeftError('WEFT_ERR_NO_HEALTHY_UPSTREAM', `no healthy endpoint for ${cluster.serviceName}`) };
      this.giveUp();
      return;
    }
    this.ep = ep;
    this.authorizeThen(ep, this.afterAuthz);
  }

  /**
   * Authorize the request for `ep` (on the destination's agent: local endpoints only), then
   * `next(ep, verdict)`: synchronously when the authorizer answered synchronously.
   */
  protected authorizeThen(ep: Endpoint, next: (this: this, ep: Endpoint, v: AuthzVerdict | undefined) => void): void {
    const authorize = this.callHost.deps.authorize;
    if (authorize === undefined || !ep.info.local) {
      next.call(this, ep, undefined);
      return;
    }
    const gen = ++this.gen;
    let verdict: ReturnType<L7Authorizer>;
    try {
      verdict = authorize(this.ctx, ep, this.view());
    } catch (err) {
      verdict = Promise.reject(err as Error);
    }
    if (!(verdict instanceof Promise)) {
      next.call(this, ep, verdict);
      return;
    }
    verdict.then(
      (v) => {
        if (gen === this.gen && !this.done) next.call(this, ep, v);
      },
      (err: Error) => {
        if (gen !== this.gen || this.done) return;
        this.callHost.deps.log.error({ err }, 'authorization failed');
        this.releaseAdm();
        this.answerError(new WeftError('WEFT_ERR_DENIED', 'authorization failed'));
      },
    );
  }

  private afterAuthz(ep: Endpoint, v: AuthzVerdict | undefined): void {
    if (v !== undefined) {
      if (v.deny !== undefined) {
        this.releaseAdm();
        this.answerError(v.deny);
        return;
      }
      if (v.removeHeaders !== undefined && v.removeHeaders.length > 0) this.removeHeaders(v.removeHeaders);
    }
    const cluster = this.cluster!;
    this.attempts++;
    if (this.attemptNo === 0) cluster.retryBudget?.recordRequest();
    const t0 = performance.now();
    takeLease(this, cluster, ep, t0);
    const perTry = this.retries?.perTryTimeout ?? 0;
    this.tryDeadline = perTry > 0 ? Math.min(this.deadline, t0 + perTry) : this.deadline;
    if (this.tryDeadline !== Infinity) this.armTimer(this.tryDeadline - t0, t0);
    this.send(ep);
  }

  /** The try is over: the lease ends and, unless `result` is undefined, the endpoint hears how it went. */
  protected endTry(result: OutlierResult | undefined): void {
    if (this.dlList !== null) clearDeadline(this);
    endLease(this, result);
  }

  // ---------------------------------------------------------------------------------------
  // What the codec reports

  /** The try got no answer: connecting failed, or the upstream went away before its head. */
  protected tryFailed(err: Error): void {
    const { kind, code } = classifyFailure(err);
    this.failTry({ kind, error: new WeftError(code, `${this.ep!.id}: ${err.message}`, { cause: err }) }, kind === 'connect-failure' ? 'connect-failure' : 'reset');
  }

  /** The upstream failed; after the response started, the client sees it cut. */
  protected upstreamFailed(err: Error): void {
    if (this.done) return;
    if (!this.responseStarted) {
      this.tryFailed(err);
      return;
    }
    this.endTry('reset');
    this.settleAdm(false);
    this.cut();
    this.complete(this.status, 'WEFT_ERR_UPSTREAM_RESET', err.message);
  }

  /**
   * The response head arrived (`grpcStatus`: from a trailers-only gRPC answer). Returns true
   * to forward it; false when the pipeline dropped the try for a retry (the codec stops).
   */
  protected responseHead(status: number, grpcStatus: number | undefined): boolean {
    if (retryAnswer(this, status, grpcStatus, performance.now()) && this.canReplayNow()) {
      this.dropUpstream();
      this.endTry(outlierResult(status, grpcStatus));
      const msg = grpcStatus === undefined ? `upstream answered ${status}` : `upstream answered grpc-status ${grpcStatus}`;
      this.lastFailure = { kind: 'status', status, grpcStatus, paid: true, error: new WeftError('WEFT_ERR_UPSTREAM_RESET', msg) };
      this.nextTry();
      return false;
    }
    this.responseStarted = true;
    this.status = status;
    if (grpcStatus !== undefined) this.grpcStatus = grpcStatus;
    if (this.timeoutUntilHead) {
      // From here on only the call's own deadline bounds it.
      this.deadline = this.tryDeadline = this.callDeadline;
      if (this.dlList !== null) clearDeadline(this);
      if (this.deadline !== Infinity) {
        const now = performance.now();
        armDeadline(this, Math.max(0, this.deadline - now), now);
      }
    }
    return true;
  }

  /** The response is complete (`grpcStatus`: from its trailers). */
  protected responseDone(grpcStatus: number | undefined): void {
    if (grpcStatus !== undefined) this.grpcStatus = grpcStatus;
    const status = this.status;
    const g = this.grpcStatus;
    this.endTry(outlierResult(status, g));
    this.settleAdm(answeredOk(status, g));
    this.complete(status);
  }

  /** The client went away (or cancelled its stream) before the answer was complete. */
  clientGone(): void {
    if (this.done) return;
    this.clientLeft = true;
    this.dropUpstream();
    // Not the endpoint's fault: no outlier report, no breaker verdict.
    this.endTry(undefined);
    this.releaseAdm();
    this.complete(this.responseStarted ? this.status : 0, undefined, 'client closed the connection');
  }

  /** The request turned out malformed after it went upstream. */
  protected malformedRequest(message: string): void {
    if (this.done) return;
    this.dropUpstream();
    this.endTry(undefined);
    this.releaseAdm();
    if (this.responseStarted) {
      this.cut();
      this.complete(this.status, 'WEFT_ERR_BAD_REQUEST', message);
    } else this.answerError(new WeftError('WEFT_ERR_BAD_REQUEST', message));
  }

  /** Answer `err` now, ending the try without a verdict on the endpoint (a local refusal). */
  protected refuse(err: WeftError): void {
    this.endTry(undefined);
    this.releaseAdm();
    this.answerError(err);
  }

  // ---------------------------------------------------------------------------------------
  // Retry, timers

  private armTimer(ms: number, now: number): void {
    if (this.dlList !== null) clearDeadline(this);
    this.backingOff = false;
    armDeadline(this, Math.max(0, ms), now);
  }

  /** The timer fired (DeadlineEntry). */
  dlFire(): void {
    if (this.done) return;
    try {
      this.timerFired();
    } catch (err) {
      this.callHost.internalError(err);
      this.cut();
    }
  }

  private timerFired(): void {
    if (this.backingOff) {
      this.backingOff = false;
      this.pickAndSend();
      return;
    }
    const whole = this.tryDeadline >= this.deadline;
    const ep = this.ep!;
    const ms = Math.round(whole ? this.deadline - this.startedAt : this.tryDeadline - this.leaseT0);
    const err = new WeftError('WEFT_ERR_UPSTREAM_TIMEOUT', `upstream ${ep.id} did not answer within ${ms}ms`);
    this.dropUpstream();
    if (this.responseStarted) {
      this.endTry('timeout');
      this.settleAdm(false);
      this.cut();
      this.complete(this.status, err.code, err.message);
      return;
    }
    if (whole) {
      // The whole-request deadline is not retried.
      this.endTry('timeout');
      this.settleAdm(false);
      this.answerError(err);
      return;
    }
    this.failTry({ kind: 'timeout', error: err }, 'timeout');
  }

  private failTry(f: TryFailure, result: OutlierResult): void {
    this.endTry(result);
    this.lastFailure = f;
    if (this.retries === undefined || this.attemptNo >= this.maxAttempts - 1) {
      this.settleAdm(false);
      this.answerError(f.error);
      return;
    }
    if (!retryWanted(this, f, performance.now()) || !this.canReplayNow()) {
      this.giveUp();
      return;
    }
    this.nextTry();
  }

  private nextTry(): void {
    this.attemptNo++;
    (this.tried ??= new Set()).add(this.ep!);
    const delay = retryDelay(this, this.lastFailure?.paid === true, performance.now());
    if (delay < 0) {
      this.giveUp();
      return;
    }
    this.callHost.telemetry.retried(this.cluster!);
    this.prepareRetry();
    if (delay > 0) {
      if (this.dlList !== null) clearDeadline(this);
      this.backingOff = true;
      armDeadline(this, delay, performance.now());
      return;
    }
    this.pickAndSend();
  }

  /** A retry will be sent: reset what the codec tracks per try. */
  protected prepareRetry(): void {}

  private giveUp(): void {
    this.settleAdm(false);
    this.answerError(this.lastFailure?.error ?? new WeftError('WEFT_ERR_NO_HEALTHY_UPSTREAM', `no healthy endpoint for ${this.cluster!.serviceName}`));
  }

  // ---------------------------------------------------------------------------------------
  // Respond, record

  protected answerError(err: WeftError): void {
    this.answer(answerFor(err));
  }

  /** Answer the client ourselves (or cut the response, when one is under way). */
  protected answer(a: Answer): void {
    if (this.done) return;
    this.dropUpstream();
    this.endTry(undefined);
    if (this.responseStarted) {
      this.cut();
      this.complete(this.status, a.code, a.message);
      return;
    }
    if (this.grpc) {
      this.status = 200;
      this.grpcStatus = a.grpcStatus;
    } else this.status = a.status;
    this.writeAnswer(a);
    this.complete(this.status, a.code, a.message);
  }

  protected complete(status: number, error?: WeftErrorCode, reason?: string): void {
    if (this.done) return;
    this.done = true;
    this.gen++;
    if (this.faultTimer !== undefined) {
      clearTimeout(this.faultTimer);
      this.faultTimer = undefined;
    }
    if (this.dlList !== null) clearDeadline(this);
    if (this.holdsRequest) {
      this.holdsRequest = false;
      this.cluster!.limits.endRequest();
    }
    const host = this.callHost;
    if (this.counted) {
      this.counted = false;
      host.requestEnded();
    }
    host.telemetry.record(this, status, error, reason);
    this.finished();
  }
}
