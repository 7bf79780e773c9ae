/**
 * The logging the server does: structured fields first, then a message
 * (the shape of pino's methods, so a pino logger fits as it is).
 */
export interface NbdLogger {
  debug(fields: Record<string, unknown>, message: string): void;
  info(fields: Record<string, unknown>, message: string): void;
  warn(fields: Record<string, unknown>, message: string): void;
  error(fields: Record<string, unknown>, message: string): void;
}

const drop = (): void => undefined;

/** A logger that drops everything (the default). */
export const SILENT_LOGGER: NbdLogger = { debug: drop, info: drop, warn: drop, error: drop };
