"""Errors raised for bad input data; every message names the offending thing."""

from __future__ import annotations

from deft_jax.errors import DeftError


class DataError(DeftError, ValueError):
  """Base class: the data (not the code), or the data config, is wrong."""


class UnknownSourceError(DataError):
  """`data.source` names no known dataset."""


class LabelRangeError(DataError):
  """A label lies outside [0, num_classes)."""


class ClassNamesError(DataError):
  """Class names do not match the classes the labels use."""


class EmptyClassError(DataError):
  """A class folder holds no image."""


class CorruptImageError(DataError):
  """An image cannot be read or decoded."""


class MissingDataError(DeftError, FileNotFoundError):
  """A manual download is missing; the message says which files go where."""


def require_file(path, what: str, error=FileNotFoundError):
  """``path`` as a Path; ``error`` naming ``what`` when it is not a file."""
  import pathlib  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(path)
  if not path.is_file():
    raise error(f"{what} {path} does not exist")
  return path


def check_labels(labels, num_classes: int, *, what: str, ids=None) -> None:
  """Raises LabelRangeError naming the first label outside [0, num_classes)."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  labels = np.asarray(labels)
  bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
  if bad.size:
    i = int(bad[0])
    where = f"position {i}" + (f" ({ids[i]})" if ids is not None else "")
    raise LabelRangeError(
        f"{what}: label {int(labels[i])} at {where} is outside [0, {num_classes})"
        f" ({bad.size} bad label(s) in all).")
