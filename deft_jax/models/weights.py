"""Merging pretrained weights into a freshly initialised parameter tree.

Every backbone loader (CLIP, ResNet, ConvNeXt, ViT, MAE) converts its checkpoint into a flat
``{"a/b/c": array}`` dict in deft_jax naming and hands it to :func:`merge_params`. The rules are
strict on purpose: a silently dropped or silently random weight is the worst bug a fine-tuning tool
can have, so every key that is present on one side only must be allowed explicitly by a
``dont_load`` pattern (new parameters such as prompts, LoRA, a fresh head), and every shape must match.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

import numpy as np

from deft_jax.errors import DeftError
from deft_jax.tree import flatten, unflatten

class CheckpointMismatchError(DeftError, ValueError):
  """A checkpoint does not fit the model it is loaded into."""


def _matches(path: str, patterns: Iterable[str]) -> bool:
  return any(re.fullmatch(p, path) for p in patterns)


def _listing(names: list[str], limit: int = 40) -> str:
  shown = "\n  ".join(names[:limit])
  more = f"\n  ... and {len(names) - limit} more" if len(names) > limit else ""
  return f"\n  {shown}{more}"


def merge_params(
    init_params: Mapping[str, Any],
    loaded: Mapping[str, Any],
    *,
    dont_load: Iterable[str] = (),
    source: str = "checkpoint",
) -> dict:
  """Returns ``init_params`` with every leaf replaced by its value in ``loaded``.

  Args:
    init_params: freshly initialised (nested) parameters; may be abstract
      (``jax.ShapeDtypeStruct``) when only checking.
    loaded: flat ``{"a/b/c": array}`` already renamed to deft_jax names.
    dont_load: full-match regexes of parameter paths that keep their initial
      value (prompts, PEFT, new heads). A loaded key that matches one is ignored.
    source: a name for error messages (a path or hub id).

  Raises:
    CheckpointMismatchError: listing every missing key, unexpected key and
      shape mismatch at once.
  """
  dont_load = tuple(dont_load)
  init_flat = flatten(init_params)
  missing = sorted(k for k in init_flat if k not in loaded and not _matches(k, dont_load))
  unexpected = sorted(k for k in loaded if k not in init_flat)
  shape_errors = []
  for k, v in loaded.items():
    if k in init_flat and not _matches(k, dont_load):
      want = tuple(init_flat[k].shape)
      got = tuple(np.shape(v))
      if want != got:
        shape_errors.append(f"{k}: model expects {want}, {source} has {got}")
  problems = []
  if missing:
    problems.append(f"{len(missing)} parameter(s) missing from {source}:{_listing(missing)}")
  if unexpected:
    problems.append(
        f"{len(unexpected)} unexpected key(s) in {source} (not in the model):{_listing(unexpected)}")
  if shape_errors:
    problems.append(f"{len(shape_errors)} shape mismatch(es):{_listing(sorted(shape_errors))}")
  if problems:
    raise CheckpointMismatchError(
        f"cannot load {source} into this model (is it a checkpoint of another model or preset?)\n"
        + "\n".join(problems))
  merged = {}
  for k, init_leaf in init_flat.items():
    if k in loaded and not _matches(k, dont_load):
      merged[k] = np.asarray(loaded[k]).astype(init_leaf.dtype)
    else:
      merged[k] = init_leaf
  return unflatten(merged)
