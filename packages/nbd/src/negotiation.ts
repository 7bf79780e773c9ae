import type { BlockExport, ExportCatalog } from './block-export.js';
import {
  MAX_PAYLOAD_BYTES,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_CACHE,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_FAST_ZERO,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_NAME,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
} from './constants.js';
import type { OptionMessage } from './framing.js';
import { DIRTY_BITMAP_PREFIX, matchContexts, type MetaContext } from './meta-context.js';
import { decodeInfoRequest, decodeMetaContextRequest } from './option-payloads.js';
import { exportNameReply, infoBlockSizeReply, infoExportReply, infoTextReply, metaContextReply, optionError, optionReply, serverReply } from './replies.js';

/**
 * Options a connection over the limit may send before it is closed; enough
 * for a client that asks STRUCTURED_REPLY, SET_META_CONTEXT and GO in a row
 * (qemu, libnbd) to read the refusal of its GO.
 */
export const MAX_REFUSED_OPTIONS = 8;

/** What the transmission phase needs from the option phase. */
export interface Agreement {
  export: BlockExport;
  transmissionFlags: number;
  /** Structured replies were negotiated (NBD_OPT_STRUCTURED_REPLY). */
  structured: boolean;
  /** `base:allocation` was selected for this export (NBD_OPT_SET_META_CONTEXT). */
  baseAllocation: boolean;
  /** Every context selected for this export, in the order BLOCK_STATUS answers them (docs/ARCHITECTURE.md §14.9). */
  contexts: MetaContext[];
}

/**
 * The outcome of one option: bytes to send, then go on, close, start TLS
 * (the replies are the ACK to NBD_OPT_STARTTLS, sent in clear), or enter
 * transmission.
 */
export type OptionStep = { replies: Buffer[]; next: 'options' | 'close' | 'starttls' } | { replies: Buffer[]; next: 'transmission'; agreement: Agreement };

/**
 * Whether the server does TLS: `off` ("NOTLS" mode: NBD_OPT_STARTTLS is
 * refused with NBD_REP_ERR_POLICY) or `required` ("FORCEDTLS" mode: every
 * option but STARTTLS and ABORT is NBD_REP_ERR_TLS_REQD until TLS started).
 */
export type TlsMode = 'off' | 'required';

/**
 * The option phase of one connection ("Option haggling"; docs/ARCHITECTURE.md
 * §14.3): the state the options build up, and one reply sequence per option.
 * Every option this server does not implement is answered NBD_REP_ERR_UNSUP.
 * With TLS required, nothing is negotiated in clear (§14.6).
 */
export class Negotiation {
  private structured = false;
  /** NBD_OPT_STARTTLS was acknowledged: everything from here on is inside TLS. */
  private tlsStarted = false;
  /** The export `base:allocation` was selected for, by its resolved name. */
  private metaExport: string | undefined;
  private metaContexts: MetaContext[] = [];
  /**
   * The export name the option in progress (EXPORT_NAME, INFO, GO) names,
   * set before the catalog resolves it and kept until the next option: a
   * delete or rename of that snapshot counts this connection as attached
   * while its reply is on the way (docs/ARCHITECTURE.md §14.8).
   */
  claimedExport: string | undefined;
  /** Snapshots whose dirty bitmaps a SET_META_CONTEXT in progress names, set before they are looked up (as claimedExport). */
  private pendingBitmaps: string[] = [];
  /** Options answered NBD_REP_ERR_POLICY on a refused connection; at MAX_REFUSED_OPTIONS the connection is closed. */
  private refusedOptions = 0;

  /**
   * @param refusal when set, the connection is over the server's limit: every
   *   option is refused with NBD_REP_ERR_POLICY and this text, so that the
   *   client can say why (docs/ARCHITECTURE.md §14.6, "Connections over the limit")
   */
  constructor(
    private readonly catalog: ExportCatalog,
    private readonly noZeroes: boolean,
    private readonly tls: TlsMode = 'off',
    private readonly refusal?: string,
  ) {}

  /** Handles one option; errors of the catalog propagate (the connection logs them and closes). */
  async handle(message: OptionMessage): Promise<OptionStep> {
    const { option, data } = message;
    this.claimedExport = undefined;
    if (this.refusal !== undefined) return this.refuse(option, this.refusal);
    if (option === NBD_OPT_STARTTLS) return this.startTls(data);
    if (this.tls === 'required' && !this.tlsStarted && option !== NBD_OPT_ABORT) {
      // "FORCEDTLS": EXPORT_NAME cannot be refused but by closing.
      if (option === NBD_OPT_EXPORT_NAME) return { replies: [], next: 'close' };
      return { replies: [optionError(option, NBD_REP_ERR_TLS_REQD, 'this server requires TLS: send NBD_OPT_STARTTLS first')], next: 'options' };
    }
    switch (option) {
      case NBD_OPT_EXPORT_NAME:
        return this.exportName(data.toString('utf8'));
      case NBD_OPT_ABORT:
        return { replies: [optionReply(option, NBD_REP_ACK)], next: 'close' };
      case NBD_OPT_LIST:
        return this.list(data);
      case NBD_OPT_INFO:
      case NBD_OPT_GO:
        return this.infoOrGo(option, data);
      case NBD_OPT_STRUCTURED_REPLY:
        if (data.length !== 0) return invalid(option, 'NBD_OPT_STRUCTURED_REPLY carries no data');
        if (this.structured) return invalid(option, 'structured replies were already negotiated');
        this.structured = true;
        return { replies: [optionReply(option, NBD_REP_ACK)], next: 'options' };
      case NBD_OPT_LIST_META_CONTEXT:
      case NBD_OPT_SET_META_CONTEXT:
        return this.metaContext(option, data);
      default:
        return { replies: [optionError(option, NBD_REP_ERR_UNSUP, `option ${option} is not supported`)], next: 'options' };
    }
  }

  /**
   * An option on a connection over the limit: ABORT is acknowledged, EXPORT_NAME
   * (which has no error reply) closes, anything else (STARTTLS included: no
   * key material is needed to say "busy") is ERR_POLICY with `text`. After
   * MAX_REFUSED_OPTIONS refusals the connection closes: a refused client
   * holds no slot, and cannot hold its refusal open by retrying.
   */
  private refuse(option: number, text: string): OptionStep {
    if (option === NBD_OPT_ABORT) return { replies: [optionReply(option, NBD_REP_ACK)], next: 'close' };
    if (option === NBD_OPT_EXPORT_NAME) return { replies: [], next: 'close' };
    this.refusedOptions++;
    return { replies: [optionError(option, NBD_REP_ERR_POLICY, text)], next: this.refusedOptions >= MAX_REFUSED_OPTIONS ? 'close' : 'options' };
  }

  private startTls(data: Buffer): OptionStep {
    if (this.tls === 'off') return { replies: [optionError(NBD_OPT_STARTTLS, NBD_REP_ERR_POLICY, 'TLS is not enabled on this server')], next: 'options' };
    if (this.tlsStarted) return invalid(NBD_OPT_STARTTLS, 'TLS was already started');
    if (data.length !== 0) return invalid(NBD_OPT_STARTTLS, 'NBD_OPT_STARTTLS carries no data');
    this.tlsStarted = true;
    return { replies: [optionReply(NBD_OPT_STARTTLS, NBD_REP_ACK)], next: 'starttls' };
  }

  private async exportName(name: string): Promise<OptionStep> {
    this.claimedExport = name;
    const found = await this.catalog.resolve(name);
    // The spec leaves no way to refuse NBD_OPT_EXPORT_NAME but closing.
    if (!found) return { replies: [], next: 'close' };
    const agreement = this.agree(found);
    return { replies: [exportNameReply(found.sizeBytes, agreement.transmissionFlags, this.noZeroes)], next: 'transmission', agreement };
  }

  /** The reply to an option naming an export that does not resolve: ERR_POLICY with the reason when it exists but is unavailable now (a restore rewrites live), else ERR_UNKNOWN. */
  private notFound(option: number, exportName: string): Buffer {
    const why = this.catalog.unavailable?.(exportName);
    return why === undefined ? optionError(option, NBD_REP_ERR_UNKNOWN, `no export named ${JSON.stringify(exportName)}`) : optionError(option, NBD_REP_ERR_POLICY, why);
  }

  private async list(data: Buffer): Promise<OptionStep> {
    if (data.length !== 0) return invalid(NBD_OPT_LIST, 'NBD_OPT_LIST carries no data');
    const exports = await this.catalog.list();
    return { replies: [...exports.map((e) => serverReply(NBD_OPT_LIST, e.name, e.description)), optionReply(NBD_OPT_LIST, NBD_REP_ACK)], next: 'options' };
  }

  private async infoOrGo(option: number, data: Buffer): Promise<OptionStep> {
    const decoded = decodeInfoRequest(data);
    if ('error' in decoded) return invalid(option, decoded.error);
    const { exportName, infoTypes } = decoded.value;
    this.claimedExport = exportName;
    const found = await this.catalog.resolve(exportName);
    if (!found) return { replies: [this.notFound(option, exportName)], next: 'options' };
    const agreement = this.agree(found);
    const replies = [infoExportReply(option, found.sizeBytes, agreement.transmissionFlags)];
    if (infoTypes.includes(NBD_INFO_NAME)) replies.push(infoTextReply(option, NBD_INFO_NAME, found.name));
    if (infoTypes.includes(NBD_INFO_DESCRIPTION)) replies.push(infoTextReply(option, NBD_INFO_DESCRIPTION, found.description));
    // Always sent: minimum 1 (partial blocks are read-modify-written by the volume).
    replies.push(infoBlockSizeReply(option, 1, found.preferredBlockBytes, MAX_PAYLOAD_BYTES));
    replies.push(optionReply(option, NBD_REP_ACK));
    return option === NBD_OPT_GO ? { replies, next: 'transmission', agreement } : { replies, next: 'options' };
  }

  private async metaContext(option: number, data: Buffer): Promise<OptionStep> {
    if (!this.structured) return invalid(option, 'meta contexts need structured replies first');
    const decoded = decodeMetaContextRequest(data);
    if ('error' in decoded) return invalid(option, decoded.error);
    const { exportName, queries } = decoded.value;
    const found = await this.catalog.resolve(exportName);
    if (!found) return { replies: [this.notFound(option, exportName)], next: 'options' };
    const listing = option === NBD_OPT_LIST_META_CONTEXT;
    if (!listing) this.pendingBitmaps = queries.filter((q) => q.startsWith(DIRTY_BITMAP_PREFIX)).map((q) => q.slice(DIRTY_BITMAP_PREFIX.length));
    let contexts: MetaContext[];
    try {
      contexts = await matchContexts(found, queries, listing);
    } finally {
      this.pendingBitmaps = [];
    }
    if (!listing) {
      this.metaExport = contexts.length > 0 ? found.name : undefined;
      this.metaContexts = contexts;
    }
    const replies = contexts.map((c) => metaContextReply(option, c.id, c.name));
    replies.push(optionReply(option, NBD_REP_ACK));
    return { replies, next: 'options' };
  }

  /**
   * The snapshots whose dirty bitmaps this connection has selected, or is
   * selecting: it pins them, as an attach to `snapshot/<name>` does — a
   * delete or rename is SNAPSHOT_IN_USE meanwhile — so a bitmap never comes
   * to mean another snapshot under the same name (docs/ARCHITECTURE.md §14.9).
   */
  get claimedBitmaps(): readonly string[] {
    return [...this.pendingBitmaps, ...dirtySnapshotsOf(this.metaContexts)];
  }

  /** Transmission flags ("Transmission flags") for `found` under what was negotiated so far. */
  private agree(found: BlockExport): Agreement {
    let flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_CAN_MULTI_CONN | NBD_FLAG_SEND_CACHE;
    flags |= found.readOnly ? NBD_FLAG_READ_ONLY : NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
    if (this.structured) flags |= NBD_FLAG_SEND_DF;
    const contexts = this.structured && this.metaExport === found.name ? this.metaContexts : [];
    return { export: found, transmissionFlags: flags, structured: this.structured, baseAllocation: contexts.some((c) => c.kind === 'allocation'), contexts };
  }
}

/** The snapshots of the dirty-bitmap contexts among `contexts`. */
export function dirtySnapshotsOf(contexts: readonly MetaContext[]): string[] {
  return contexts.flatMap((c) => (c.kind === 'dirty' ? [c.snapshot] : []));
}

function invalid(option: number, message: string): OptionStep {
  return { replies: [optionError(option, NBD_REP_ERR_INVALID, message)], next: 'options' };
}
