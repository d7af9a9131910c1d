"""get_dataset(config.data) -> {"train", "test", ["test2"], ["pretrain"], ...} LabeledSplits.

The fields of the data config, and their defaults, are in deft_jax/data/config.py.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib

import ml_collections
import numpy as np

from deft_jax.data import cifar_offline, corrections, folders, noise, sampling, sources
from deft_jax.data.config import default_data_config
from deft_jax.data.splits import LabeledSplit, drop_corrupt
from deft_jax.data.errors import ClassNamesError, DataError

# The loaders register themselves with the source registry when their modules are imported.
KNOWN_SOURCES = tuple(sources.known())


def _clean_pretraining_set(cfg, class_names) -> LabeledSplit:
  """data.pretrain_root (an image folder) or data.pretrain_file (a CSV), with the train split's classes."""
  if cfg.pretrain_root and cfg.pretrain_file:
    raise DataError("give data.pretrain_root or data.pretrain_file, not both")
  if cfg.pretrain_root:
    split = folders.load_image_folder(cfg.pretrain_root)["train"]
    if list(split.class_names) != list(class_names):
      raise ClassNamesError(
          f"data.pretrain_root={cfg.pretrain_root!r} has the classes {list(split.class_names)[:10]}, the train split "
          f"{list(class_names)[:10]}: the clean pretraining folder needs the same class folders")
  else:
    split = folders.load_csv(cfg.pretrain_file, class_names=list(class_names), root=cfg.root)["train"]
  return dataclasses.replace(split, name=f"{split.name.rsplit('/', 1)[0]}/pretrain", clean_labels=split.labels)


def _check_applicable(cfg) -> None:
  """Fields a source would silently ignore are errors: the run would not be what was asked."""
  cifar_n = cfg.source in ("demo", "cifar10n_offline", "tfds:cifar10_n", "tfds:cifar100_n")
  if cfg.label_set and not (cifar_n or cfg.cifar_n_file):
    raise DataError(f"data.label_set={cfg.label_set!r} does not apply to {cfg.source!r} (only "
                     "to CIFAR-N sources or with data.cifar_n_file)")
  if cfg.pretrain_indices and cfg.source != "cifar10n_offline":
    raise DataError("data.pretrain_indices applies to source 'cifar10n_offline' only")
  if (cfg.train_file or cfg.test_file) and cfg.source != "csv":
    raise DataError("data.train_file / data.test_file apply to source 'csv' only")


def apply_noise(split: LabeledSplit, noise_cfg, *, source: str = "",
                path: str | pathlib.Path | None = None) -> LabeledSplit:
  """Corrupts split.labels as noise_cfg says; the originals become clean_labels.

  A file (noise_cfg.file, else `path`) that exists is loaded instead (and checked
  against this split's labels and ids); one that does not is written.
  """
  kind = noise_cfg.type
  if kind in ("none", "human"):  # "human": no noise is added; the given labels carry people's errors
    return split
  if kind not in noise.NOISE_TYPES:
    raise DataError(f"unknown noise.type {kind!r}; known: {noise.NOISE_TYPES}")
  clean = split.labels
  files = [pathlib.Path(p) for p in (noise_cfg.file, path) if p]
  existing = next((f for f in files if f.is_file()), None)
  if existing is not None:
    noisy, report = noise.load_noisy_labels(existing, clean_labels=clean, ids=split.ids)
    logging.info("noisy labels reused from %s", existing)
  else:
    c, r, seed = split.num_classes, float(noise_cfg.ratio), int(noise_cfg.seed)
    if kind == "sym":
      noisy, report = noise.symmetric_noise(clean, c, r, seed, noise_cfg.another_class)
    elif kind in ("pair", "asym"):
      noisy, report = noise.pair_noise(clean, c, r, seed, noise_cfg.class_map)
    else:
      size = noise_cfg.idn_image_size or (None if _cifar_like(source) else 64)
      images = split.load_images(np.arange(split.num_examples), size)
      noisy, report = noise.instance_noise(clean, images, c, r, seed)
  for f in files:
    if f != existing:
      noise.save_noisy_labels(f, noisy, report, clean_labels=clean, ids=split.ids)
  logging.info("%s: %s", split.name, report.summary())
  return dataclasses.replace(split, labels=noisy, clean_labels=clean, noise_report=report)


def _cifar_like(source: str) -> bool:
  return "cifar" in source or source == "demo"


def _balanced(split: LabeledSplit, cfg, run_dir: pathlib.Path | None) -> LabeledSplit:
  path = pathlib.Path(cfg.balanced_subset_file) if cfg.balanced_subset_file else None
  if path is None and run_dir is not None:
    path = run_dir / "balanced_subset.npz"
  if path is not None and path.is_file():
    idx = sampling.load_subset(path, ids=split.ids)
  else:
    idx = sampling.class_balanced_subset(split.labels, split.num_classes,
                                         cfg.balanced_subset, cfg.balanced_subset_seed)
    if path is not None:
      sampling.save_subset(path, idx, split.ids[idx])
  return split.subset(idx)


def _merged(defaults: ml_collections.ConfigDict, given, prefix="data") -> ml_collections.ConfigDict:
  """Defaults overridden by `given`; an unknown field (a typo) is an error."""
  given = given.to_dict() if hasattr(given, "to_dict") else dict(given)
  for key, value in given.items():
    if key not in defaults:
      raise DataError(f"unknown config field {prefix}.{key}; known: {sorted(defaults)}")
    if isinstance(defaults[key], ml_collections.ConfigDict):
      _merged(defaults[key], value, f"{prefix}.{key}")
    else:
      defaults[key] = value
  return defaults


def get_dataset(config, *, noisy_labels_path=None) -> dict[str, LabeledSplit]:
  """Loads every split of config.source and applies subsets and label noise.

  Args:
    config: the data ConfigDict (see the module docstring).
    noisy_labels_path: where the run keeps its noisy labels (e.g.
      workdir/noisy_labels.npz): reused if present, written otherwise. A
      class-balanced subset (data.balanced_subset) is kept beside it as
      balanced_subset.npz unless data.balanced_subset_file names another file.
  """
  cfg = _merged(default_data_config(), config)
  _check_applicable(cfg)
  source = sources.get(cfg.source)
  splits = source.load(cfg)
  if cfg.pretrain_root or cfg.pretrain_file:
    splits["pretrain"] = _clean_pretraining_set(cfg, splits["train"].class_names)
  if cfg.skip_corrupt:
    splits = {k: drop_corrupt(v) for k, v in splits.items()}
  generic = source.generic
  if generic and cfg.train_indices:
    splits["train"] = splits["train"].subset(cifar_offline.parse_indices(
        cfg.train_indices, splits["train"].num_examples, "train_indices"))
  if cfg.train_size:
    splits["train"] = splits["train"].subset(np.arange(min(cfg.train_size, splits["train"].num_examples)))
  if generic and cfg.test_size:
    for key in ("test", "test2"):
      if key in splits:
        splits[key] = splits[key].subset(np.arange(min(cfg.test_size,
                                                       splits[key].num_examples)))
  if cfg.balanced_subset:
    run_dir = pathlib.Path(noisy_labels_path).parent if noisy_labels_path else None
    splits["train"] = _balanced(splits["train"], cfg, run_dir)
  # A reviewer's decisions are checked before the run writes any file, applied to the labels it trains on.
  todo = corrections.plan(splits["train"], cfg.corrections) if cfg.corrections else None
  train = apply_noise(splits["train"], cfg.noise, source=cfg.source, path=noisy_labels_path)
  if train.noise_report is None and train.clean_labels is not None:
    known = train.clean_labels >= 0
    if known.any() and (train.labels[known] != train.clean_labels[known]).any():
      train = dataclasses.replace(train, noise_report=noise.noise_report(
          train.clean_labels, train.labels, train.num_classes, kind="given"))
  if todo is not None:
    train = corrections.apply(train, todo)
    logging.info("%s: applied %s", cfg.corrections, train.corrections)
  splits["train"] = train
  for split in splits.values():
    logging.info("%s", split.summary())
  return splits
