"""Synthetic label noise on the host (NumPy), seeded, with a report and a file format.

Generators (each returns (noisy_labels int32 [N], NoiseReport)):
  symmetric_noise   a random fraction `ratio` of the samples gets a label drawn
                    uniformly from all C classes (may equal the true one, so the
                    expected flip rate is ratio * (1 - 1/C)), or with
                    another_class=True from the C - 1 other classes.
  pair_noise        a random fraction `ratio` is moved along a class map
                    (default k -> k+1 mod C; CIFAR10_ASYM_MAP is the classic
                    truck->automobile, bird->airplane, deer->horse, cat<->dog).
  instance_noise    Xia et al., NeurIPS 2020 (part-dependent / instance-dependent):
                    q_i ~ N(ratio, 0.1) truncated to [0, 1]; W ~ N(0, 1) of shape
                    (C, d, C); a = x_i W[y_i], a[y_i] = -inf;
                    P_i = q_i softmax(a) + (1 - q_i) onehot(y_i); the noisy label is
                    drawn from P_i. x_i is the raw 0-255 pixel vector (CHW order).
                    W is drawn one class slice at a time: the same numbers as one
                    (C, d, C) draw, without its memory (3.9 GB at C=200, 64x64).
The noisy labels are saved with save_noisy_labels next to a run's outputs and
reused with load_noisy_labels, so every run can be reproduced exactly.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
from scipy import stats

from deft_jax.data.errors import DataError, check_labels, require_file

# The classic CIFAR-10 asymmetric map (Patrini et al. 2017).
CIFAR10_ASYM_MAP = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
NOISE_TYPES = ("none", "human", "sym", "pair", "asym", "idn")  # human: none added, the labels are people's


@dataclasses.dataclass(frozen=True)
class NoiseReport:
  """What was asked for and what came out.

  transition: [C, C] row-normalised, P(noisy = j | clean = i), measured.
  counts: [C, C] int64, the same as counts.
  """

  kind: str
  requested_ratio: float
  realised_rate: float
  transition: np.ndarray
  counts: np.ndarray
  seed: int = -1

  def summary(self) -> str:
    diag = np.diag(self.transition)
    worst = int(np.argmin(diag))
    asked = ("" if np.isnan(self.requested_ratio)
             else f"requested {100 * self.requested_ratio:.1f}%, ")
    return (f"{self.kind} noise: {asked}realised "
            f"{100 * self.realised_rate:.2f}% (most corrupted class {worst}: "
            f"{100 * (1 - diag[worst]):.1f}% flipped)")


def noise_report(clean, noisy, num_classes: int, *, kind: str = "real",
                 requested_ratio: float = float("nan"), seed: int = -1) -> NoiseReport:
  """Measures the flip rate and the C x C transition matrix of noisy vs clean labels."""
  clean, noisy = np.asarray(clean), np.asarray(noisy)
  known = clean >= 0
  counts = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(counts, (clean[known], noisy[known]), 1)
  rows = counts.sum(1, keepdims=True)
  transition = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
  rate = float(np.mean(clean[known] != noisy[known])) if known.any() else float("nan")
  return NoiseReport(kind, float(requested_ratio), rate, transition, counts, int(seed))


def _check(labels, num_classes, ratio):
  labels = np.asarray(labels)
  check_labels(labels, num_classes, what="labels to corrupt")
  if not 0.0 <= ratio <= 1.0:
    raise DataError(f"noise ratio must lie in [0, 1], got {ratio}")
  return labels.astype(np.int32)


def _chosen(n: int, ratio: float, rng) -> np.ndarray:
  # Exactly round(ratio * n) samples, so the realised rate is not left to chance.
  return rng.permutation(n)[:int(round(ratio * n))]


def symmetric_noise(labels, num_classes: int, ratio: float, seed: int,
                    another_class: bool = False):
  """Uniform noise; another_class=True never draws the true label."""
  labels = _check(labels, num_classes, ratio)
  rng = np.random.default_rng(seed)
  idx = _chosen(len(labels), ratio, rng)
  noisy = labels.copy()
  if another_class:
    # Uniform over the C-1 others: shift by 1..C-1.
    noisy[idx] = (labels[idx] + rng.integers(1, num_classes, idx.size)) % num_classes
  else:
    noisy[idx] = rng.integers(0, num_classes, idx.size)
  kind = "sym_another" if another_class else "sym"
  return noisy, noise_report(labels, noisy, num_classes, kind=kind, requested_ratio=ratio,
                             seed=seed)


def class_map_array(class_map, num_classes: int) -> np.ndarray:
  """'next' (k -> k+1 mod C), 'cifar10' (CIFAR10_ASYM_MAP) or a {from: to} dict -> int array [C]."""
  if isinstance(class_map, str):
    if class_map == "next":
      return (np.arange(num_classes) + 1) % num_classes
    if class_map == "cifar10":
      if num_classes != 10:
        raise DataError(f"the cifar10 class map needs 10 classes, got {num_classes}")
      class_map = CIFAR10_ASYM_MAP
    else:
      raise DataError(f"unknown class map {class_map!r}; known: 'next', 'cifar10' or a dict")
  out = np.arange(num_classes)
  for src, dst in dict(class_map).items():
    src, dst = int(src), int(dst)
    if not (0 <= src < num_classes and 0 <= dst < num_classes):
      raise DataError(f"class map entry {src} -> {dst} outside [0, {num_classes})")
    out[src] = dst
  return out


def pair_noise(labels, num_classes: int, ratio: float, seed: int, class_map="next"):
  """Moves a random fraction `ratio` of samples to class_map[label].

  Classes that map to themselves keep their label, so with a partial map (e.g.
  'cifar10') the realised rate is below `ratio`.
  """
  labels = _check(labels, num_classes, ratio)
  mapping = class_map_array(class_map, num_classes)
  rng = np.random.default_rng(seed)
  idx = _chosen(len(labels), ratio, rng)
  noisy = labels.copy()
  noisy[idx] = mapping[labels[idx]]
  return noisy, noise_report(labels, noisy, num_classes, kind="pair", requested_ratio=ratio,
                             seed=seed)


def instance_noise(labels, images, num_classes: int, ratio: float, seed: int = 1,
                   std: float = 0.1):
  """Instance-dependent noise of Xia et al. (2020); `images` uint8 [N, H, W, 3] (raw pixels)."""
  labels = _check(labels, num_classes, ratio)
  images = np.asarray(images)
  if images.ndim != 4 or len(images) != len(labels):
    raise DataError(f"want images [N={len(labels)}, H, W, C], got {images.shape}")
  n = len(labels)
  rng = np.random.default_rng(seed)
  if std > 0:
    lo, hi = (0.0 - ratio) / std, (1.0 - ratio) / std
    flip_rate = stats.truncnorm.rvs(lo, hi, loc=ratio, scale=std, size=n, random_state=rng)
  else:
    flip_rate = np.full(n, ratio)
  d = int(np.prod(images.shape[1:]))
  probs = np.empty((n, num_classes))
  for c in range(num_classes):
    w_c = rng.standard_normal((d, num_classes))  # W[c], drawn in class order
    idx = np.flatnonzero(labels == c)
    if not idx.size:
      continue
    x = images[idx].transpose(0, 3, 1, 2).reshape(idx.size, d).astype(np.float64)
    a = x @ w_c
    a[:, c] = -np.inf
    a -= a.max(axis=1, keepdims=True)
    p = np.exp(a)
    p /= p.sum(axis=1, keepdims=True)
    p *= flip_rate[idx, None]
    p[:, c] += 1.0 - flip_rate[idx]
    probs[idx] = p
  cdf = np.cumsum(probs, axis=1)
  u = rng.random(n)[:, None] * cdf[:, -1:]
  noisy = np.minimum((cdf <= u).sum(axis=1), num_classes - 1).astype(np.int32)
  return noisy, noise_report(labels, noisy, num_classes, kind="idn", requested_ratio=ratio,
                             seed=seed)


# --------------------------------------------------------------------- files


def save_noisy_labels(path, noisy_labels, report: NoiseReport, *, clean_labels=None,
                      ids=None) -> pathlib.Path:
  """Writes an .npz (no pickle) with the noisy labels, the report and what they belong to; atomically (a
  temporary file renamed into place), so that a reader never sees half of it."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  n = len(noisy_labels)
  tmp = path.with_name(path.name + ".tmp.npz")
  np.savez(tmp, noisy_labels=np.asarray(noisy_labels, np.int32),
           clean_labels=(np.full(n, -1, np.int32) if clean_labels is None
                         else np.asarray(clean_labels, np.int32)),
           ids=np.asarray([] if ids is None else ids).astype(str),
           kind=np.str_(report.kind), requested_ratio=np.float64(report.requested_ratio),
           realised_rate=np.float64(report.realised_rate), transition=report.transition,
           counts=report.counts, seed=np.int64(report.seed))
  tmp.replace(path)
  return path


def load_noisy_labels(path, *, clean_labels=None, ids=None):
  """(noisy_labels int32 [N], NoiseReport) from save_noisy_labels' file.

  If clean_labels / ids are given they must match the ones saved, so labels made
  for one dataset (or one subset, one order) are never applied to another.
  """
  path = require_file(path, "noisy label file")
  with np.load(path, allow_pickle=False) as z:
    try:
      noisy = z["noisy_labels"].astype(np.int32)
      report = NoiseReport(str(z["kind"]), float(z["requested_ratio"]),
                           float(z["realised_rate"]), z["transition"], z["counts"],
                           int(z["seed"]))
      saved_clean, saved_ids = z["clean_labels"], z["ids"]
    except KeyError as e:
      raise DataError(f"{path} is not a noisy-label file: missing key {e}") from None
  if clean_labels is not None:
    clean_labels = np.asarray(clean_labels)
    if len(clean_labels) != len(noisy):
      raise DataError(f"{path} holds {len(noisy)} labels, the dataset has {len(clean_labels)}")
    if (saved_clean >= 0).any() and not np.array_equal(saved_clean, clean_labels):
      raise DataError(f"{path} was made for other clean labels (first difference at "
                      f"{int(np.flatnonzero(saved_clean != clean_labels)[0])})")
  if ids is not None and len(saved_ids):
    ids = np.asarray(ids).astype(str)
    if len(ids) != len(saved_ids) or not np.array_equal(ids, saved_ids):
      raise DataError(f"{path} was made for other examples (ids differ)")
  return noisy, report
