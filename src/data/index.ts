// Datasets and the batch loader.
export * from './dataset';
export * from './fashion_mnist';
export * from './image_folder';
export * from './synthetic';
export * from './loader';
