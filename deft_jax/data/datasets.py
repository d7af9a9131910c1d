"""get_dataset(config.data) -> {"train", "test", ["test2"], ["pretrain"], ...} LabeledSplits.

Fields of the data ConfigDict (default_data_config() holds them all):

  source         which dataset. "tfds:<name>" for any TFDS image dataset with a
                 'label' feature; the paper's: tfds:cifar100, tfds:caltech_birds2011,
                 tfds:cars196, tfds:cifar10_n, tfds:cifar100_n (tfds:imagenet2012 is
                 used as WebVision's second test set). Folder layouts: tiny_imagenet,
                 clothing1m, webvision, image_folder, csv. Offline: cifar10n_offline
                 (the shared-assets layout), demo (packaged with deft_jax).
  data_dir       TFDS data_dir ("" = TFDS default).
  manual_dir     TFDS manual_dir for manual downloads ("" = <data_dir>/downloads/manual).
  download       let TFDS download and prepare a missing dataset.
  root           folder of a folder-layout source (or of the shared assets).
  train_split, test_split   TFDS split names ("" = "train" / "test", ImageNet "validation").
  label_set      CIFAR-N label set: cifar10_n worse_label (default), aggre_label,
                 random_label1..3, clean_label; cifar100_n noisy_label (default),
                 clean_label. Also the key read from cifar_n_file.
  cifar_n_file   with tfds:cifar10 / tfds:cifar100: a CIFAR-N .npz in python order.
  train_indices  keep these train examples: "" (all), "a:b" or a list.
  pretrain_indices  cifar10n_offline: a clean held-out train slice as "pretrain".
  test_size      keep the first test_size test examples (0 = all).
  train_file, test_file   csv source: rows path,label[,clean_label].
  class_names, class_names_file   class names for csv (required) / image_folder (optional).
  num_classes    keep classes [0, num_classes) (webvision; 0 = the source's default, 50).
  webvision_subset  google (default), flickr, google+flickr.
  imagenet_val   webvision: add ImageNet val (same classes, via TFDS) as "test2".
  skip_corrupt   drop unreadable images when loading (one decode pass); they are
                 listed in split.skipped and logged. False: the first one is an error
                 naming its path.
  balanced_subset, balanced_subset_seed, balanced_subset_file
                 draw a class-balanced train subset of this size once (Clothing1M:
                 1000 x batch); the file (default: balanced_subset.npz beside the
                 run's noisy labels) is reused if present, else written.
  noise.type     none | sym | pair | asym (= pair with class_map) | idn
  noise.ratio, noise.seed, noise.another_class (sym), noise.class_map (pair:
                 "next" or "cifar10"), noise.idn_image_size (0 = 32 px for CIFAR-like
                 sources, else 64), noise.file (reuse if present, else write).
  image_size, train_augment, eval_resize, normalization, shuffle_buffer
                 read by the stages when they build pipelines (train_augment and
                 eval_resize: see data/preprocess.py).
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib

import ml_collections
import numpy as np

from deft_jax.data import cifar_offline, folders, noise, sampling, tfds_sources
from deft_jax.data.errors import MissingDataError, UnknownSourceError
from deft_jax.data.splits import LabeledSplit, drop_corrupt

FOLDER_SOURCES = ("tiny_imagenet", "clothing1m", "webvision", "image_folder", "csv",
                  "cifar10n_offline", "demo")
PAPER_TFDS = ("cifar100", "caltech_birds2011", "cars196", "cifar10_n", "cifar100_n",
              "imagenet2012")
KNOWN_SOURCES = tuple(f"tfds:{n}" for n in PAPER_TFDS) + FOLDER_SOURCES


def default_data_config() -> ml_collections.ConfigDict:
  """Every data field with its default; configs/*.py extend it."""
  return ml_collections.ConfigDict({
      "source": "demo", "data_dir": "", "manual_dir": "", "download": True, "root": "",
      "train_split": "", "test_split": "", "label_set": "", "cifar_n_file": "",
      "train_indices": "", "pretrain_indices": "", "test_size": 0,
      "train_file": "", "test_file": "", "class_names": (), "class_names_file": "",
      "num_classes": 0, "webvision_subset": "google", "imagenet_val": True,
      "skip_corrupt": False,
      "balanced_subset": 0, "balanced_subset_seed": 0, "balanced_subset_file": "",
      "noise": {"type": "none", "ratio": 0.0, "seed": 1, "another_class": False,
                "class_map": "next", "idn_image_size": 0, "file": ""},
      "image_size": 224, "train_augment": "resize_crop", "eval_resize": "short_side", "normalization": "clip",
      "shuffle_buffer": 16384,
  })


def _load_tfds(cfg, name: str) -> dict[str, LabeledSplit]:
  base = name.split(":")[0]
  common = dict(data_dir=cfg.data_dir, manual_dir=cfg.manual_dir, download=cfg.download)
  test_split = cfg.test_split or ("validation" if base == "imagenet2012" else "test")
  first = cfg.num_classes or (50 if base == "imagenet2012" else 0)
  out = {"train": tfds_sources.load_tfds(
      name, split=cfg.train_split or "train", label_set=cfg.label_set,
      cifar_n_file=cfg.cifar_n_file, first_classes=first, **common)}
  out["test"] = tfds_sources.load_tfds(name, split=test_split, split_role="test",
                                       first_classes=first, **common)
  return out


def _load_source(cfg) -> dict[str, LabeledSplit]:
  source = cfg.source
  if source.startswith("tfds:"):
    return _load_tfds(cfg, source[len("tfds:"):])
  if source == "demo":
    return cifar_offline.load_demo(label_set=cfg.label_set or "worse_label",
                                   train_indices=cfg.train_indices, test_size=cfg.test_size)
  if source == "cifar10n_offline":
    return cifar_offline.load_cifar10n_offline(
        _need_root(cfg), label_set=cfg.label_set or "worse_label",
        train_indices=cfg.train_indices, pretrain_indices=cfg.pretrain_indices,
        test_size=cfg.test_size)
  if source == "image_folder":
    return folders.load_image_folder(
        _need_root(cfg), class_names=folders.load_class_names(cfg.class_names,
                                                              cfg.class_names_file))
  if source == "csv":
    return folders.load_csv(cfg.train_file, test_file=cfg.test_file,
                            class_names=cfg.class_names,
                            class_names_file=cfg.class_names_file, root=cfg.root)
  if source == "tiny_imagenet":
    return folders.load_tiny_imagenet(_need_root(cfg))
  if source == "clothing1m":
    return folders.load_clothing1m(_need_root(cfg))
  if source == "webvision":
    n = cfg.num_classes or 50
    out = folders.load_webvision(_need_root(cfg), subset=cfg.webvision_subset, num_classes=n)
    if cfg.imagenet_val:
      try:
        out["test2"] = tfds_sources.load_tfds(
            "imagenet2012", split="validation", split_role="test", first_classes=n,
            data_dir=cfg.data_dir, manual_dir=cfg.manual_dir, download=cfg.download)
      except MissingDataError as e:
        raise MissingDataError(f"{e}\n(webvision's second test set; set "
                               "data.imagenet_val=False to run without it)") from e
      if out["test2"].class_names != out["test"].class_names:
        logging.warning("webvision and ImageNet class names differ: %s vs %s",
                        out["test"].class_names[:3], out["test2"].class_names[:3])
    return out
  raise UnknownSourceError(
      f"unknown data.source {source!r}; known: {', '.join(KNOWN_SOURCES)} "
      "(or tfds:<any TFDS image classification dataset>)")


def _check_applicable(cfg) -> None:
  """Fields a source would silently ignore are errors: the run would not be what was asked."""
  cifar_n = cfg.source in ("demo", "cifar10n_offline", "tfds:cifar10_n", "tfds:cifar100_n")
  if cfg.label_set and not (cifar_n or cfg.cifar_n_file):
    raise ValueError(f"data.label_set={cfg.label_set!r} does not apply to {cfg.source!r} (only "
                     "to CIFAR-N sources or with data.cifar_n_file)")
  if cfg.pretrain_indices and cfg.source != "cifar10n_offline":
    raise ValueError("data.pretrain_indices applies to source 'cifar10n_offline' only")
  if (cfg.train_file or cfg.test_file) and cfg.source != "csv":
    raise ValueError("data.train_file / data.test_file apply to source 'csv' only")


def _need_root(cfg) -> str:
  if not cfg.root:
    raise ValueError(f"data.source={cfg.source!r} needs data.root (the dataset's folder)")
  return cfg.root


def apply_noise(split: LabeledSplit, noise_cfg, *, source: str = "",
                path: str | pathlib.Path | None = None) -> LabeledSplit:
  """Corrupts split.labels as noise_cfg says; the originals become clean_labels.

  A file (noise_cfg.file, else `path`) that exists is loaded instead (and checked
  against this split's labels and ids); one that does not is written.
  """
  kind = noise_cfg.type
  if kind == "none":
    return split
  if kind not in noise.NOISE_TYPES:
    raise ValueError(f"unknown noise.type {kind!r}; known: {noise.NOISE_TYPES}")
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
      raise ValueError(f"unknown config field {prefix}.{key}; known: {sorted(defaults)}")
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
  splits = _load_source(cfg)
  if cfg.skip_corrupt:
    splits = {k: drop_corrupt(v) for k, v in splits.items()}
  generic = cfg.source.startswith("tfds:") or cfg.source in (
      "tiny_imagenet", "clothing1m", "webvision", "image_folder", "csv")
  if generic and cfg.train_indices:
    splits["train"] = splits["train"].subset(cifar_offline.parse_indices(
        cfg.train_indices, splits["train"].num_examples, "train_indices"))
  if generic and cfg.test_size:
    for key in ("test", "test2"):
      if key in splits:
        splits[key] = splits[key].subset(np.arange(min(cfg.test_size,
                                                       splits[key].num_examples)))
  if cfg.balanced_subset:
    run_dir = pathlib.Path(noisy_labels_path).parent if noisy_labels_path else None
    splits["train"] = _balanced(splits["train"], cfg, run_dir)
  train = apply_noise(splits["train"], cfg.noise, source=cfg.source, path=noisy_labels_path)
  if train.noise_report is None and train.clean_labels is not None:
    known = train.clean_labels >= 0
    if known.any() and (train.labels[known] != train.clean_labels[known]).any():
      train = dataclasses.replace(train, noise_report=noise.noise_report(
          train.clean_labels, train.labels, train.num_classes, kind="given"))
  splits["train"] = train
  for split in splits.values():
    logging.info("%s", split.summary())
  return splits
