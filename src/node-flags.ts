/**
 * The Node.js flags the agent runs with, wherever it is started: bin/weft.js's shebang, the
 * container image's entrypoint (deploy/Dockerfile), the sandbox and the benchmark. A test
 * (test/unit/node-flags.test.ts) keeps the first two in step with this list.
 *
 * `--max-semi-space-size=4`: V8's young generation is two semi-spaces that grow to 16 MB
 * each by default, and a burst of allocation (start-up with 10,000 endpoints, a big config
 * change) grows them to that maximum, where they stay resident: 34 MB of an agent's RSS.
 * Capped at 4 MB they take 8 MB. Measured with `npm run bench` (L7 through capture, rounds
 * of 16 against 4 MB on one machine): the same req/s and CPU per request within the run-to-
 * run noise (the proxy's per-request garbage dies young either way), and 20 MB less RSS
 * under load and at scale (1,000 workloads + 10,000 endpoints: 144 -> 122 MB).
 */
export const AGENT_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=4'];
