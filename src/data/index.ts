// Datasets, the batch loader, and building both from a config.
import { type Config, FASHION_MNIST_TARGET, IMAGE_FOLDER_TARGET, LSUN_TARGET, SYNTHETIC_TARGET, modelImageShape } from '../config/schema';
import type { Dataset } from './dataset';
import { FashionMnistDataset } from './fashion_mnist';
import { ImageFolderDataset } from './image_folder';
import { DataLoader } from './loader';
import { LsunDataset } from './lsun';
import { SyntheticDataset } from './synthetic';

export * from './dataset';
export * from './errors';
export * from './fashion_mnist';
export * from './image_folder';
export * from './synthetic';
export * from './lsun';
export * from './pil_resize';
export * from './loader';

export interface DatasetOverrides {
  /** Replaces data.params.data_dir (Fashion-MNIST) or data.params.root (image folder): the CLI's --data-dir. */
  dataDir?: string;
  /** Replaces the Fashion-MNIST split (e.g. 'test' for evaluation). */
  split?: 'train' | 'test';
  /** The model's input (channels, size) when `cfg.model` is not a schema model (an upstream LDM's first stage). */
  shape?: { channels: number; size: number };
}

/** The dataset a config names, delivering images of the model's input shape. */
export function datasetFromConfig(cfg: Pick<Config, 'data'> & Partial<Pick<Config, 'model'>>, o: DatasetOverrides = {}): Dataset {
  if (!o.shape && !cfg.model) throw new TypeError('datasetFromConfig: needs cfg.model or the shape override');
  const { channels, size } = o.shape ?? modelImageShape(cfg.model!);
  const d = cfg.data;
  switch (d.target) {
    case FASHION_MNIST_TARGET: {
      const p = d.params;
      return new FashionMnistDataset({
        dataDir: o.dataDir ?? p.data_dir, split: o.split ?? p.split, size, limit: p.limit, classes: p.classes,
        fit: { mode: p.fit, pad: p.pad, interpolation: p.interpolation },
      });
    }
    case IMAGE_FOLDER_TARGET: {
      const p = d.params;
      return new ImageFolderDataset({
        root: o.dataDir ?? p.root, channels, size, convert: p.convert, classDirs: p.class_dirs, cache: p.cache, limit: p.limit,
        fit: { mode: p.fit, pad: p.pad, interpolation: p.interpolation },
      });
    }
    case LSUN_TARGET: {
      const p = d.params;
      return new LsunDataset({ txtFile: p.txt_file, dataRoot: o.dataDir ?? p.data_root, size: p.size, interpolation: p.interpolation, limit: p.limit });
    }
    case SYNTHETIC_TARGET:
      return new SyntheticDataset({ count: d.params.count, kind: d.params.kind, seed: d.params.seed, channels, size });
  }
}

/** The training loader of a config: shuffled, fixed-size batches, seeded by training.seed. */
export function loaderFromConfig(cfg: Pick<Config, 'data' | 'training'>, dataset: Dataset, shard?: { rank: number; size: number }): DataLoader {
  return new DataLoader(dataset, {
    shard,
    batchSize: cfg.training.batch_size, seed: cfg.training.seed, shuffle: true, dropLast: true, hflip: 'flip_p' in cfg.data.params ? cfg.data.params.flip_p > 0 : cfg.data.params.random_flip,
  });
}
