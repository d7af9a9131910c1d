"""Writing (and reading back) a complete report directory, atomically.

The new report is built in a hidden sibling ``.<name>.tmp-<token>`` and swapped in with two
renames (old -> ``.<name>.old-<token>``, new -> ``<name>``), so a crash at any point leaves either
the previous complete report or the new complete one, never a mix. The only window without
``<name>`` is between the two renames; the next :func:`write_report` (or :func:`recover`) restores
the backup. Paths go through ``etils.epath``, so ``gs://`` workdirs work too, but there a directory
rename is a copy and the swap is not atomic (the protocol and the recovery still hold).
Single writer: on multi-host jobs call this from ``jax.process_index() == 0`` only.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from etils import epath

from deft_jax.errors import MissingFileError, writing
from deft_jax.report import plots, review as review_lib
from deft_jax.report.inputs import ReportInputError, check_inputs
from deft_jax.report.summary import format_health_summary, summary_from_inputs, to_jsonable
from deft_jax.report.table import clean_mask_from_table, table_from_inputs

TABLE_FILE = "label_issues.csv"
MASK_FILE = "clean_mask.npy"
SUMMARY_FILE = "summary.json"
TEXT_FILE = "summary.txt"
SUSPECTS_FILE = "suspects.png"
HIST_FILE = "p_clean_hist.png"
CLASS_NOISE_FILE = "class_noise.png"


def _siblings(final: epath.Path, kind: str) -> list[epath.Path]:
  return sorted(final.parent.glob(f".{final.name}.{kind}-*"))


def recover(report_dir) -> None:
  """Cleans up after an interrupted :func:`write_report`: drops half-built staging directories
  and, if the report itself is missing, restores the backup of the previous one."""
  final = epath.Path(report_dir)
  if not final.parent.exists():
    return
  for staging in _siblings(final, "tmp"):
    staging.rmtree(missing_ok=True)
  backups = _siblings(final, "old")
  if backups and not final.exists():
    newest = max(backups, key=lambda p: p.stat().mtime)
    newest.rename(final)
    backups.remove(newest)
  for backup in backups:
    backup.rmtree(missing_ok=True)


def _save_figure(fig, path: epath.Path) -> None:
  with path.open("wb") as f:
    fig.savefig(f, format="png")


def _write_contents(out: epath.Path, table: pd.DataFrame, clean_mask: np.ndarray, summary: dict,
                    text: str, image_fn, num_suspects: int, review_top_k: int | None,
                    class_names: Sequence[str] | None) -> None:
  with (out / TABLE_FILE).open("w") as f:
    table.to_csv(f, index=False, chunksize=CSV_CHUNK_ROWS)
  with (out / MASK_FILE).open("wb") as f:
    np.save(f, clean_mask)
  (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
  (out / TEXT_FILE).write_text(text + "\n")
  truly_clean = known = None
  if "true_label" in table:
    true_label = table["true_label"].to_numpy()
    known = true_label >= 0
    truly_clean = true_label == table["given_label"].to_numpy()
  _save_figure(plots.p_clean_histogram(table["label_score"].to_numpy(), truly_clean, known),
               out / HIST_FILE)
  class_fig = plots.class_noise_figure(summary.get("per_class", []))
  if class_fig is not None:
    _save_figure(class_fig, out / CLASS_NOISE_FILE)
  suspects = plots.suspects_figure(table, image_fn, num=num_suspects)
  if suspects is not None:
    _save_figure(suspects, out / SUSPECTS_FILE)
  if review_top_k:
    (out / review_lib.FILE).write_text(review_lib.page_html(table, image_fn=image_fn, class_names=class_names,
                                                    top_k=review_top_k))


COPY_BLOCK_BYTES = 16 * 2**20
CSV_CHUNK_ROWS = 100_000  # the CSV's text is formatted this many rows at a time


def _write_array(path: epath.Path, array, rows: int) -> None:
  """An ``.npy`` beside the table: an array, or the path of an ``.npy`` file copied as a file (by the kernel, or
  in 16 MiB blocks to a remote report), so that an [N, C] file of millions of rows never sits in memory."""
  if isinstance(array, (str, os.PathLike)):
    n = np.load(array, mmap_mode="r").shape[0]
    if n != rows:
      raise ReportInputError(f"{path.name} has {n} rows, the table {rows}")
    if "://" not in str(path):  # a local copy: the kernel's (copy_file_range / sendfile), no user-space buffer
      shutil.copyfile(os.fspath(array), os.fspath(path))
      return
    with epath.Path(array).open("rb") as src, path.open("wb") as dst:
      while block := src.read(COPY_BLOCK_BYTES):
        dst.write(block)
    return
  if len(array) != rows:
    raise ReportInputError(f"{path.name} has {len(array)} rows, the table {rows}")
  with path.open("wb") as f:
    np.save(f, np.asarray(array))


def write_report(
    report_dir,
    *,
    table: pd.DataFrame,
    clean_mask: np.ndarray,
    summary: Mapping[str, Any],
    text: str | None = None,
    image_fn: plots.ImageFn | None = None,
    num_suspects: int = 24,
    arrays: Mapping[str, Any] | None = None,
    review_top_k: int | None = review_lib.DEFAULT_TOP_K,
    class_names: Sequence[str] | None = None,
) -> epath.Path:
  """Writes ``label_issues.csv``, ``clean_mask.npy``, ``summary.json``, ``summary.txt``,
  ``p_clean_hist.png``, ``class_noise.png``, (with ``image_fn``) ``suspects.png`` and (unless
  ``review_top_k`` is None) ``review_lib.html`` into ``report_dir``, replacing a previous report only once the
  new one is complete.

  Args:
    report_dir: local path or ``gs://`` URL; its parent is created if needed.
    table: the ranked table of :func:`label_issues_table`.
    clean_mask: bool [N] in index order; must agree with ``table["is_label_issue"]``.
    summary: the dict of :func:`build_summary` (plus any caller sections).
    text: the health summary text (default: ``format_health_summary(summary)``).
    image_fn: optional ``indices -> uint8 [k, H, W, 3]`` for the suspects grid.
    arrays: optional ``{file name: [N, ...] array, or the path of an .npy file}`` written as ``.npy`` beside
      the table (``pred_probs.npy`` or ``pred_probs_topk*.npy``, ``features.npy``), one row per example in index
      order; files are copied in blocks.
    review_top_k: the review page's number of suspects (None: no page; see report/review_lib.py).
    class_names: every class name, for the review page's "relabel to" list (default: those the table names).

  Returns:
    The report directory.
  """
  clean_mask = np.asarray(clean_mask)
  if clean_mask.dtype != bool or clean_mask.ndim != 1:
    raise ReportInputError(f"clean_mask must be a 1-D bool array, got {clean_mask.dtype} {clean_mask.shape}")
  if clean_mask.shape[0] != len(table):
    raise ReportInputError(f"clean_mask has {clean_mask.shape[0]} entries but the table has {len(table)} rows")
  if not np.array_equal(clean_mask_from_table(table), clean_mask):
    raise ReportInputError(
        "clean_mask disagrees with table['is_label_issue']; were they built from the same run?")
  summary = to_jsonable(summary)
  text = format_health_summary(summary) if text is None else text

  final = epath.Path(report_dir)
  final.parent.mkdir(parents=True, exist_ok=True)
  recover(final)
  token = uuid.uuid4().hex[:12]
  staging = final.parent / f".{final.name}.tmp-{token}"
  backup = final.parent / f".{final.name}.old-{token}"
  try:
    with writing(final, "the report"):  # a full disk: the staging goes, the previous report stays
      staging.mkdir()
      _write_contents(staging, table, clean_mask, summary, text, image_fn, num_suspects, review_top_k, class_names)
      for name, array in (arrays or {}).items():
        _write_array(staging / name, array, len(table))
  except BaseException:
    staging.rmtree(missing_ok=True)
    raise
  if final.exists():
    final.rename(backup)
  staging.rename(final)
  backup.rmtree(missing_ok=True)
  return final


def build_and_write_report(report_dir, detection: Mapping[str, np.ndarray], *, given, class_names: Sequence[str],
                           clean_labels=None, ids=None, image_fn: plots.ImageFn | None = None,
                           extra_summary: Mapping[str, Any] | None = None, method_name: str = "DEFT",
                           arrays: Mapping[str, Any] | None = None,
                           review_top_k: int | None = review_lib.DEFAULT_TOP_K,
                           write: bool = True) -> tuple[pd.DataFrame, dict, str]:
  """Validates the detector output, builds table + summary + text and writes the report (``write=False``:
  everything but the writing, for the processes of a multi-host run other than the one that writes).

  Returns:
    ``(table, summary, text)``; ``text`` is the one-screen health summary, ready to log.
  """
  inputs = check_inputs(detection, given=given, class_names=class_names, clean_labels=clean_labels, ids=ids)
  table = table_from_inputs(inputs)
  summary = summary_from_inputs(inputs, extra=extra_summary, method_name=method_name)
  text = format_health_summary(summary)
  if write:
    write_report(report_dir, table=table, clean_mask=inputs.is_clean, summary=summary, text=text,
                 image_fn=image_fn, arrays=arrays, review_top_k=review_top_k, class_names=inputs.class_names)
  return table, summary, text


def load_report(report_dir) -> tuple[pd.DataFrame, np.ndarray, dict]:
  """Reads a written report back: ``(table, clean_mask, summary)``."""
  final = epath.Path(report_dir)
  if not (final / SUMMARY_FILE).exists():
    backup = _siblings(final, "old")
    hint = " (an interrupted write left a backup; call recover() first)" if backup else ""
    raise MissingFileError(f"no complete report in {final}: {SUMMARY_FILE} is missing{hint}")
  with (final / TABLE_FILE).open("r") as f:
    # Class names such as "NA" or "null" must stay strings; only the float columns have NaN.
    table = pd.read_csv(f, keep_default_na=False, na_values={"margin": [""], "label_score": [""]},
                        dtype={"id": str, "given_name": str, "predicted_name": str, "true_name": str})
  with (final / MASK_FILE).open("rb") as f:
    clean_mask = np.load(f)
  return table, clean_mask, json.loads((final / SUMMARY_FILE).read_text())
