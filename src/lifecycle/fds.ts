/**
 * File descriptors between the agents of one node, through the native addon
 * (native/fdpass.cc): a unix socket that carries fds (SCM_RIGHTS), an flock on the pin root,
 * the peer's credentials. Errors carry errno and its code, as Node's own do.
 */
import { addon } from '../capture/bpf.js';

interface FdNative {
  unixConnect(path: string): number;
  sendFds(sockFd: number, data: Buffer, fds: number[]): number;
  recvFds(sockFd: number, maxBytes: number, timeoutMs: number): { data: Buffer; fds: number[] };
  flock(fd: number): boolean;
  peerCred(sockFd: number): { pid: number; uid: number; gid: number };
  dupFd(fd: number): number;
  closeFd(fd: number): void;
}

function native(): FdNative {
  return addon() as unknown as FdNative;
}

/** A failed syscall, shaped as Node's errors are (`code` ENOENT..., `errno`, `syscall`). */
export interface SysError extends Error {
  code?: string;
  errno?: number;
  syscall?: string;
}

function sys<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    const e = err as SysError & { op?: string };
    if (e.op !== undefined) e.syscall = e.op;
    throw e;
  }
}

/** A blocking AF_UNIX stream socket connected to `path` (close it with {@link closeFd}, or wrap it in a net.Socket). */
export const unixConnect = (path: string): number => sys(() => native().unixConnect(path));

/** Sends `data` with `fds` riding on its first byte; the receiver gets its own copies of the fds. */
export function sendFds(sockFd: number, data: Buffer, fds: number[]): void {
  const sent = sys(() => native().sendFds(sockFd, data, fds));
  if (sent !== data.length) throw Object.assign(new Error(`sendmsg sent ${sent} of ${data.length} bytes`), { code: 'EAGAIN' });
}

/** Waits up to `timeoutMs` for data on the socket, and reads what is there with the fds it carries. */
export const recvFds = (sockFd: number, maxBytes: number, timeoutMs: number): { data: Buffer; fds: number[] } => sys(() => native().recvFds(sockFd, maxBytes, timeoutMs));

/** Takes an exclusive flock on `fd` without waiting: false when another open file holds it. */
export const tryLock = (fd: number): boolean => sys(() => native().flock(fd));

/** Who is at the other end of a unix socket. */
export const peerCred = (sockFd: number): { pid: number; uid: number; gid: number } => sys(() => native().peerCred(sockFd));

/** Another fd (close-on-exec) for the same open file: a listening socket for one more event loop. */
export const dupFd = (fd: number): number => sys(() => native().dupFd(fd));

export const closeFd = (fd: number): void => sys(() => native().closeFd(fd));
