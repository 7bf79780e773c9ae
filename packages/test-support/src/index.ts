/**
 * @cowvol/test-support — the harnesses the test suites and benchmarks share,
 * kept out of the shipped packages (docs/ARCHITECTURE.md §1, "packages/test-support"):
 * the seeded PRNG, the stress runner and its content model (§7.9).
 */
export { mulberry32 } from './prng.js';
export { runStress, formatStressSummary, type StressOptions, type StressSummary } from './stress.js';
export { ContentModel, UNIT_BYTES, checkUnits, fillTag, type ModelWrite } from './stress-model.js';
