"""Offline CIFAR-10 + CIFAR-10N sources: the shared-assets layout and the packaged demo.

"cifar10n_offline" reads `root`/cifar10-jpeg/cifar10_jpeg.npz (all CIFAR-10 as
JPEG, original order) and `root`/cifar-n-labels/cifar10n_labels.npz.
"demo" reads deft_jax/demo_data/cifar10n_demo.npz, shipped with the package.
Ids are "cifar10/<train|test>/<original index>".
"""

from __future__ import annotations

import pathlib
from typing import Sequence

import numpy as np

from deft_jax.data import class_names as names_lib
from deft_jax.data import sources
from deft_jax.data.errors import DataError, MissingDataError
from deft_jax.data.splits import BytesReader, LabeledSplit

CIFAR10N_LABEL_SETS = ("clean_label", "aggre_label", "worse_label", "random_label1",
                       "random_label2", "random_label3")
DEMO_FILE = pathlib.Path(__file__).resolve().parents[1] / "demo_data" / "cifar10n_demo.npz"


def _empty(spec) -> bool:
  return spec is None or (isinstance(spec, str) and not spec.strip())


def parse_indices(spec, n: int, what: str) -> np.ndarray:
  """'' -> all of range(n); 'a:b' -> range(a, b); a list of ints as given. Checked against n."""
  if _empty(spec):
    return np.arange(n, dtype=np.int64)
  if isinstance(spec, str):
    parts = spec.split(":")
    if len(parts) != 2:
      raise DataError(f"{what}: want 'start:end' or a list of ints, got {spec!r}")
    start = int(parts[0]) if parts[0].strip() else 0
    end = int(parts[1]) if parts[1].strip() else n
    idx = np.arange(start, end, dtype=np.int64)
  else:
    idx = np.asarray(list(spec), dtype=np.int64)
  if idx.size == 0:
    raise DataError(f"{what}: {spec!r} selects no example")
  if idx.min() < 0 or idx.max() >= n:
    raise DataError(f"{what}: {spec!r} reaches outside [0, {n})")
  if np.unique(idx).size != idx.size:
    raise DataError(f"{what}: {spec!r} repeats an index")
  return idx


def _label_set(available: Sequence[str], label_set: str, where: str) -> str:
  label_set = label_set or "worse_label"
  if label_set not in available:
    raise DataError(f"{where}: unknown label_set {label_set!r}; known: {list(available)}")
  return label_set


def _split(name, jpeg, offsets, rows, prefix, labels, clean) -> LabeledSplit:
  ids = [f"cifar10/{prefix}/{int(r):05d}" for r in rows]
  return LabeledSplit(name=name, class_names=list(names_lib.CIFAR10), labels=labels,
                      clean_labels=clean, ids=ids,
                      reader=BytesReader(jpeg, offsets, ids, rows=rows))


def load_cifar10n_offline(root: str, *, label_set: str = "worse_label",
                          train_indices="", pretrain_indices="",
                          test_size: int = 0) -> dict[str, LabeledSplit]:
  """Splits "train" (noisy labels from `label_set`), optional "pretrain" (clean), "test".

  train_indices / pretrain_indices: '' (all, or all but pretrain / none), 'a:b' or
    a list of train indices; the two must not overlap (pretraining data stays unseen).
  test_size: the first test_size test images (0 = all 10,000).
  """
  root = pathlib.Path(root)
  jpeg_file = root / "cifar10-jpeg" / "cifar10_jpeg.npz"
  label_file = root / "cifar-n-labels" / "cifar10n_labels.npz"
  missing = [str(f) for f in (jpeg_file, label_file) if not f.is_file()]
  if missing:
    raise MissingDataError(
        f"cifar10n_offline: missing {missing}. data.root must hold "
        "cifar10-jpeg/cifar10_jpeg.npz and cifar-n-labels/cifar10n_labels.npz "
        "(the shared assets layout).")
  images = np.load(jpeg_file, allow_pickle=False)
  human = np.load(label_file, allow_pickle=False)
  label_set = _label_set(CIFAR10N_LABEL_SETS, label_set, "cifar10n_offline")
  clean = np.asarray(images["train_labels"])
  if not np.array_equal(clean, human["clean_label"]):
    raise DataError(f"{label_file}: clean_label differs from {jpeg_file} train_labels; the "
                     "label file is not in the original CIFAR-10 order")
  n = len(clean)
  train_jpeg, train_off = images["train_jpeg"], images["train_offsets"]
  has_pretrain = pretrain_indices is not None and (not isinstance(pretrain_indices, str)
                                                   or pretrain_indices.strip())
  pre_idx = parse_indices(pretrain_indices, n, "pretrain_indices") if has_pretrain else None
  if has_pretrain and _empty(train_indices):
    train_idx = np.setdiff1d(np.arange(n), pre_idx)  # the rest
  else:
    train_idx = parse_indices(train_indices, n, "train_indices")
  out = {"train": _split(f"cifar10n/{label_set}/train", train_jpeg, train_off, train_idx,
                         "train", human[label_set][train_idx], clean[train_idx])}
  if has_pretrain:
    overlap = np.intersect1d(pre_idx, train_idx)
    if overlap.size:
      raise DataError(f"pretrain_indices overlap train_indices ({overlap.size} shared, "
                       f"e.g. {overlap[:3].tolist()})")
    out["pretrain"] = _split("cifar10/pretrain", train_jpeg, train_off, pre_idx, "train",
                             clean[pre_idx], clean[pre_idx])
  test_labels = np.asarray(images["test_labels"])
  test_idx = np.arange(test_size or len(test_labels))
  if len(test_idx) > len(test_labels):
    raise DataError(f"test_size {test_size} > {len(test_labels)} test images")
  out["test"] = _split("cifar10/test", images["test_jpeg"], images["test_offsets"], test_idx,
                       "test", test_labels[test_idx], test_labels[test_idx])
  return out


def load_demo(*, label_set: str = "worse_label", train_indices="", test_size: int = 0,
              path: str | None = None) -> dict[str, LabeledSplit]:
  """The packaged demo: "train" (4,000 CIFAR-10N images), "pretrain" (5,000 clean), "test" (1,000).

  train_indices selects within the 4,000 (e.g. '0:500' for a quick run).
  """
  path = pathlib.Path(path) if path else DEMO_FILE
  if not path.is_file():
    raise MissingDataError(
        f"demo data {path} is missing; rebuild it with `python -m "
        "deft_jax.demo_data.build_demo_data <assets>` or reinstall deft_jax")
  z = np.load(path, allow_pickle=False)
  label_set = _label_set(CIFAR10N_LABEL_SETS, label_set, "demo")

  def piece(prefix, name, prefix_id, rows, labels_key):
    rows = np.asarray(rows, np.int64)
    orig = z[f"{prefix}_index"]
    ids = [f"cifar10/{prefix_id}/{int(orig[r]):05d}" for r in rows]
    clean = z[f"{prefix}_clean_label"].astype(np.int32)[rows]
    labels = z[f"{prefix}_{labels_key}"].astype(np.int32)[rows]
    return LabeledSplit(name=name, class_names=list(names_lib.clean_names(z["class_names"])),
                        labels=labels, clean_labels=clean, ids=ids,
                        reader=BytesReader(z[f"{prefix}_jpeg"], z[f"{prefix}_offsets"], ids,
                                           rows=rows))

  n_train, n_test = len(z["noisy_train_index"]), len(z["test_index"])
  if test_size > n_test:
    raise DataError(f"test_size {test_size} > {n_test} demo test images")
  return {
      "train": piece("noisy_train", f"demo/{label_set}/train", "train",
                     parse_indices(train_indices, n_train, "train_indices"), label_set),
      "pretrain": piece("pretrain", "demo/pretrain", "train",
                        np.arange(len(z["pretrain_index"])), "clean_label"),
      "test": piece("test", "demo/test", "test", np.arange(test_size or n_test), "clean_label"),
  }


def demo_source(cfg) -> dict[str, LabeledSplit]:
  return load_demo(label_set=cfg.label_set or "worse_label", train_indices=cfg.train_indices,
                   test_size=cfg.test_size)


def cifar10n_offline_source(cfg) -> dict[str, LabeledSplit]:
  return load_cifar10n_offline(sources.need_root(cfg), label_set=cfg.label_set or "worse_label",
                               train_indices=cfg.train_indices, pretrain_indices=cfg.pretrain_indices,
                               test_size=cfg.test_size)
