/**
 * `@cowvol/base/conformance`: test support every package's tests share —
 * the `BlockDevice` conformance suite and the close bookkeeping test doubles
 * use to keep it (docs/ARCHITECTURE.md §1 "packages/base"). Not shipped (workspace only).
 */
export { blockDeviceSuite, type MakeDevice, type BlockDeviceSuiteOptions } from './block-device-suite.js';
export { OpsInFlight } from './ops-in-flight.js';
