"""Data stage: sources -> LabeledSplit (labels on the host) -> tf.data pipelines -> NumPy batches.

  splits = get_dataset(config.data)              # {"train", "test", ...}
  for batch in train_batches(splits["train"], global_batch_size=64, image_size=224,
                             seed=0, epoch=e): ...

TensorFlow is imported CPU-only and hidden from GPUs/TPUs (deft_jax.data._tf).
"""

from deft_jax.data.datasets import KNOWN_SOURCES, apply_noise, default_data_config, get_dataset
from deft_jax.data.errors import (ClassNamesError, CorruptImageError, DataError,
                                  EmptyClassError, LabelRangeError, MissingDataError,
                                  UnknownSourceError)
from deft_jax.data.noise import (NoiseReport, instance_noise, load_noisy_labels, noise_report,
                                 pair_noise, save_noisy_labels, symmetric_noise)
from deft_jax.data.pipeline import eval_batches, steps_per_epoch, train_batches
from deft_jax.data.preprocess import (CLIP_MEAN, CLIP_STD, DATASET_STATS, clip_preprocess_numpy,
                                      clip_preprocess_tf, normalization)
from deft_jax.data.sampling import class_balanced_subset, load_subset, save_subset
from deft_jax.data.splits import LabeledSplit, drop_corrupt, find_corrupt
