"""On-device selection metrics for the training loops (CLU ``Metric`` / ``Collection``).

The loops build one update per batch inside the jitted step and merge it into a running value::

    update = DetectionMetrics.single_from_model_output(
        is_clean_pred=sel, label=batch["label"], clean_label=batch["clean_label"], mask=batch["mask"])
    running = update if running is None else running.merge(update)
    writer.write_scalars(step, running.compute())   # {"precision": ..., "recall": ..., ...}

Only integer counts are stored, so merging is exact and order-independent, and on a sharded
global batch the sums in ``from_model_output`` are already global (no cross-device gather needed).
Semantics match :func:`deft_jax.report.metrics.detection_metrics`: precision of an empty selection
is 0; precision / recall / F1 / true noise are NaN while no ground truth has been seen
(``clean_label == -1`` everywhere).
"""

# No `from __future__ import annotations`: clu.metrics.Collection reads the field classes from
# `__annotations__`, which must hold classes, not strings.
from typing import Any

import flax
import jax
import jax.numpy as jnp
from clu import metrics


def _safe_div(num, den, empty):
  num = jnp.asarray(num, jnp.float32)
  den = jnp.asarray(den, jnp.float32)
  return jnp.where(den > 0, num / jnp.maximum(den, 1.0), jnp.float32(empty))


@flax.struct.dataclass
class SelectionCounts(metrics.Metric):
  """Counts of a clean-sample selection; ``compute()`` returns every rate as a dict."""

  valid: jnp.ndarray
  selected: jnp.ndarray
  known: jnp.ndarray
  selected_known: jnp.ndarray
  true_positive: jnp.ndarray
  truly_clean: jnp.ndarray

  @classmethod
  def empty(cls):
    zero = jnp.zeros((), jnp.int32)
    return cls(zero, zero, zero, zero, zero, zero)

  @classmethod
  def from_model_output(
      cls, *, is_clean_pred: jnp.ndarray, label: jnp.ndarray, clean_label: jnp.ndarray,
      mask: jnp.ndarray | None = None, **_: Any,
  ):
    """Counts for one batch.

    Args:
      is_clean_pred: bool [b], the selection.
      label: int [b], given labels.
      clean_label: int [b], ground truth, -1 where unknown.
      mask: bool [b], False for padding (default: all valid).
    """
    if is_clean_pred.ndim != 1 or label.shape != is_clean_pred.shape or clean_label.shape != label.shape:
      raise ValueError(
          "is_clean_pred, label and clean_label must be 1-D of equal length; got shapes "
          f"{is_clean_pred.shape}, {label.shape}, {clean_label.shape}")
    valid = jnp.ones(label.shape, bool) if mask is None else mask.astype(bool)
    selected = valid & is_clean_pred.astype(bool)
    known = valid & (clean_label >= 0)
    truly_clean = known & (clean_label == label)

    def count(x):
      return x.sum(dtype=jnp.int32)

    return cls(
        valid=count(valid), selected=count(selected), known=count(known),
        selected_known=count(selected & known), true_positive=count(selected & truly_clean),
        truly_clean=count(truly_clean))

  def merge(self, other):
    return jax.tree.map(jnp.add, self, other)

  def rates(self) -> dict[str, jnp.ndarray]:
    has_truth = self.known > 0
    precision = jnp.where(has_truth, _safe_div(self.true_positive, self.selected_known, 0.0), jnp.nan)
    recall = _safe_div(self.true_positive, self.truly_clean, jnp.nan)
    denom = precision + recall
    f1 = jnp.where(denom > 0, 2 * precision * recall / jnp.where(denom > 0, denom, 1.0),
                   jnp.where(jnp.isnan(denom), jnp.nan, 0.0))
    selected_fraction = _safe_div(self.selected, self.valid, jnp.nan)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "selected_fraction": selected_fraction,
        "estimated_noise_rate": 1.0 - selected_fraction,
        "true_noise_rate": 1.0 - _safe_div(self.truly_clean, self.known, jnp.nan),
    }

  def compute(self):
    return self.rates()


def _rate_metric(name: str) -> type[SelectionCounts]:
  # One scalar per Collection field keeps `Collection.compute()` flat, which is what
  # metric writers expect; the duplicated int32 counts are negligible.
  cls = type(f"Selection_{name}", (SelectionCounts,), {"compute": lambda self: self.rates()[name]})
  cls.__doc__ = f"The selection's {name} (see SelectionCounts)."
  return flax.struct.dataclass(cls)


@flax.struct.dataclass
class DetectionMetrics(metrics.Collection):
  """Precision / recall / F1 / selected fraction / noise rates of the clean selection."""

  precision: _rate_metric("precision")
  recall: _rate_metric("recall")
  f1: _rate_metric("f1")
  selected_fraction: _rate_metric("selected_fraction")
  estimated_noise_rate: _rate_metric("estimated_noise_rate")
  true_noise_rate: _rate_metric("true_noise_rate")
