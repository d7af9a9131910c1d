"""The data section of a run's configuration: its fields, their defaults, and what the stages derive from them.

This module imports no TensorFlow, so that loading a config file (and the CLI's checks) stays light; the
pipelines that read these fields live in pipeline.py / preprocess.py.

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
  pretrain_root, pretrain_file   any source: a separate clean set as "pretrain" (for pretraining the
                 offline CLIP), an image folder (root/<class name>/*) or a CSV of path,label; its class
                 names must be the train split's.
  train_size     keep the first train_size train examples, or all when there are fewer (0 = all);
                 what :runlocal uses, so that it fits a folder of any size.
  test_size      keep the first test_size test examples, or all when there are fewer (0 = all).
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
  corrections    a reviewer's corrections.csv (report/review.html's export): relabel / drop train examples
                 before detection ("" = none); see data/corrections.py.
  noise.type     none | human | sym | pair | asym (= pair with class_map) | idn; "human" adds no noise and says
                 the given labels are people's (detect.recipe then defaults to "real_noise")
  noise.ratio, noise.seed, noise.another_class (sym), noise.class_map (pair:
                 "next" or "cifar10"), noise.idn_image_size (0 = 32 px for CIFAR-like
                 sources, else 64), noise.file (reuse if present, else write).
  image_size, train_augment, eval_resize, normalization, shuffle_buffer
                 read by the stages when they build pipelines (train_augment and
                 eval_resize: see data/preprocess.py).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from deft_jax.data.errors import DataError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Per-dataset statistics, named for the dataset whose reference recipe normalises with them (data.normalization;
# CLIP's own, the default, is the principled choice for a CLIP backbone). CIFAR-10's std is the per-pixel one over
# the train set (the often quoted 0.2023... is a per-image average); tests recompute it from the real images.
# The reference normalises Tiny-ImageNet and Stanford Cars with CLIP's statistics, CUB and WebVision with
# ImageNet's, and Clothing1M with its own.
DATASET_STATS = {
    "clip": (CLIP_MEAN, CLIP_STD),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.507, 0.487, 0.441), (0.267, 0.256, 0.276)),
    "clothing1m": ((0.6959, 0.6537, 0.6371), (0.3113, 0.3192, 0.3214)),
}
for _name in ("tiny_imagenet", "cars"):
  DATASET_STATS[_name] = DATASET_STATS["clip"]
for _name in ("cub", "webvision"):
  DATASET_STATS[_name] = DATASET_STATS["imagenet"]

AUGMENTATIONS = ("resize_crop", "squash_crop", "random_resized_crop", "cifar", "none")
EVAL_RESIZES = ("short_side", "squash", "squash_center_crop", "resize_center_crop")
# torchvision-style Resize(256) before RandomCrop(224).
RESIZE_RATIO = 256 / 224


def normalization(name: str | Sequence) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """(mean, std) for a DATASET_STATS name or an explicit ((m,m,m), (s,s,s))."""
  if isinstance(name, str):
    if name not in DATASET_STATS:
      raise DataError(f"unknown normalization {name!r}; known: {sorted(DATASET_STATS)}")
    return DATASET_STATS[name]
  mean, std = name
  if len(mean) != 3 or len(std) != 3:
    raise DataError(f"normalization wants 3 means and 3 stds, got {mean!r}, {std!r}")
  return tuple(map(float, mean)), tuple(map(float, std))


def default_data_config():
  """Every data field with its default (an ml_collections.ConfigDict); configs/*.py extend it."""
  import ml_collections  # pylint: disable=g-import-not-at-top  (only configs need it)
  return ml_collections.ConfigDict({
      "source": "demo", "data_dir": "", "manual_dir": "", "download": True, "root": "",
      "train_split": "", "test_split": "", "label_set": "", "cifar_n_file": "",
      "train_indices": "", "train_size": 0, "pretrain_indices": "", "pretrain_root": "", "pretrain_file": "",
      "test_size": 0,
      "train_file": "", "test_file": "", "class_names": (), "class_names_file": "",
      "num_classes": 0, "webvision_subset": "google", "imagenet_val": True,
      "skip_corrupt": False, "corrections": "",
      "balanced_subset": 0, "balanced_subset_seed": 0, "balanced_subset_file": "",
      "noise": {"type": "none", "ratio": 0.0, "seed": 1, "another_class": False,
                "class_map": "next", "idn_image_size": 0, "file": ""},
      "image_size": 224, "train_augment": "resize_crop", "eval_resize": "short_side", "normalization": "clip",
      "shuffle_buffer": 16384,
  })


@dataclasses.dataclass(frozen=True)
class ImageSpec:
  """The images a model takes and how the data becomes them: side, normalisation, eval transform."""

  image_size: int
  mean: tuple
  std: tuple
  eval_resize: str = "short_side"

  def pipeline_kw(self) -> dict:
    """Keyword arguments of pipeline.train_batches / eval_batches."""
    return dict(image_size=self.image_size, mean=self.mean, std=self.std, eval_resize=self.eval_resize)


def image_spec(data_cfg, model_image_size: int, *, mean=None, std=None) -> ImageSpec:
  """The input of a model taking ``model_image_size`` px images under ``data_cfg``; a ``data.image_size`` that
  differs is an error. ``mean`` / ``std`` override ``data.normalization`` (a backbone's own statistics)."""
  size = int(data_cfg.get("image_size") or model_image_size)
  if size != model_image_size:
    raise DataError(f"data.image_size={size} but the model takes {model_image_size} px images")
  if mean is None or std is None:
    mean, std = normalization(data_cfg.get("normalization", "clip"))
  resize = data_cfg.get("eval_resize", "short_side")
  if resize not in EVAL_RESIZES:
    raise DataError(f"unknown data.eval_resize {resize!r}; known: {EVAL_RESIZES}")
  return ImageSpec(size, tuple(mean), tuple(std), resize)
