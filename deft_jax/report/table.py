"""The per-example label-issues table, ranked worst first (cleanlab-shaped)."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from deft_jax.report.inputs import ReportInputError, ReportInputs, check_inputs

COLUMNS = (
    "index", "id", "given_label", "given_name", "predicted_label", "predicted_name",
    "label_score", "is_label_issue", "p_clean", "margin",
)
TRUTH_COLUMNS = ("true_label", "true_name")


def table_from_inputs(inputs: ReportInputs) -> pd.DataFrame:
  """:func:`label_issues_table` for already validated inputs."""
  n = inputs.num_examples
  index = np.arange(n, dtype=np.int64)
  # lexsort's last key is the primary one: the ranking score ascending, then index for a stable order.
  order = np.lexsort((index, inputs.score))
  names = np.asarray(inputs.class_names + ("",), dtype=object)  # names[-1] == "" for label -1
  ids = inputs.ids if inputs.ids is not None else np.full(n, "", dtype=object)
  cols = {
      "index": index,
      "id": np.asarray(ids, dtype=object),
      "given_label": inputs.given,
      "given_name": names[inputs.given],
      "predicted_label": inputs.suggested,
      "predicted_name": names[inputs.suggested],
      "label_score": inputs.label_score,
      "is_label_issue": ~inputs.is_clean,
      "p_clean": inputs.p_clean,
      "margin": inputs.margin,
  }
  if inputs.clean_labels is not None:
    cols["true_label"] = inputs.clean_labels
    cols["true_name"] = names[inputs.clean_labels]
  return pd.DataFrame({k: v[order] for k, v in cols.items()})


def label_issues_table(detection: Mapping[str, np.ndarray], *, given, class_names: Sequence[str],
                       clean_labels=None, ids=None) -> pd.DataFrame:
  """One row per example, most suspect first.

  Args:
    detection: the detector output (``p_clean``, ``is_clean``, ``suggested``, optional ``label_score``,
      ``score``, ``margin``).
    given: int [N] given labels.
    class_names: the C class names.
    clean_labels: optional ground truth (-1 = unknown); adds ``true_label`` / ``true_name``
      (-1 / "" where unknown).
    ids: optional [N] file paths or dataset ids (the ``id`` column is "" without them).

  Returns:
    DataFrame with columns ``index, id, given_label, given_name, predicted_label,
    predicted_name, label_score, is_label_issue, p_clean, margin`` (+ ``true_label, true_name``),
    where ``label_score`` in [0, 1] (low = likely wrong; monotone in the ranking score and free of
    the saturation of p_clean) and ``is_label_issue`` = not is_clean; rows sorted by the ranking
    score ascending, ties by index; the frame index is the rank 0..N-1.

  Raises:
    ReportInputError: on misaligned lengths, labels outside [0, C), non-finite or out-of-range
      scores.
  """
  return table_from_inputs(
      check_inputs(detection, given=given, class_names=class_names, clean_labels=clean_labels, ids=ids))


def clean_mask_from_table(table: pd.DataFrame) -> np.ndarray:
  """bool [N] in index order (True = clean), recovered from a ranked table."""
  index = table["index"].to_numpy()
  n = len(index)
  if n and not np.array_equal(np.sort(index), np.arange(n)):
    raise ReportInputError("table['index'] must be a permutation of 0..N-1 (one row per example)")
  mask = np.empty(n, bool)
  mask[index] = ~table["is_label_issue"].to_numpy(bool)
  return mask
