/** The seeded PRNG the cow-core suites share (the stress runner's). */
export { mulberry32 } from '@cowvol/test-support';
