// Upstream LDM configs (configs/latent-diffusion/*.yaml, the config.yaml of the
// model zoo) carry what this schema keeps in `data` and `training` in
// Lightning's places: a main.DataModuleFromConfig data section, the learning
// rate schedule as model.params.scheduler_config, the step limit in
// lightning.trainer. This maps those onto the schema before validation, so
// such a file loads unchanged; what is read is said in the run's warnings,
// what is ignored too, and what cannot run is an error naming the key.
import type { ConfigIssue } from './load';
import { LSUN_TARGET, canonicalTarget } from './schema';

type Obj = Record<string, unknown>;

const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Upstream's LSUN classes: their file list and data root (relative to the working directory), and the flip of each split. */
const LSUN_CLASSES: Readonly<Record<string, { txt_file: string; data_root: string; flip_p: number }>> = {
  'ldm.data.lsun.LSUNChurchesTrain': { txt_file: 'data/lsun/church_outdoor_train.txt', data_root: 'data/lsun/churches', flip_p: 0.5 },
  'ldm.data.lsun.LSUNChurchesValidation': { txt_file: 'data/lsun/church_outdoor_val.txt', data_root: 'data/lsun/churches', flip_p: 0 },
  'ldm.data.lsun.LSUNBedroomsTrain': { txt_file: 'data/lsun/bedrooms_train.txt', data_root: 'data/lsun/bedrooms', flip_p: 0.5 },
  'ldm.data.lsun.LSUNBedroomsValidation': { txt_file: 'data/lsun/bedrooms_val.txt', data_root: 'data/lsun/bedrooms', flip_p: 0 },
  'ldm.data.lsun.LSUNCatsTrain': { txt_file: 'data/lsun/cat_train.txt', data_root: 'data/lsun/cats', flip_p: 0.5 },
  'ldm.data.lsun.LSUNCatsValidation': { txt_file: 'data/lsun/cat_val.txt', data_root: 'data/lsun/cats', flip_p: 0 },
};

const LAMBDA_LINEAR = 'ldm.lr_scheduler.LambdaLinearScheduler';

export interface UpstreamResult {
  raw: Obj;
  /** What was taken from upstream's places, and what was ignored. */
  notes: string[];
  issues: ConfigIssue[];
}

/**
 * Maps the upstream sections of a parsed config (a copy is changed; `raw` is
 * not). For 'model' (sampling, converting: only the model section matters) a
 * missing data or training section is filled with placeholders nobody reads.
 */
export function fromUpstream(input: Obj, purpose: 'train' | 'model' = 'train'): UpstreamResult {
  const raw = structuredClone(input);
  const notes: string[] = [];
  const issues: ConfigIssue[] = [];
  const ignored: string[] = [];
  const training = (): Obj => {
    if (!isObj(raw.training)) raw.training = {};
    return raw.training as Obj;
  };
  const setDefault = (key: string, value: unknown, from: string) => {
    const t = training();
    if (t[key] === undefined && value !== undefined) {
      t[key] = value;
      notes.push(`training.${key} = ${JSON.stringify(value)} from ${from}`);
    }
  };

  // data: main.DataModuleFromConfig -> its train dataset
  const data = raw.data;
  if (isObj(data) && data.target === 'main.DataModuleFromConfig') {
    const p = isObj(data.params) ? data.params : {};
    const train = p.train;
    if (!isObj(train) || typeof train.target !== 'string') {
      issues.push({ path: ['data', 'params', 'train'], message: 'main.DataModuleFromConfig needs a train dataset (target and params) to train on' });
    } else {
      const tp = isObj(train.params) ? train.params : {};
      const known = LSUN_CLASSES[train.target];
      if (known) {
        const { txt_file, data_root, flip_p } = known;
        raw.data = { target: LSUN_TARGET, params: { txt_file, data_root, flip_p, ...tp } };
      } else if (canonicalTarget(train.target) !== train.target || train.target.startsWith('tdq_native.')) {
        raw.data = { target: train.target, params: tp };
      } else {
        issues.push({
          path: ['data', 'params', 'train', 'target'],
          message: `${train.target} is not implemented; use upstream's LSUN classes (ldm.data.lsun.*), ldm.data.lsun.LSUNBase with txt_file and data_root, or tdq_native.data.ImageFolder / FashionMNIST`,
        });
      }
      setDefault('batch_size', p.batch_size, 'data.params.batch_size');
      for (const k of Object.keys(p)) if (!['train', 'batch_size'].includes(k)) ignored.push(`data.params.${k}`);
    }
  }

  // model.params.scheduler_config -> training.lr_schedule
  const mp = isObj(raw.model) && isObj(raw.model.params) ? raw.model.params : null;
  if (mp && mp.scheduler_config !== undefined) {
    const sc = mp.scheduler_config;
    if (!isObj(sc) || sc.target !== LAMBDA_LINEAR || !isObj(sc.params)) {
      issues.push({ path: ['model', 'params', 'scheduler_config'], message: `only ${LAMBDA_LINEAR} (with params) is implemented` });
    } else {
      setDefault('lr_schedule', 'lambda_linear', 'model.params.scheduler_config');
      const t = training();
      if (t.lambda_linear === undefined) t.lambda_linear = sc.params;
      delete mp.scheduler_config;
    }
  }

  // lightning.trainer: the step limit and gradient accumulation
  const lt = isObj(raw.lightning) && isObj(raw.lightning.trainer) ? raw.lightning.trainer : null;
  if (lt) {
    setDefault('max_steps', lt.max_steps, 'lightning.trainer.max_steps');
    setDefault('accumulate_grad_batches', lt.accumulate_grad_batches, 'lightning.trainer.accumulate_grad_batches');
    for (const k of Object.keys(lt)) if (!['max_steps', 'accumulate_grad_batches'].includes(k)) ignored.push(`lightning.trainer.${k}`);
  }
  if (isObj(raw.lightning)) for (const k of Object.keys(raw.lightning)) if (k !== 'trainer') ignored.push(`lightning.${k}`);
  delete raw.lightning;

  if (purpose === 'model') {
    if (raw.data === undefined) raw.data = { target: 'synthetic' };
    if (!isObj(raw.training)) raw.training = {};
    const t = raw.training as Obj;
    t.batch_size ??= 1;
    t.max_steps ??= 1;
  } else if (isObj(raw.training) && raw.training.max_steps === undefined && (notes.length || ignored.length)) {
    issues.push({ path: ['training', 'max_steps'], message: 'required: upstream leaves the length of a run to Lightning; pass --set training.max_steps=N (or a training section)' });
  }
  if (ignored.length) notes.push(`ignored: ${ignored.join(', ')}`);
  return { raw, notes, issues };
}
