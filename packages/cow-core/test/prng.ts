/** The seeded PRNG the cow-core suites share (the stress runner's). */
export { mulberry32 } from '../src/index.js';
