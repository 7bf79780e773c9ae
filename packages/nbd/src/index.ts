/**
 * @cowvol/nbd — a Network Block Device server (docs/ARCHITECTURE.md §14):
 * the protocol as pure functions (constants, incremental parsers over a
 * byte queue, reply builders), a server on node:net over the BlockExport
 * interface, the exports of a cowvol Volume (`live`, `snapshot/<name>`),
 * and the control channel of `cowvol serve` (./control/).
 */
export * from './constants.js';
export { NbdFramingError, EndpointInUseError, NotServedError, ExportInUseError, SnapshotInUseError } from './errors.js';
export { ByteQueue } from './byte-queue.js';
export { parseClientFlags, parseOption, parseRequest, type OptionMessage, type RequestMessage } from './framing.js';
export { decodeInfoRequest, decodeMetaContextRequest, type InfoRequest, type MetaContextRequest, type Decoded } from './option-payloads.js';
export {
  greeting,
  optionReply,
  optionError,
  serverReply,
  infoExportReply,
  infoTextReply,
  infoBlockSizeReply,
  metaContextReply,
  exportNameReply,
  simpleReply,
  chunkHeader,
  offsetDataChunk,
  offsetHoleChunk,
  errorChunk,
  blockStatusChunk,
  readReply,
  MAX_READ_CHUNKS,
  type Extent,
} from './replies.js';
export { isAllZero, zeroRuns, type ZeroRun } from './zero-runs.js';
export { ReplyWriter, MAX_BATCH_BUFFERS } from './reply-writer.js';
export type { BlockExport, ExportCatalog, ExportListing } from './block-export.js';
export { Negotiation, MAX_REFUSED_OPTIONS, type Agreement, type OptionStep, type TlsMode } from './negotiation.js';
export { errnoFor, RequestError } from './request-handler.js';
export { MAX_STATUS_EXTENTS, STATUS_REPLY_EXTENTS, statusExtentsPerContext, statusReplyBytes } from './meta-context.js';
export { Connection, DEFAULT_LIMITS, DEFAULT_HANDSHAKE, type ConnectionLimits, type HandshakeOptions } from './connection.js';
export { loadPskKeys, parsePskKeys, startTlsPsk, type PskKeys } from './tls-psk.js';
export {
  NbdServer,
  DEFAULT_MAX_CONNECTIONS,
  MAX_EXPORT_TOTALS,
  MAX_REFUSED_CONNECTIONS,
  REFUSAL_TIMEOUT_MS,
  type Endpoint,
  type NbdServerOptions,
  type NbdServerStatus,
  type ExportTotals,
} from './server.js';
export { SILENT_LOGGER, type NbdLogger } from './logger.js';
export { VolumeExports, LIVE_EXPORT, SNAPSHOT_EXPORT_PREFIX, STATUS_SCAN_BYTES } from './volume-exports.js';
export * from './control/protocol.js';
export { ControlServer, type ControlMethod } from './control/control-server.js';
export { controlRequest, controlSocketPath, ServedVolumeError } from './control/control-client.js';
export { volumeMethods, type ServeControl } from './control/volume-methods.js';
export { diffPage, MAX_DIFF_PAGE_EXTENTS, type DiffPage } from './control/report-methods.js';
export { MAX_LIST_PAGE_BYTES, MAX_LIST_PAGE_SNAPSHOTS, snapshotJsonBytesBound } from './control/list-pages.js';
export { NbdClient, NbdReplyError, CLIENT_MAX_IN_FLIGHT, type NbdExportInfo } from './client.js';
