"""Class-balanced subsets (Clothing1M's 1000 x batch images, drawn once) and their files."""

from __future__ import annotations

import pathlib

import numpy as np

from deft_jax.data.errors import DataError


def class_balanced_subset(labels, num_classes: int, total: int, seed: int) -> np.ndarray:
  """Sorted indices of `total` examples, total // C per (given) label where available.

  Classes with too few examples give all they have, and the shortfall is filled
  from the other classes' remaining examples, so the subset always has `total`.
  """
  labels = np.asarray(labels)
  if total > len(labels):
    raise DataError(f"subset of {total} from {len(labels)} examples")
  rng = np.random.default_rng(seed)
  per_class = total // num_classes
  chosen, rest = [], []
  for c in range(num_classes):
    idx = rng.permutation(np.flatnonzero(labels == c))
    chosen.append(idx[:per_class])
    rest.append(idx[per_class:])
  chosen = np.concatenate(chosen)
  short = total - len(chosen)
  if short:
    pool = rng.permutation(np.concatenate(rest))
    chosen = np.concatenate([chosen, pool[:short]])
  return np.sort(chosen).astype(np.int64)


def save_subset(path, indices, ids) -> pathlib.Path:
  """.npz with `indices` and the matching `ids` (so a reload can check the dataset), written atomically."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp.npz")
  np.savez(tmp, indices=np.asarray(indices, np.int64), ids=np.asarray(ids).astype(str))
  tmp.replace(path)
  return path


def load_subset(path, ids=None) -> np.ndarray:
  """Indices from save_subset; with `ids` (of the full split) checks they still match."""
  with np.load(path, allow_pickle=False) as z:
    indices, saved_ids = z["indices"], z["ids"]
  if ids is not None:
    ids = np.asarray(ids).astype(str)
    if indices.size and (indices.max() >= len(ids)
                         or not np.array_equal(ids[indices], saved_ids)):
      raise DataError(f"{path}: subset was drawn from other examples (ids differ)")
  return indices
