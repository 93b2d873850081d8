// Reading PyTorch checkpoints safely: see torch_load.ts.
export { TorchCheckpointError } from './errors';
export { PyDict, PyGlobal, PyObject, isDangerous } from './pickle';
export { type TorchDType, TensorRef, StorageRef } from './tensor_ref';
export {
  type LoadTorchOptions, type OpenTorchOptions, type TensorData, type TorchCheckpoint, type TorchTensorInfo,
  TorchCheckpointReader, countTensors, detectTorchFormat, findStateDict, loadTorchCheckpoint,
} from './torch_load';
export * from './ldm';
