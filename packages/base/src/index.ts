/**
 * @cowvol/base — what every cowvol package shares and none owns: the error
 * taxonomy (`CowvolError`, the `ErrorCode` union, the I/O errors every layer
 * throws, `assert`), the block-device seam (`BlockDevice`, `DeviceOpener`,
 * `FileBlockDevice`), CRC32C, and the process space (whether a pid in a
 * lock or a folder name is a process that is gone). Depends on no other cowvol package
 * (docs/ARCHITECTURE.md §1 "packages/base").
 */
export { ERROR_CODES, type ErrorCode } from './error-codes.js';
export { CowvolError, isCowvolError, hasCode, IoError, NoSpaceError, UnsupportedVersionError, AssertionFailedError, assert, type CowvolErrorOptions } from './errors.js';
export { FileBlockDevice, fileDeviceOpener, type BlockDevice, type DeviceOpener } from './block-device.js';
export { crc32c } from './checksum.js';
export { syncDirectory, errnoCode, errorMessage } from './file-system.js';
export { holderGone, isProcessSpace, processAlive, processSpace, PROCESS_SPACE_HEX } from './process-space.js';
