export { FileBlockDevice, type BlockDevice } from '@cowvol/base';
export { Journal } from '../src/index.js';
export { JOURNAL_MAGIC as SUPERBLOCK_SENTINEL } from '../src/index.js';
