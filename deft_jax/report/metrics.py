"""Detection and classification metrics on host NumPy arrays (no JAX, no sklearn).

Conventions shared by every function here:

- ``clean_labels`` uses ``-1`` for "ground truth unknown" (the batch contract); such examples count
  towards selection statistics but not towards precision / recall / true noise.
- An example is *truly clean* when its ground truth is known and equals its given label.
- A ratio whose denominator is empty is NaN ("undefined"), with one documented exception: precision
  of an empty selection is 0, so a detector that selects nothing scores F1 = 0 instead of vanishing
  from comparisons.
- ``mask`` (bool, default all True) marks valid examples; masked-out entries (padding) never count
  and their labels are not validated.
"""

from __future__ import annotations

import numpy as np

from deft_jax.errors import DeftError, DivergedError


class MetricInputError(DeftError, ValueError):
  """Arrays handed to a metric have the wrong shape, dtype or values."""


def as_vector(name: str, x, n: int | None = None, error=MetricInputError) -> np.ndarray:
  """``x`` as a 1-D array over examples (of ``n`` entries when given), else ``error`` naming ``name``."""
  x = np.asarray(x)
  if x.ndim != 1:
    raise error(f"{name} must be a 1-D array over examples, got shape {x.shape}")
  if n is not None and x.shape[0] != n:
    raise error(f"{name} has {x.shape[0]} entries, expected {n} (one per example)")
  return x


_as_1d = as_vector


def _valid_mask(mask, n: int) -> np.ndarray:
  if mask is None:
    return np.ones(n, bool)
  mask = _as_1d("mask", mask, n)
  if mask.dtype != bool:
    raise MetricInputError(f"mask must be bool, got dtype {mask.dtype}")
  return mask


def _ratio(num, den, empty=np.nan) -> np.ndarray:
  num = np.asarray(num, np.float64)
  den = np.asarray(den, np.float64)
  return np.where(den > 0, num / np.maximum(den, 1), empty)


def _f1(precision, recall) -> np.ndarray:
  p, r = np.asarray(precision, np.float64), np.asarray(recall, np.float64)
  s = p + r
  out = np.full(s.shape, np.nan)
  ok = s > 0  # False for NaN, so an undefined precision or recall stays undefined
  out[ok] = 2 * p[ok] * r[ok] / s[ok]
  out[s == 0] = 0.0
  return out


def _grouped_detection(is_clean, given, clean_labels, valid, groups, num_groups) -> dict[str, np.ndarray]:
  """Selection counts and rates per group; the scalar and per-class metrics both use it."""

  def count(sel):
    return np.bincount(groups[sel], minlength=num_groups).astype(np.int64)

  selected = is_clean & valid
  out = {"count": count(valid), "selected": count(selected)}
  out["selected_fraction"] = _ratio(out["selected"], out["count"])
  out["estimated_noise_rate"] = 1.0 - out["selected_fraction"]
  if clean_labels is not None:
    known = valid & (clean_labels >= 0)
    truly_clean = known & (clean_labels == given)
    n_known, n_sel_known = count(known), count(selected & known)
    out["known"] = n_known
    out["truly_clean"] = count(truly_clean)
    out["true_positive"] = count(selected & truly_clean)
    out["true_noise_rate"] = 1.0 - _ratio(out["truly_clean"], n_known)
    precision = _ratio(out["true_positive"], n_sel_known, empty=0.0)
    out["precision"] = np.where(n_known > 0, precision, np.nan)
    out["recall"] = _ratio(out["true_positive"], out["truly_clean"])
    out["f1"] = _f1(out["precision"], out["recall"])
  return out


def _check_detection_inputs(is_clean, given, clean_labels, mask):
  is_clean = _as_1d("is_clean", is_clean)
  if is_clean.dtype != bool:
    raise MetricInputError(f"is_clean must be bool, got dtype {is_clean.dtype}")
  n = is_clean.shape[0]
  given = _as_1d("given", given, n).astype(np.int64)
  if clean_labels is not None:
    clean_labels = _as_1d("clean_labels", clean_labels, n).astype(np.int64)
  return is_clean, given, clean_labels, _valid_mask(mask, n)


def detection_metrics(is_clean, given, clean_labels=None, *, mask=None) -> dict[str, float]:
  """Overall quality of a clean-sample selection.

  Args:
    is_clean: bool [N], True = selected as clean.
    given: int [N], the given (possibly noisy) labels.
    clean_labels: int [N] ground truth (-1 = unknown), or None when there is none.
    mask: optional bool [N] validity mask.

  Returns:
    ``count``, ``selected``, ``selected_fraction``, ``estimated_noise_rate`` (= 1 - selected
    fraction) and, with ground truth, ``known``, ``truly_clean``, ``true_positive``, ``precision``
    (= |selected ∩ truly clean| / |selected|, **0 when nothing is selected**), ``recall``
    (= |selected ∩ truly clean| / |truly clean|, NaN when nothing is truly clean), ``f1`` and
    ``true_noise_rate``. Counts are ints, rates floats (NaN when undefined).
  """
  is_clean, given, clean_labels, valid = _check_detection_inputs(is_clean, given, clean_labels, mask)
  out = _grouped_detection(is_clean, given, clean_labels, valid, np.zeros_like(given), 1)
  return {k: (int(v[0]) if v.dtype.kind == "i" else float(v[0])) for k, v in out.items()}


def per_class_detection_metrics(
    is_clean, given, num_classes: int, clean_labels=None, *, mask=None
) -> dict[str, np.ndarray]:
  """:func:`detection_metrics` per class of the *given* label, as arrays of length ``num_classes``.

  A class with no (valid) examples gets NaN rates and zero counts; :func:`macro_average`
  skips it.
  """
  is_clean, given, clean_labels, valid = _check_detection_inputs(is_clean, given, clean_labels, mask)
  _check_labels("given", given, num_classes, valid)
  return _grouped_detection(is_clean, given, clean_labels, valid, np.where(valid, given, 0), num_classes)


def macro_average(values) -> float:
  """Mean over classes, skipping NaN (empty classes); NaN when every entry is NaN."""
  values = np.asarray(values, np.float64)
  finite = ~np.isnan(values)
  return float(values[finite].mean()) if finite.any() else float("nan")


def average_ranks(x) -> np.ndarray:
  """1-based ranks of ``x`` with ties sharing the average of the ranks they span."""
  _, inverse, counts = np.unique(np.asarray(x), return_inverse=True, return_counts=True)
  last_rank = np.cumsum(counts)
  return (last_rank - (counts - 1) / 2.0)[inverse.reshape(-1)]


def auroc(scores, positive, *, mask=None) -> float:
  """Exact area under the ROC curve of ``scores`` for the bool labels ``positive``.

  Computed as the Mann-Whitney U statistic over average ranks, so a tie between a positive and a
  negative counts 1/2. NaN when either class is empty (the curve is undefined).
  """
  scores = _as_1d("scores", scores).astype(np.float64)
  positive = _as_1d("positive", positive, scores.shape[0])
  if positive.dtype != bool:
    raise MetricInputError(f"positive must be bool, got dtype {positive.dtype}")
  valid = _valid_mask(mask, scores.shape[0])
  if np.isnan(scores[valid]).any():
    raise MetricInputError("scores contain NaN")
  scores, positive = scores[valid], positive[valid]
  n_pos = int(positive.sum())
  n_neg = positive.shape[0] - n_pos
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  u = average_ranks(scores)[positive].sum() - n_pos * (n_pos + 1) / 2.0
  return float(u / (n_pos * n_neg))


def check_label_range(name: str, labels: np.ndarray, num_classes: int, *, valid=None, lowest: int = 0,
                      error=MetricInputError, what: str = "") -> None:
  """``error`` naming the first entry of ``labels`` (among ``valid`` ones) outside [lowest, num_classes)."""
  bad = (labels < lowest) | (labels >= num_classes)
  if valid is not None:
    bad &= valid
  if bad.any():
    i = int(np.flatnonzero(bad)[0])
    raise error(f"{name} must lie in [{lowest}, {num_classes}){what}; entry {i} is {int(labels[i])} "
                f"({int(bad.sum())} out of range)")


def _check_labels(name: str, labels: np.ndarray, num_classes: int, valid: np.ndarray) -> None:
  check_label_range(name, labels, num_classes, valid=valid, what=" for valid examples")


def topk_correct(logits, labels, k: int, *, mask=None, stage: str = "") -> np.ndarray:
  """bool [N]: the label is among the ``k`` highest logits (False for masked entries).

  Ties follow the argmax convention (the lower class index wins): the label's rank counts the classes
  scoring strictly higher plus the tied classes with a lower index, and the label is correct iff its
  rank is below ``k``. All-equal logits therefore count class 0 as the prediction, never every class.
  ``k`` larger than the number of classes is clipped (every valid example is then correct).
  Non-finite logits of valid examples raise ``DivergedError`` naming ``stage`` (a diverged model must not score).
  """
  logits = np.asarray(logits)
  if logits.ndim != 2:
    raise MetricInputError(f"logits must be [N, C], got shape {logits.shape}")
  if k < 1:
    raise MetricInputError(f"k must be >= 1, got {k}")
  labels = _as_1d("labels", labels, logits.shape[0]).astype(np.int64)
  valid = _valid_mask(mask, logits.shape[0])
  _check_labels("labels", labels, logits.shape[1], valid)
  _check_finite(logits, valid, stage)
  safe = np.where(valid, labels, 0)
  label_logit = np.take_along_axis(logits, safe[:, None], axis=1)
  lower_index = np.arange(logits.shape[1])[None, :] < safe[:, None]
  rank = (logits > label_logit).sum(axis=1) + ((logits == label_logit) & lower_index).sum(axis=1)
  return valid & (rank < k)


def _check_finite(logits: np.ndarray, valid: np.ndarray, stage: str) -> None:
  bad = valid[:, None] & ~np.isfinite(logits)
  if bad.any():
    rows = np.flatnonzero(bad.any(axis=1))
    where = f"{stage}: " if stage else ""
    raise DivergedError(
        f"{where}the logits of {rows.size} of {int(valid.sum())} examples are not finite (NaN or inf; "
        f"e.g. example {int(rows[0])}): the model diverged, so no accuracy is reported")


def classification_metrics(
    labels, *, num_classes: int, logits=None, predictions=None, mask=None, topk=(1, 5), stage: str = ""
) -> dict:
  """Accuracy of a classifier over the valid examples.

  Pass either ``logits`` [N, C] (gives ``top{k}`` for each k in ``topk``) or ``predictions`` [N]
  (gives ``top1`` only). Always returns ``per_class_accuracy`` (float [C], NaN for a class without
  valid examples), ``mean_per_class_accuracy`` (macro average over non-empty classes) and
  ``count``. Accuracies are NaN when there is no valid example. Ties in ``logits`` follow the argmax
  convention and non-finite logits raise ``DivergedError`` naming ``stage`` (see
  :func:`topk_correct`).
  """
  if (logits is None) == (predictions is None):
    raise MetricInputError("pass exactly one of logits or predictions")
  labels = _as_1d("labels", labels).astype(np.int64)
  n = labels.shape[0]
  valid = _valid_mask(mask, n)
  _check_labels("labels", labels, num_classes, valid)
  out: dict = {}
  if logits is not None:
    logits = np.asarray(logits)
    if logits.shape != (n, num_classes):
      raise MetricInputError(f"logits must have shape {(n, num_classes)}, got {logits.shape}")
    for k in topk:
      out[f"top{k}"] = float(_ratio(topk_correct(logits, labels, k, mask=valid, stage=stage).sum(),
                                    valid.sum()))
    correct = topk_correct(logits, labels, 1, mask=valid, stage=stage)
  else:
    predictions = _as_1d("predictions", predictions, n).astype(np.int64)
    correct = valid & (predictions == labels)
    out["top1"] = float(_ratio(correct.sum(), valid.sum()))
  groups = np.where(valid, labels, 0)
  per_class = _ratio(
      np.bincount(groups[correct], minlength=num_classes),
      np.bincount(groups[valid], minlength=num_classes))
  out["per_class_accuracy"] = per_class
  out["mean_per_class_accuracy"] = macro_average(per_class)
  out["count"] = int(valid.sum())
  return out
