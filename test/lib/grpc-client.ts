/** A gRPC client (@grpc/grpc-js) for the sandbox backend's `weft.demo.Echo` service: raw-byte messages, no protobuf. */
import * as grpc from '@grpc/grpc-js';

const id = (b: Buffer): Buffer => b;
const m = (name: string, requestStream: boolean, responseStream: boolean) => ({
  path: `/weft.demo.Echo/${name}`,
  requestStream,
  responseStream,
  requestSerialize: id,
  requestDeserialize: id,
  responseSerialize: id,
  responseDeserialize: id,
});

export const EchoClient = grpc.makeGenericClientConstructor(
  { Get: m('Get', false, false), Stream: m('Stream', false, true), Collect: m('Collect', true, false), Chat: m('Chat', true, true), Forbidden: m('Forbidden', false, false) },
  'Echo',
);

export type Echo = InstanceType<typeof EchoClient> & Record<string, (...a: any[]) => any>;

export function echoClient(target: string, opts: grpc.ChannelOptions = {}): Echo {
  return new EchoClient(target, grpc.credentials.createInsecure(), opts) as Echo;
}

export interface CallResult {
  code: number;
  details?: string;
  body?: any;
  /** Trailing and initial metadata of an error (x-weft-error, x-pod). */
  metadata?: Record<string, unknown>;
}

/** A unary call; resolves with the status (0 and the parsed JSON body, or the error code). */
export function unary(c: Echo, method: 'Get' | 'Forbidden', req = '', opts: { deadlineMs?: number; metadata?: Record<string, string> } = {}): Promise<CallResult> {
  const md = new grpc.Metadata();
  for (const [k, v] of Object.entries(opts.metadata ?? {})) md.set(k, v);
  const callOpts: grpc.CallOptions = opts.deadlineMs ? { deadline: Date.now() + opts.deadlineMs } : {};
  return new Promise((resolve) => {
    c[method](Buffer.from(req), md, callOpts, (err: grpc.ServiceError | null, res?: Buffer) => {
      if (err) resolve({ code: err.code, details: err.details, metadata: err.metadata?.getMap() });
      else resolve({ code: 0, body: JSON.parse(res!.toString()) });
    });
  });
}

export { grpc };
