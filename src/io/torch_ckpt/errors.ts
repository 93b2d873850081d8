// The one error type of the PyTorch checkpoint reader: it names the file, and
// where known the entry (a zip member, a tensor key) and the byte offset.
export class TorchCheckpointError extends Error {
  constructor(readonly file: string, message: string, readonly key?: string, readonly offset?: number) {
    super(`torch checkpoint: ${file}${key !== undefined ? `: '${key}'` : ''}: ${message}${offset !== undefined ? ` (at byte ${offset})` : ''}`);
    this.name = 'TorchCheckpointError';
  }
}
