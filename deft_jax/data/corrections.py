"""A reviewer's decisions (``corrections.csv``, from report/review.html) applied to the train split.

The file has one row per decided example::

    index,id,given_label,new_label,action
    17,demo/train/17,cat,dog,relabel
    42,demo/train/42,ship,,keep
    5,demo/train/5,frog,,drop

``index`` is the example's index in the run's train split (the report's ``index`` column) and ``id`` its id or
path; a row may give either, and when it gives both they must name the same example. ``new_label`` (a class
name, or the class number) is required for ``relabel``; ``given_label`` is informative. ``relabel`` replaces the
given label (ground truth, where known, stays the truth), ``drop`` removes the example, ``keep`` changes
nothing. The whole file is checked before any of it is applied: an unknown index, id or class, a bad action or
an example named twice is a :class:`CorrectionsError` naming the row.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import pathlib

import numpy as np

from deft_jax.data.errors import DataError

ACTIONS = ("relabel", "keep", "drop")
COLUMNS = ("index", "id", "given_label", "new_label", "action")


class CorrectionsError(DataError):
  """data.corrections names an unknown example or class, an example twice, or is not a corrections file."""


@dataclasses.dataclass(frozen=True)
class Row:
  line: int  # the row's line in the file (header = line 1)
  index: str
  id: str
  new_label: str
  action: str


def read(path) -> list[Row]:
  """The rows of a corrections file, checked for form (columns, actions, repeated keys), not against data."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise CorrectionsError(f"data.corrections={str(path)!r} does not exist")
  text = path.read_text(encoding="utf-8-sig")
  reader = csv.DictReader(io.StringIO(text))
  fields = [f.strip() for f in reader.fieldnames or []]
  if "action" not in fields or not ({"index", "id", "path"} & set(fields)):
    raise CorrectionsError(f"{path}: not a corrections file: it needs the columns action and index (or id / "
                           f"path), it has {fields}")
  rows = []
  for line, raw in enumerate(reader, start=2):
    rec = {str(k).strip(): (v or "").strip() for k, v in raw.items() if k is not None}
    action = rec.get("action", "").lower()
    if action not in ACTIONS:
      raise CorrectionsError(f"{path} line {line}: action {rec.get('action', '')!r} is not one of {ACTIONS}")
    row = Row(line, rec.get("index", ""), rec.get("id", "") or rec.get("path", ""), rec.get("new_label", ""), action)
    if not row.index and not row.id:
      raise CorrectionsError(f"{path} line {line}: neither an index nor an id / path")
    if action == "relabel" and not row.new_label:
      raise CorrectionsError(f"{path} line {line}: action relabel without a new_label")
    rows.append(row)
  return rows


def _example(row: Row, path, ids: np.ndarray, by_id: dict) -> int:
  where = f"{path} line {row.line}"
  i = None
  if row.index:
    try:
      i = int(row.index)
    except ValueError:
      raise CorrectionsError(f"{where}: index {row.index!r} is not an integer") from None
    if not 0 <= i < len(ids):
      raise CorrectionsError(f"{where}: unknown index {i}; the train split has {len(ids)} examples (0..{len(ids) - 1})")
    if row.id and row.id != ids[i]:
      raise CorrectionsError(f"{where}: index {i} is {str(ids[i])!r}, not {row.id!r}: the file is for other data")
    return i
  if row.id not in by_id:
    raise CorrectionsError(f"{where}: unknown id / path {row.id!r}: no train example has it")
  return by_id[row.id]


def _class(row: Row, path, class_names, names: dict) -> int:
  if row.new_label in names:
    return names[row.new_label]
  if row.new_label.isdigit() and int(row.new_label) < len(class_names):
    return int(row.new_label)
  shown = ", ".join(list(class_names)[:12]) + (", ..." if len(class_names) > 12 else "")
  raise CorrectionsError(f"{path} line {row.line}: unknown class {row.new_label!r}; the classes are {shown}")


def resolve(rows: list[Row], path, *, ids, class_names) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``(indices, new_labels, actions)`` of the rows (new label -1 unless relabel); every row is checked
  against the split's ids and class names, and no example may be named twice."""
  ids = np.asarray(ids).astype(str)
  by_id = {s: i for i, s in enumerate(ids)}
  names = {n: k for k, n in enumerate(class_names)}
  indices, labels, seen = [], [], {}
  for row in rows:
    i = _example(row, path, ids, by_id)
    if i in seen:
      raise CorrectionsError(f"{path} line {row.line}: example {i} ({ids[i]}) was already decided on line {seen[i]}")
    seen[i] = row.line
    indices.append(i)
    labels.append(_class(row, path, class_names, names) if row.action == "relabel" else -1)
  return (np.asarray(indices, np.int64), np.asarray(labels, np.int64),
          np.asarray([r.action for r in rows], dtype=object))


@dataclasses.dataclass(frozen=True)
class Plan:
  """A checked corrections file: what to do to which example."""

  path: str
  indices: np.ndarray  # int64 [R], the examples named, in file order
  new_labels: np.ndarray  # int64 [R], the new class of a relabel row, else -1
  actions: np.ndarray  # object [R], ACTIONS


def plan(split, path) -> Plan:
  """Reads and checks corrections file ``path`` against ``split`` (its ids and class names); writes nothing."""
  rows = read(path)
  indices, new_labels, actions = resolve(rows, path, ids=split.ids, class_names=split.class_names)
  return Plan(str(path), indices, new_labels, actions)


def apply(split, todo: Plan):
  """The split with the planned decisions applied; ``split.corrections`` says what was applied (file, rows,
  applied, relabeled, changed, dropped, kept). Ground truth stays the truth; the noise report (with ground
  truth) describes the corrected labels."""
  from deft_jax.data import noise  # pylint: disable=g-import-not-at-top

  if split.num_examples <= (todo.indices.max() if todo.indices.size else -1):
    raise CorrectionsError(f"{todo.path} was checked against another split")
  indices, new_labels, actions = todo.indices, todo.new_labels, todo.actions
  relabel = actions == "relabel"
  labels = split.labels.copy()
  changed = int(np.sum(labels[indices[relabel]] != new_labels[relabel]))
  labels[indices[relabel]] = new_labels[relabel]
  out = split.with_labels(labels, noise_report=None)
  dropped = indices[actions == "drop"]
  if dropped.size:
    out = out.subset(np.setdiff1d(np.arange(split.num_examples), dropped))
  if out.clean_labels is not None:
    known = out.clean_labels >= 0
    if known.any() and (out.labels[known] != out.clean_labels[known]).any():
      out = dataclasses.replace(out, noise_report=noise.noise_report(out.clean_labels, out.labels, out.num_classes,
                                                                     kind="given"))
  stats = {"file": todo.path, "rows": len(actions), "applied": len(actions), "relabeled": int(relabel.sum()),
           "changed": changed, "dropped": int(dropped.size), "kept": int(np.sum(actions == "keep"))}
  return dataclasses.replace(out, corrections=stats)
