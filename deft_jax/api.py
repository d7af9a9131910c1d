"""A Python API for notebooks: the label-issue table from images, labels and class names.

    import deft_jax.api as deft
    issues = deft.find_label_issues(images, labels, class_names)        # pandas DataFrame, worst first
    issues[issues.is_label_issue].head(20)

``images`` is a uint8 array [N, H, W, 3] or a list of image file paths. By default the detector is CLIP ViT-B/16
from the Hugging Face hub; pass ``checkpoint`` (a local HF CLIP directory, .safetensors file or hub id) to use
another one. The run is the same phase-1 detection as ``python -m deft_jax.main`` (same defaults, same code),
kept in ``workdir`` (a temporary directory by default) so that calling again with the same workdir resumes.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np


def _split_from_arrays(images, labels, class_names, clean_labels=None, ids=None):
  from PIL import Image

  from deft_jax.data.splits import BytesReader, FileReader, LabeledSplit

  labels = np.asarray(labels)
  if isinstance(images, np.ndarray):
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
      raise ValueError(f"images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    if len(images) != len(labels):
      raise ValueError(f"{len(images)} images but {len(labels)} labels")
    chunks, offsets = [], [0]
    for im in images:  # PNG keeps the pixels exact; the pipeline decodes any format
      buf = io.BytesIO()
      Image.fromarray(im).save(buf, format="PNG", compress_level=1)
      chunks.append(np.frombuffer(buf.getvalue(), np.uint8))
      offsets.append(offsets[-1] + len(chunks[-1]))
    names = ids if ids is not None else [f"image_{i}" for i in range(len(images))]
    reader = BytesReader(np.concatenate(chunks), np.asarray(offsets), names)
  else:
    paths = [str(p) for p in images]
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
      raise FileNotFoundError(f"{len(missing)} image file(s) do not exist, e.g. {missing[:3]}")
    if len(paths) != len(labels):
      raise ValueError(f"{len(paths)} image paths but {len(labels)} labels")
    names = ids if ids is not None else paths
    reader = FileReader(paths)
  return LabeledSplit(name="api/train", class_names=list(class_names), labels=labels, clean_labels=clean_labels,
                      ids=np.asarray(names), reader=reader)


def find_label_issues(
    images,
    labels: Sequence[int],
    class_names: Sequence[str],
    *,
    checkpoint: str = "openai/clip-vit-base-patch16",
    clean_labels: Optional[Sequence[int]] = None,
    ids: Optional[Sequence[str]] = None,
    workdir: Optional[str | Path] = None,
    overrides: Optional[Mapping[str, Any]] = None,
    return_summary: bool = False,
):
  """Runs DEFT's detector and returns the label-issue table (a pandas DataFrame, worst first).

  Args:
    images: uint8 [N, H, W, 3] or N image paths.
    labels: the given labels, ints in [0, len(class_names)).
    class_names: human-readable class names (they become the text prompts).
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
  from deft_jax.detect import train as detect
  from deft_jax.report import build_summary, label_issues_table

  split = _split_from_arrays(images, labels, class_names,
                             None if clean_labels is None else np.asarray(clean_labels), ids)
  config = config_lib.base_config()
  config.stages = ("detect",)
  config.data.source = "api"
  config.model.checkpoint = checkpoint
  for key, value in (overrides or {}).items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise ValueError(f"unknown config field {key!r}")
    node[leaf] = value
  if not config.data.image_size or config.data.image_size == 224:
    from deft_jax.models import build
    config.data.image_size = build.clip_config(config.model, checkpoint).vision.image_size
  workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="deft_jax_"))
  check_workdir(workdir, config)
  mesh = parallel.make_mesh(config.mesh)
  writer = metric_writers.create_default_writer(str(workdir / "tensorboard"), just_logging=jax.process_index() > 0)
  detection = detect.run(config, workdir, train_split=split, mesh=mesh, writer=writer, checkpoint=checkpoint)
  writer.close()
  table = label_issues_table(detection, given=split.labels, class_names=split.class_names,
                             clean_labels=split.clean_labels, ids=split.ids)
  if return_summary:
    return table, build_summary(detection, given=split.labels, class_names=split.class_names,
                                clean_labels=split.clean_labels)
  return table
