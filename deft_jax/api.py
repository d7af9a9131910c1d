"""A Python API for notebooks: the label-issue table from images, labels and class names.

    import deft_jax.api as deft
    issues = deft.find_label_issues(images, labels, class_names)        # pandas DataFrame, worst first
    issues[issues.is_label_issue].head(20)
    deft.review(issues, images, "review.html")   # the page where a person decides, image by image

``images`` is a uint8 array [N, H, W, 3], a list of image file paths, or a Hugging Face ``datasets.Dataset``
(image and label columns; class names from its ``ClassLabel``); ``tfds="name"`` with ``split=`` reads a TFDS
dataset instead (labels and class names from the dataset). By default the detector is CLIP ViT-B/16
from the Hugging Face hub; pass ``checkpoint`` (a local HF CLIP directory, .safetensors file or hub id) to use
another one. The run is the same phase-1 detection as ``python -m deft_jax.main`` (same defaults, same code),
kept in ``workdir`` (a temporary directory by default) so that calling again with the same workdir resumes.
"""

from __future__ import annotations

import dataclasses
import io
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from deft_jax.errors import ConfigError, MissingFileError


def _split_from_arrays(images, labels, class_names, clean_labels=None, ids=None):
  from PIL import Image

  from deft_jax.data.splits import BytesReader, FileReader, LabeledSplit

  labels = np.asarray(labels)
  if isinstance(images, np.ndarray):
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
      raise ConfigError(f"images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    if len(images) != len(labels):
      raise ConfigError(f"{len(images)} images but {len(labels)} labels")
    encoded = []
    for im in images:  # PNG keeps the pixels exact; the pipeline decodes any format
      buf = io.BytesIO()
      Image.fromarray(im).save(buf, format="PNG", compress_level=1)
      encoded.append(buf.getvalue())
    names = ids if ids is not None else [f"image_{i}" for i in range(len(images))]
    reader = BytesReader.from_encoded(encoded, names)
  else:
    paths = [str(p) for p in images]
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
      raise MissingFileError(f"{len(missing)} image file(s) do not exist, e.g. {missing[:3]}")
    if len(paths) != len(labels):
      raise ConfigError(f"{len(paths)} image paths but {len(labels)} labels")
    names = ids if ids is not None else paths
    reader = FileReader(paths)
  return LabeledSplit(name="api/train", class_names=list(class_names), labels=labels, clean_labels=clean_labels,
                      ids=np.asarray(names), reader=reader)


def _is_hf_dataset(obj) -> bool:
  return hasattr(obj, "features") and hasattr(obj, "column_names") and hasattr(obj, "cast_column")


def _split_from_hf(dataset, labels, class_names, *, image_column: str, label_column: str, clean_labels=None,
                   ids=None):
  """A Hugging Face ``datasets.Dataset`` as a LabeledSplit: the encoded image bytes as stored (no re-encoding),
  the labels and class names from its label column unless given."""
  from deft_jax.data.splits import BytesReader, LabeledSplit

  for col in (image_column,) + (() if labels is not None else (label_column,)):
    if col not in dataset.column_names:
      raise ConfigError(f"the dataset has no column {col!r} (columns: {dataset.column_names}); name the image "
                        "and label columns with image_column= and label_column=")
  if labels is None:
    labels = np.asarray(dataset[label_column])
  if class_names is None:
    feature = dataset.features.get(label_column)
    names = getattr(feature, "names", None)
    if not names:
      raise ConfigError(f"column {label_column!r} is not a ClassLabel with names ({feature}); pass class_names")
    class_names = [str(n).replace("_", " ") for n in names]
  image_feature = dataset.features[image_column]
  if type(image_feature).__name__ != "Image":
    raise ConfigError(f"column {image_column!r} holds {type(image_feature).__name__}, not images; pass "
                      "images as a uint8 array or file paths instead")
  import datasets as hf_datasets  # pylint: disable=g-import-not-at-top

  raw = dataset.cast_column(image_column, hf_datasets.Image(decode=False))
  encoded = []
  for i, item in enumerate(raw[image_column]):
    data = item.get("bytes") if item else None
    if data is None and item and item.get("path"):
      path = Path(item["path"])
      if not path.is_file():
        raise MissingFileError(f"image {i} of the dataset points to {path}, which does not exist")
      data = path.read_bytes()
    if not data:
      raise ConfigError(f"image {i} of the dataset is empty")
    encoded.append(data)
  labels = np.asarray(labels)
  if len(labels) != len(encoded):
    raise ConfigError(f"{len(encoded)} images but {len(labels)} labels")
  names = ids if ids is not None else [f"{getattr(dataset, 'split', None) or 'dataset'}/{i}"
                                       for i in range(len(encoded))]
  return LabeledSplit(name="api/train", class_names=list(class_names), labels=labels, clean_labels=clean_labels,
                      ids=np.asarray(names), reader=BytesReader.from_encoded(encoded, names))


def find_label_issues(
    images=None,
    labels: Optional[Sequence[int]] = None,
    class_names: Optional[Sequence[str]] = None,
    *,
    tfds: Optional[str] = None,
    split: str = "train",
    data_dir: str = "",
    image_column: str = "image",
    label_column: str = "label",
    checkpoint: str = "openai/clip-vit-base-patch16",
    clean_labels: Optional[Sequence[int]] = None,
    ids: Optional[Sequence[str]] = None,
    workdir: Optional[str | Path] = None,
    overrides: Optional[Mapping[str, Any]] = None,
    return_summary: bool = False,
):
  """Runs DEFT's detector and returns the label-issue table (a pandas DataFrame, worst first).

  Args:
    images: uint8 [N, H, W, 3], N image paths, or a Hugging Face ``datasets.Dataset``.
    labels: the given labels, ints in [0, len(class_names)) (for a Dataset or TFDS: taken from it if omitted).
    class_names: human-readable class names (they become the text prompts; for a Dataset or TFDS: taken from
      its label feature if omitted).
    tfds: a TFDS dataset name (e.g. "cifar10", "cifar10_n") to read instead of ``images``; ``split`` (a plain
      split name) and ``data_dir`` choose what is read. CIFAR-N datasets give their default human label set and
      their clean labels.
    split: the TFDS split (default "train").
    data_dir: the TFDS data directory (default: TFDS's own).
    image_column, label_column: the Dataset's columns.
    checkpoint: the CLIP to use (HF directory, .safetensors file or hub id).
    clean_labels: ground truth if known (adds precision / recall to the summary).
    ids: a name per image for the table (default: the path or image_<i>).
    workdir: where checkpoints and outputs go (default: a new temporary directory).
    overrides: dotted config overrides, e.g. {"detect.epochs": 5, "model.dtype": "bfloat16"}.
    return_summary: also return the summary dict (what the health summary prints).
  """
  import jax
  from clu import metric_writers

  from deft_jax import config_lib, parallel
  from deft_jax.checkpoint import check_workdir
  from deft_jax.classify.run_clip import RunCLIP
  from deft_jax.detect import train as detect_train
  from deft_jax.report import build_summary, label_issues_table

  split = _train_split(images, labels, class_names, tfds=tfds, split=split, data_dir=data_dir,
                       image_column=image_column, label_column=label_column,
                       clean_labels=None if clean_labels is None else np.asarray(clean_labels), ids=ids)
  config = config_lib.base_config()
  config.stages = ("detect",)
  config.data.source = "api"
  config.model.checkpoint = checkpoint
  for key, value in (overrides or {}).items():
    config_lib.set_field(config, key, value)
  clip = RunCLIP(config, checkpoint)
  if not config.data.image_size or config.data.image_size == 224:
    config.data.image_size = clip.config.vision.image_size
  workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="deft_jax_"))
  check_workdir(workdir, config)
  mesh = parallel.make_mesh(config.mesh)
  writer = metric_writers.create_default_writer(str(workdir / "tensorboard"), just_logging=jax.process_index() > 0)
  detection = detect_train.run(config, workdir, train_split=split, mesh=mesh, writer=writer, clip=clip)
  writer.close()
  table = label_issues_table(detection, given=split.labels, class_names=split.class_names,
                             clean_labels=split.clean_labels, ids=split.ids)
  if return_summary:
    return table, build_summary(detection, given=split.labels, class_names=split.class_names,
                                clean_labels=split.clean_labels)
  return table


def _train_split(images, labels, class_names, *, tfds, split, data_dir, image_column, label_column, clean_labels,
                 ids):
  """The LabeledSplit that find_label_issues audits, from whichever form its images came in."""
  clean = clean_labels
  if tfds is not None:
    if images is not None or labels is not None:
      raise ConfigError("give either tfds= or images and labels, not both")
    from deft_jax.data.tfds_sources import load_tfds
    split = load_tfds(tfds, split=split, data_dir=data_dir)
    if class_names is not None:
      if len(class_names) != len(split.class_names):
        raise ConfigError(f"{len(class_names)} class names for {tfds}, which has {len(split.class_names)} classes")
      split = dataclasses.replace(split, class_names=list(class_names))
  elif images is None:
    raise ConfigError("no images: pass images (array, paths or a datasets.Dataset) or tfds=")
  elif _is_hf_dataset(images):
    split = _split_from_hf(images, labels, class_names, image_column=image_column, label_column=label_column,
                           clean_labels=clean, ids=ids)
  else:
    if labels is None or class_names is None:
      raise ConfigError("images as an array or paths need labels and class_names")
    split = _split_from_arrays(images, labels, class_names, clean, ids)
  return split


def _image_fn(images):
  """``indices -> uint8 [k, H, W, 3]`` over a uint8 array or a list of paths (a path that cannot be read raises,
  which the review page turns into a placeholder tile)."""
  if images is None:
    return None
  if isinstance(images, np.ndarray):
    if images.ndim not in (3, 4) or images.dtype != np.uint8:
      raise ConfigError(f"images must be uint8 [N, H, W, 3] or N paths, got {images.dtype} {images.shape}")
    return lambda idx: images[np.asarray(idx)]
  paths = [str(p) for p in images]

  def load(idx):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    out = []
    for i in np.asarray(idx):
      with Image.open(paths[int(i)]) as im:
        out.append(np.asarray(im.convert("RGB")))
    return out

  return load


def review(issues, images=None, path: str | Path = "review.html", *, class_names: Optional[Sequence[str]] = None,
           top_k: int = 1000, title: Optional[str] = None) -> Path:
  """Writes the review page (the run's ``report/review.html``) for the table of :func:`find_label_issues`.

  Args:
    issues: the DataFrame of :func:`find_label_issues` (or a run's ``label_issues.csv`` read with pandas).
    images: what ``find_label_issues`` was given, indexed by the table's ``index`` column: uint8 [N, H, W, 3]
      or N image paths (an image that cannot be read shows a placeholder); None: placeholders only.
    path: the page to write (a directory gets ``review.html``).
    class_names: every class name, for the "relabel to" list (default: those the table names).
    top_k: how many of the most suspect rows the page shows (all when the table is smaller).
    title: the page's heading.

  Returns:
    The written page; open it in a browser, decide, and "export" saves ``corrections.csv`` for
    ``--config.data.corrections``.
  """
  from deft_jax.report import review as review_lib

  if images is not None and not isinstance(images, np.ndarray) and len(images) < len(issues):
    raise ConfigError(f"{len(images)} images for a table of {len(issues)} rows")
  return review_lib.write_review(path, issues, image_fn=_image_fn(images), class_names=class_names, top_k=top_k,
                                 title=title)
