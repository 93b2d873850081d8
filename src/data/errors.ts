// The error a dataset throws when one of its files cannot be used: unreadable,
// corrupt, truncated, or declaring an image too large to decode. It names the
// file (also as `.file`), so a trainer can skip the sample or stop by policy.

export class DataFileError extends Error {
  /** The file at fault. */
  readonly file: string;
  /** What is wrong with it, without the file name. */
  readonly reason: string;
  /** The dataset index of the sample, when a loader knows it. */
  index?: number;

  constructor(file: string, reason: string, options?: { cause?: unknown }) {
    super(`${file}: ${reason}`, options);
    this.name = 'DataFileError';
    this.file = file;
    this.reason = reason;
  }
}

/** `e`'s message without a leading "<file>: " (so wrapping does not repeat the name). */
export function reasonOf(e: unknown, file: string): string {
  const msg = e instanceof Error ? e.message : String(e);
  return msg.startsWith(`${file}: `) ? msg.slice(file.length + 2) : msg;
}
