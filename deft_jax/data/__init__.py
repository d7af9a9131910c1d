"""Data stage: sources -> LabeledSplit (labels on the host) -> tf.data pipelines -> NumPy batches.

  from deft_jax.data import datasets, pipeline
  splits = datasets.get_dataset(config.data)          # {"train", "test", ...}
  for batch in pipeline.train_batches(splits["train"], global_batch_size=64, image_size=224, seed=0, epoch=e):
    ...

config.py (the data config's fields, no TensorFlow), sources.py (the registry of dataset layouts), datasets.py
(config -> splits, subsets, noise), pipeline.py / preprocess.py (tf.data), noise.py, splits.py, errors.py.
TensorFlow is imported CPU-only and hidden from GPUs/TPUs (deft_jax.data._tf), and only by the modules that
need it: importing this package imports nothing.
"""
