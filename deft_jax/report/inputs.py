"""Validation of the detector output contract before anything is reported.

A report built from misaligned arrays looks plausible and is wrong, so every entry point of the
report stage funnels its inputs through :func:`check_inputs`, which fails loudly and says which
array is wrong and how.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from deft_jax.errors import DeftError, DivergedError
from deft_jax.report.metrics import as_vector, check_label_range


class ReportInputError(DeftError, ValueError):
  """The arrays handed to the report stage break the detector output contract."""


REQUIRED_KEYS = ("p_clean", "is_clean", "suggested")


@dataclasses.dataclass(frozen=True)
class ReportInputs:
  """Validated, index-ordered arrays over all N examples (see docs/ARCHITECTURE.md)."""

  p_clean: np.ndarray  # float32 [N] in [0, 1]
  label_score: np.ndarray  # float32 [N] in [0, 1], monotone in score (= p_clean when the detector has none)
  score: np.ndarray  # float [N], the ranking score: higher = more likely clean (= label_score by default)
  is_clean: np.ndarray  # bool [N]
  suggested: np.ndarray  # int32 [N] in [0, C)
  margin: np.ndarray  # float32 [N]; NaN when the detector has none
  given: np.ndarray  # int32 [N] in [0, C)
  clean_labels: np.ndarray | None  # int32 [N] in [-1, C), -1 = unknown
  class_names: tuple[str, ...]
  ids: np.ndarray | None  # str [N]

  @property
  def num_examples(self) -> int:
    return int(self.given.shape[0])

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def known(self) -> np.ndarray | None:
    """bool [N]: ground truth available (None without any ground truth)."""
    return None if self.clean_labels is None else self.clean_labels >= 0

  @property
  def truly_clean(self) -> np.ndarray | None:
    """bool [N]: ground truth known and equal to the given label."""
    return None if self.clean_labels is None else self.clean_labels == self.given


def _vector(name: str, x, n: int | None) -> np.ndarray:
  return as_vector(name, x, n, error=ReportInputError)


def _scores(name: str, x, n: int, *, lo: float, hi: float) -> np.ndarray:
  x = _vector(name, x, n)
  if x.dtype.kind != "f":
    raise ReportInputError(f"{name} must be floating point, got dtype {x.dtype}")
  bad = ~np.isfinite(x) | (x < lo) | (x > hi)
  if bad.any():
    i = int(np.flatnonzero(bad)[0])
    where = "finite" if np.isinf(lo) else f"finite and in [{lo:g}, {hi:g}]"
    raise ReportInputError(f"{name} must be {where}; entry {i} is {float(x[i])} ({int(bad.sum())} bad entries)")
  return x


def _unit_scores(name: str, x, n: int) -> np.ndarray:
  return _scores(name, x, n, lo=0.0, hi=1.0)


def _labels(name: str, x, n: int, num_classes: int, lowest: int = 0) -> np.ndarray:
  x = _vector(name, x, n)
  if x.dtype.kind not in "iu":
    raise ReportInputError(f"{name} must hold integer labels, got dtype {x.dtype}")
  check_label_range(name, x, num_classes, lowest=lowest, error=ReportInputError,
                    what=f" (num_classes = len(class_names) = {num_classes})")
  return x.astype(np.int32)


def check_inputs(detection: Mapping[str, np.ndarray], *, given, class_names: Sequence[str], clean_labels=None,
                 ids=None) -> ReportInputs:
  """Validates the detector output and its companions; returns normalised copies.

  Args:
    detection: dict with ``p_clean`` (float in [0, 1]), ``is_clean`` (bool), ``suggested`` (int)
      and optionally ``label_score`` (float in [0, 1]), ``score`` (finite float, the ranking score) and
      ``margin`` (float); extra keys (e.g. ``embedding``) are ignored.
    given: int [N] given labels.
    class_names: C names; labels must lie in [0, C).
    clean_labels: optional int [N] ground truth, -1 where unknown.
    ids: optional [N] file paths / dataset ids.

  Raises:
    ReportInputError: naming the offending array and what was expected.
  """
  if not isinstance(detection, Mapping):
    raise ReportInputError(f"detection must be a dict of arrays, got {type(detection).__name__}")
  missing = [k for k in REQUIRED_KEYS if k not in detection]
  if missing:
    raise ReportInputError(f"detection lacks {missing}; it has {sorted(detection)}")
  if isinstance(class_names, str) or not all(isinstance(c, str) for c in class_names):
    raise ReportInputError("class_names must be a sequence of str")
  class_names = tuple(class_names)
  if not class_names:
    raise ReportInputError("class_names is empty; expected one name per class")

  given_arr = _vector("given", given, None)
  n = given_arr.shape[0]
  num_classes = len(class_names)
  given_arr = _labels("given", given_arr, n, num_classes)

  p_clean = _unit_scores("p_clean", detection["p_clean"], n)
  label_score = p_clean
  if detection.get("label_score") is not None:
    label_score = _unit_scores("label_score", detection["label_score"], n)
  score = label_score
  if detection.get("score") is not None:
    score = _scores("score", detection["score"], n, lo=-np.inf, hi=np.inf)

  is_clean = _vector("is_clean", detection["is_clean"], n)
  if is_clean.dtype != bool:
    if is_clean.dtype.kind in "iu" and np.isin(is_clean, (0, 1)).all():
      is_clean = is_clean.astype(bool)
    else:
      raise ReportInputError(f"is_clean must be bool (or 0/1 integers), got dtype {is_clean.dtype}")

  suggested = _labels("suggested", detection["suggested"], n, num_classes)
  if detection.get("margin") is None:
    margin = np.full(n, np.nan, np.float32)
  else:
    margin = _vector("margin", detection["margin"], n)
    if margin.dtype.kind != "f":
      raise ReportInputError(f"margin must be floating point, got dtype {margin.dtype}")

  if clean_labels is not None:
    clean_labels = _labels("clean_labels", clean_labels, n, num_classes, lowest=-1)
  if ids is not None:
    ids = _vector("ids", ids, n).astype(str)

  return ReportInputs(
      p_clean=p_clean.astype(np.float32), label_score=label_score.astype(np.float32),
      score=score.astype(np.float64), is_clean=is_clean.copy(), suggested=suggested,
      margin=margin.astype(np.float32), given=given_arr, clean_labels=clean_labels,
      class_names=class_names, ids=ids)


def check_finite_outputs(result: dict, stage: str) -> None:
  """Raises DivergedError when any per-example score is NaN or infinite (a model whose parameters are finite
  can still overflow), before anything is written from it."""
  for k, v in result.items():
    v = np.asarray(v)
    if k.endswith(("p_clean", "label_score", "score")) and not np.isfinite(v).all():
      raise DivergedError(
          f"[{stage}] {int((~np.isfinite(v)).sum())} of {v.size} values of {k!r} are not finite (NaN or inf): training "
          f"diverged, so no clean mask or report is written. Lower the learning rate ({stage}.schedule.lr) "
          "or set grad_clip_norm, and start again in a new --workdir.")
