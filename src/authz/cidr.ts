/**
 * IP addresses and CIDR blocks for `ipBlocks` / `notIpBlocks`. Addresses are held as bigints
 * with their family; an IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, what a dual-stack socket
 * reports) is treated as the IPv4 address, so `10.0.0.0/8` matches it.
 */

import { isIPv4, isIPv6 } from 'node:net';

export interface IpAddress {
  v6: boolean;
  value: bigint;
}

export interface IpBlock {
  v6: boolean;
  /** The network, host bits cleared. */
  network: bigint;
  bits: number;
}

const MAPPED_PREFIX = 0xffffn << 32n;

/** Parses an IPv4 or IPv6 address (no zone, no brackets). IPv4-mapped IPv6 becomes IPv4. */
export function parseIp(s: string): IpAddress | undefined {
  if (isIPv4(s)) return { v6: false, value: parseV4(s) };
  if (!isIPv6(s) || s.includes('%')) return undefined;
  const value = parseV6(s);
  if (value >> 32n === MAPPED_PREFIX >> 32n) return { v6: false, value: value & 0xffffffffn };
  return { v6: true, value };
}

function parseV4(s: string): bigint {
  let v = 0n;
  for (const part of s.split('.')) v = (v << 8n) | BigInt(Number(part));
  return v;
}

function parseV6(s: string): bigint {
  let text = s;
  // An embedded IPv4 tail (`::ffff:1.2.3.4`) is rewritten as its two 16-bit groups.
  const lastColon = text.lastIndexOf(':');
  if (text.slice(lastColon + 1).includes('.')) {
    const v4 = parseV4(text.slice(lastColon + 1));
    text = `${text.slice(0, lastColon + 1)}${(v4 >> 16n).toString(16)}:${(v4 & 0xffffn).toString(16)}`;
  }
  const toGroups = (part: string): bigint[] => (part === '' ? [] : part.split(':').map((g) => BigInt(parseInt(g, 16))));
  let groups: bigint[];
  const dbl = text.indexOf('::');
  if (dbl === -1) {
    groups = toGroups(text);
  } else {
    const head = toGroups(text.slice(0, dbl));
    const rest = toGroups(text.slice(dbl + 2));
    groups = [...head, ...new Array<bigint>(8 - head.length - rest.length).fill(0n), ...rest];
  }
  let v = 0n;
  for (const g of groups) v = (v << 16n) | g;
  return v;
}

/**
 * Parses `10.0.0.0/8`, `fd00::/8`, or a single address (a /32 or /128). Host bits set beyond
 * the prefix are cleared, as Envoy does. Returns undefined when malformed.
 */
export function parseCidr(s: string): IpBlock | undefined {
  if (typeof s !== 'string') return undefined;
  const slash = s.indexOf('/');
  const addrText = slash === -1 ? s : s.slice(0, slash);
  // An IPv4-mapped network (`::ffff:10.0.0.0/104`) would silently become IPv4; keep families plain.
  const v6 = isIPv6(addrText);
  if (!v6 && !isIPv4(addrText)) return undefined;
  if (addrText.includes('%')) return undefined;
  const width = v6 ? 128 : 32;
  let bits = width;
  if (slash !== -1) {
    const prefix = s.slice(slash + 1);
    if (!/^\d{1,3}$/.test(prefix)) return undefined;
    bits = Number(prefix);
    if (bits > width) return undefined;
  }
  const value = v6 ? parseV6(addrText) : parseV4(addrText);
  if (v6 && value >> 32n === MAPPED_PREFIX >> 32n && bits >= 96) {
    // `::ffff:a.b.c.d/n` means the IPv4 block a.b.c.d/(n-96).
    const v4bits = bits - 96;
    return { v6: false, network: mask(value & 0xffffffffn, v4bits, 32), bits: v4bits };
  }
  return { v6, network: mask(value, bits, width), bits };
}

function mask(value: bigint, bits: number, width: number): bigint {
  if (bits === 0) return 0n;
  const hostBits = BigInt(width - bits);
  return (value >> hostBits) << hostBits;
}

/** True when the address lies in the block. */
export function inBlock(ip: IpAddress, block: IpBlock): boolean {
  if (ip.v6 !== block.v6) return false;
  return mask(ip.value, block.bits, block.v6 ? 128 : 32) === block.network;
}

/** Compiles a list of CIDRs (all valid: see {@link parseCidr}) into one matcher (OR). */
export function compileIpBlocks(cidrs: readonly string[]): (ip: IpAddress) => boolean {
  const blocks = cidrs.map((c) => {
    const b = parseCidr(c);
    if (b === undefined) throw new Error(`invalid CIDR '${c}'`);
    return b;
  });
  return (ip) => {
    for (const b of blocks) if (inBlock(ip, b)) return true;
    return false;
  };
}
