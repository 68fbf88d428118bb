/** Authorization (Istio AuthorizationPolicy) and JWT request authentication. */

export * from './engine.js';
export { validatePattern, compilePatterns, compileHostPatterns, normalizePath, type StringMatcher } from './match.js';
export { parseCidr, parseIp } from './cidr.js';
export * from './jwt.js';
