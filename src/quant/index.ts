// Quantization of diffusion UNets: static LSQ / PACT and Temporal Dynamic
// Quantization (So et al., NeurIPS 2023). See README.md in this folder.
export * from './config';
export { SILU_MIN, STEP_FLOOR, type ActRange, ActQuantizer, QuantContext, WeightQuantizer, rangeForMin } from './quantizer';
export { TdqModule, encodeTimesteps, fourierEncoding, inverseSoftplus, softplus } from './tdq';
export { StepTable } from './table';
export { type FloatLayer, QuantConv1x1, QuantConv2d, QuantLayer, QuantLinear, isQuantizableLayer, quantLayerOf } from './quant_layers';
export { PAPER_KEEP_FP, type QuantizeOptions, QuantizedModel, isQuantKey, isQuantizedCheckpoint, loadQuantized, quantizeModel, resolveKeepFp } from './quantize_model';
export {
  type SaveQuantizedOptions, type WeightsFormat, WEIGHTS_FORMATS, WEIGHTS_FORMAT_KEY,
  intStateDict, intWeightKey, loadIntStateDict, saveQuantizedCheckpoint, storedAsInt4, weightsFormatOf,
} from './weights_format';
export { type PreparedQat, type QatOptions, qatPrepare } from './qat';
export * from './step_search';
export {
  type CalibrateOptions, type CalibrationReport, type FitOptions, type FromStatsOptions,
  calibrate, calibrateFromStats, calibrateWithReport, fitTdqModules,
} from './calibrate';
export { type ActQuantizerInfo, NotQuantizedError, type QuantizedCheckpointInfo, describeQuantized } from './inspect';
export { type GridOptions, type RangeCurve, type StepCurve, plotActivationRanges, plotStepCurves, tilePngs } from './plot';
