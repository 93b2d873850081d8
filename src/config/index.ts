// Config files: schema, loading, and the messages for bad ones.
export * from './schema';
export * from './load';
