export { FileBlockDevice, Journal, type BlockDevice } from '../src/index.js';
export { JOURNAL_MAGIC as SUPERBLOCK_SENTINEL } from '../src/index.js';
