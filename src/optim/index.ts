export * from './adam';
export * from './clip';
export * from './lr_schedule';
