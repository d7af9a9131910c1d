"""Readers of folder layouts: users' image folders and CSVs, Tiny-ImageNet, Clothing1M, WebVision.

All return {"train": LabeledSplit, "test": ..., ...} backed by a FileReader.
Paths go through tf.io.gfile, so gs:// roots work as well as local ones.
"""

from __future__ import annotations

import collections
import csv
import io
import logging
import os
from typing import Sequence

import numpy as np

from deft_jax.data import class_names as names_lib
from deft_jax.data import sources
from deft_jax.data._tf import tf
from deft_jax.data.errors import (ClassNamesError, DataError, EmptyClassError,
                                  LabelRangeError, MissingDataError)
from deft_jax.data.splits import FileReader, LabeledSplit

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
gfile = tf.io.gfile


def _join(*parts) -> str:
  return os.path.join(*[str(p) for p in parts])


def _require(root: str, relpaths: Sequence[str], dataset: str, layout: str) -> None:
  missing = [p for p in relpaths if not gfile.exists(_join(root, p))]
  if missing:
    raise MissingDataError(
        f"{dataset}: missing {', '.join(missing)} under data.root={root!r}. Expected layout:\n"
        f"{layout}")


def _read_lines(path: str) -> list[str]:
  with gfile.GFile(path, "r") as f:
    return [line.rstrip("\r\n") for line in f if line.strip()]


def _check_first_image(split: LabeledSplit, source_file: str) -> None:
  # A wrong root shows up here at once instead of as a decode error mid-epoch.
  if split.num_examples and not gfile.exists(split.reader.paths[0]):
    raise MissingDataError(f"image {split.reader.paths[0]} (listed in {source_file}) not "
                           "found; is data.root the folder the list's paths start from?")


def _override_names(found: list[str], given, what: str) -> list[str]:
  if not given:
    return names_lib.clean_names(found)
  given = list(given)
  if len(given) != len(found):
    raise ClassNamesError(f"{what}: {len(given)} class names given for {len(found)} "
                          f"classes ({', '.join(found[:8])}{'...' if len(found) > 8 else ''})")
  return names_lib.clean_names(given)


def load_class_names(names=(), names_file: str = "") -> list[str]:
  """Class names from a list or a text file (one per line)."""
  if names and names_file:
    raise DataError("give data.class_names or data.class_names_file, not both")
  if names_file:
    if not gfile.exists(names_file):
      raise MissingDataError(f"class_names_file {names_file} does not exist")
    return _read_lines(names_file)
  return list(names)


# ------------------------------------------------------------- image folder


def _list_class_folder(folder: str) -> list[str]:
  out = []
  for dirpath, _, files in gfile.walk(folder):
    out += [_join(dirpath, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
  return sorted(out)


def _folder_split(folder: str, classes: list[str], name: str, names: list[str],
                  require_all: bool) -> LabeledSplit:
  found = sorted(d.rstrip("/") for d in gfile.listdir(folder) if gfile.isdir(_join(folder, d)))
  extra = sorted(set(found) - set(classes))
  if extra:
    raise ClassNamesError(f"{folder}: class folders {extra} do not exist in the train folder")
  paths, labels = [], []
  for label, cls in enumerate(classes):
    if cls not in found:
      if require_all:
        raise EmptyClassError(f"class folder {_join(folder, cls)} is missing")
      continue
    files = _list_class_folder(_join(folder, cls))
    if not files and require_all:
      raise EmptyClassError(f"class folder {_join(folder, cls)} holds no image "
                            f"({'/'.join(IMAGE_EXTENSIONS)})")
    paths += files
    labels += [label] * len(files)
  return LabeledSplit(name=name, class_names=names, labels=np.asarray(labels, np.int64),
                      clean_labels=None, ids=paths, reader=FileReader(paths))


def load_image_folder(root: str, *, class_names=()) -> dict[str, LabeledSplit]:
  """root/<class>/*.jpg, or root/train/<class>/... with root/test (or root/val) beside it.

  Classes are the sorted folder names of the train folder; class_names, if given,
  renames them in that order. Without a test folder only "train" is returned.
  """
  if not gfile.isdir(root):
    raise MissingDataError(f"image_folder: data.root {root!r} is not a folder")
  train_dir, test_dir = root, None
  if gfile.isdir(_join(root, "train")):
    train_dir = _join(root, "train")
    test_dir = next((_join(root, d) for d in ("test", "val") if gfile.isdir(_join(root, d))),
                    None)
  classes = sorted(d.rstrip("/") for d in gfile.listdir(train_dir)
                   if gfile.isdir(_join(train_dir, d)))
  if not classes:
    raise EmptyClassError(f"image_folder: no class folder in {train_dir}")
  names = _override_names(classes, class_names, f"image_folder {train_dir}")
  out = {"train": _folder_split(train_dir, classes, "image_folder/train", names, True)}
  if test_dir:
    out["test"] = _folder_split(test_dir, classes, "image_folder/test", names, False)
  return out


# ---------------------------------------------------------------------- CSV


def _parse_csv(path: str, names: list[str], root: str) -> tuple[list, np.ndarray, np.ndarray]:
  with gfile.GFile(path, "r") as f:
    rows = [r for r in csv.reader(io.StringIO(f.read())) if r and any(c.strip() for c in r)]
  if rows and rows[0][0].strip().lower() == "path":
    rows, first_line = rows[1:], 2
  else:
    first_line = 1
  base = root or os.path.dirname(path)
  by_name = {n: i for i, n in enumerate(names)}
  paths, labels, clean = [], [], []

  def parse(value: str, line: int, column: str) -> int:
    value = value.strip()
    if value.lstrip("-").isdigit():
      v = int(value)
    elif names_lib.clean_name(value) in by_name:
      v = by_name[names_lib.clean_name(value)]
    else:
      raise LabelRangeError(f"{path} line {line}: {column} {value!r} is neither an integer "
                            "nor a class name")
    if not 0 <= v < len(names):
      raise LabelRangeError(f"{path} line {line}: {column} {v} is outside [0, {len(names)})")
    return v

  for k, row in enumerate(rows):
    line = first_line + k
    if len(row) not in (2, 3):
      raise DataError(f"{path} line {line}: want path,label[,clean_label], got {row}")
    p = row[0].strip()
    paths.append(p if os.path.isabs(p) or "://" in p else _join(base, p))
    labels.append(parse(row[1], line, "label"))
    has_clean = len(row) == 3 and row[2].strip() not in ("", "-1")
    clean.append(parse(row[2], line, "clean_label") if has_clean else -1)
  if not paths:
    raise DataError(f"{path}: no rows")
  return paths, np.asarray(labels, np.int64), np.asarray(clean, np.int64)


def load_csv(train_file: str, *, test_file: str = "", class_names=(),
             class_names_file: str = "", root: str = "") -> dict[str, LabeledSplit]:
  """CSV rows `path,label[,clean_label]` (optional header; labels as ints or class names).

  Relative paths resolve against `root`, else the CSV's folder. Every class must
  appear among the train labels, so a wrong class list is caught.
  """
  names = names_lib.clean_names(load_class_names(class_names, class_names_file))
  if not names:
    raise ClassNamesError("csv: give data.class_names or data.class_names_file")
  out = {}
  for key, path in (("train", train_file), ("test", test_file)):
    if not path:
      continue
    if not gfile.exists(path):
      raise MissingDataError(f"csv: {key} file {path} does not exist")
    paths, labels, clean = _parse_csv(path, names, root)
    if key == "train":
      used = np.unique(labels)
      if len(used) != len(names):
        missing = sorted(set(range(len(names))) - set(used.tolist()))
        raise ClassNamesError(
            f"{path}: {len(names)} class names but the labels use {len(used)} classes; "
            f"no example of {[names[i] for i in missing[:10]]}")
    split = LabeledSplit(name=f"csv/{key}", class_names=names, labels=labels,
                         clean_labels=clean if (clean >= 0).any() else None, ids=paths,
                         reader=FileReader(paths))
    _check_first_image(split, path)
    out[key] = split
  if "train" not in out:
    raise DataError("csv: data.train_file is required")
  return out


# ------------------------------------------------------------ Tiny-ImageNet

_TINY_LAYOUT = """  <root>/wnids.txt, <root>/words.txt
  <root>/train/<wnid>/images/*.JPEG
  <root>/val/images/*.JPEG, <root>/val/val_annotations.txt
(unzip tiny-imagenet-200.zip from http://cs231n.stanford.edu/ and point data.root at
tiny-imagenet-200/)"""


def _lemma_names(wnids: list[str], words: dict[str, str]) -> list[str]:
  """First lemma per wnid; where two classes share it, their first two lemmas."""
  first = [names_lib.first_lemma(words.get(w, w)) for w in wnids]
  dup = {n for n, c in collections.Counter(first).items() if c > 1}
  out = []
  for w, n in zip(wnids, first):
    lemmas = [x.strip() for x in words.get(w, w).split(",")]
    out.append(", ".join(lemmas[:2]) if n in dup and len(lemmas) > 1 else n)
  return out


def load_tiny_imagenet(root: str) -> dict[str, LabeledSplit]:
  """Tiny-ImageNet-200: "train" (100k) and "test" (the 10k val images). Classes: sorted wnids."""
  _require(root, ["wnids.txt", "words.txt", "train", "val/images", "val/val_annotations.txt"],
           "tiny_imagenet", _TINY_LAYOUT)
  wnids = sorted(_read_lines(_join(root, "wnids.txt")))
  words = dict(line.split("\t", 1) for line in _read_lines(_join(root, "words.txt"))
               if "\t" in line)
  names = names_lib.clean_names(_lemma_names(wnids, words))
  paths, labels = [], []
  for label, w in enumerate(wnids):
    folder = _join(root, "train", w, "images")
    files = sorted(f for f in gfile.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS)) \
        if gfile.isdir(folder) else []
    if not files:
      raise EmptyClassError(f"tiny_imagenet: {folder} holds no image")
    paths += [_join(folder, f) for f in files]
    labels += [label] * len(files)
  train = LabeledSplit(name="tiny_imagenet/train", class_names=names, labels=labels,
                       clean_labels=labels, ids=paths, reader=FileReader(paths))
  index = {w: i for i, w in enumerate(wnids)}
  vpaths, vlabels = [], []
  for line_no, line in enumerate(_read_lines(_join(root, "val/val_annotations.txt")), 1):
    parts = line.split("\t")
    if len(parts) < 2 or parts[1] not in index:
      raise DataError(f"tiny_imagenet: val_annotations.txt line {line_no}: {line!r} names no "
                      "wnid of wnids.txt")
    vpaths.append(_join(root, "val/images", parts[0]))
    vlabels.append(index[parts[1]])
  test = LabeledSplit(name="tiny_imagenet/test", class_names=names, labels=vlabels,
                      clean_labels=vlabels, ids=vpaths, reader=FileReader(vpaths))
  _check_first_image(test, "val/val_annotations.txt")
  return {"train": train, "test": test}


# --------------------------------------------------------------- Clothing1M

_CLOTHING_FILES = ["noisy_label_kv.txt", "clean_label_kv.txt", "noisy_train_key_list.txt",
                   "clean_test_key_list.txt", "category_names_eng.txt", "images"]
_CLOTHING_LAYOUT = """  <root>/images/<0-9>/<00-99>/*.jpg   (the unpacked images/*.tar)
  <root>/noisy_label_kv.txt, <root>/clean_label_kv.txt
  <root>/noisy_train_key_list.txt, <root>/clean_test_key_list.txt, <root>/category_names_eng.txt
(from the Clothing1M authors; keys are paths like images/0/00/123.jpg relative to <root>)"""


def _kv(path: str) -> dict[str, int]:
  out = {}
  for line_no, line in enumerate(_read_lines(path), 1):
    parts = line.split()
    if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
      raise DataError(f"{path} line {line_no}: want '<key> <label>', got {line!r}")
    out[parts[0]] = int(parts[1])
  return out


def load_clothing1m(root: str) -> dict[str, LabeledSplit]:
  """Splits "train" (1M noisy labels), "test" and, if listed, "val".

  Train clean_labels come from clean_label_kv.txt where it has the key, else -1.
  """
  _require(root, _CLOTHING_FILES, "clothing1m", _CLOTHING_LAYOUT)
  names = _read_lines(_join(root, "category_names_eng.txt"))
  if len(names) != 14:
    raise ClassNamesError(f"clothing1m: category_names_eng.txt lists {len(names)} names, "
                          "want 14")
  names = names_lib.clean_names(names)
  noisy, clean = _kv(_join(root, "noisy_label_kv.txt")), _kv(_join(root, "clean_label_kv.txt"))

  def build(key_file, table, split_name):
    keys = _read_lines(_join(root, key_file))
    missing = [k for k in keys if k not in table]
    if missing:
      raise DataError(f"clothing1m: {len(missing)} key(s) of {key_file} have no label, e.g. "
                      f"{missing[0]}")
    paths = [_join(root, k) for k in keys]
    split = LabeledSplit(
        name=f"clothing1m/{split_name}", class_names=names,
        labels=np.asarray([table[k] for k in keys], np.int64),
        clean_labels=np.asarray([clean.get(k, -1) for k in keys], np.int64), ids=keys,
        reader=FileReader(paths))
    _check_first_image(split, key_file)
    return split

  out = {"train": build("noisy_train_key_list.txt", noisy, "train"),
         "test": build("clean_test_key_list.txt", clean, "test")}
  if gfile.exists(_join(root, "clean_val_key_list.txt")):
    out["val"] = build("clean_val_key_list.txt", clean, "val")
  return out


# ---------------------------------------------------------------- WebVision

_WEBVISION_LAYOUT = """  <root>/info/train_filelist_google.txt (and train_filelist_flickr.txt)
  <root>/info/val_filelist.txt, <root>/info/synsets.txt
  <root>/google/..., <root>/flickr/..., <root>/val_images_256/ (or val_images/)
(WebVision 1.0, the resized-images release; list paths are relative to <root>)"""


def load_webvision(root: str, *, subset: str = "google",
                   num_classes: int = 50) -> dict[str, LabeledSplit]:
  """WebVision 1.0, first `num_classes` classes: "train" (google, flickr or both), "test" (val)."""
  sources = {"google": ["google"], "flickr": ["flickr"],
             "google+flickr": ["google", "flickr"]}.get(subset)
  if sources is None:
    raise DataError(f"webvision subset {subset!r}; known: google, flickr, google+flickr")
  lists = [f"info/train_filelist_{s}.txt" for s in sources]
  _require(root, lists + ["info/val_filelist.txt", "info/synsets.txt"], "webvision",
           _WEBVISION_LAYOUT)
  synsets = _read_lines(_join(root, "info/synsets.txt"))
  if len(synsets) < num_classes:
    raise ClassNamesError(f"webvision: synsets.txt lists {len(synsets)} classes, "
                          f"{num_classes} requested")
  names = names_lib.clean_names([names_lib.first_lemma(s) for s in synsets[:num_classes]])
  val_dir = next((d for d in ("val_images_256", "val_images") if gfile.isdir(_join(root, d))),
                 None)
  if val_dir is None:
    raise MissingDataError(f"webvision: neither val_images_256/ nor val_images/ under {root}")

  def build(list_files, prefix, split_name):
    paths, labels = [], []
    for lf in list_files:
      for line_no, line in enumerate(_read_lines(_join(root, lf)), 1):
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
          raise DataError(f"webvision {lf} line {line_no}: want '<path> <label>', got {line!r}")
        if int(parts[1]) < num_classes:
          paths.append(_join(root, prefix, parts[0]))
          labels.append(int(parts[1]))
    split = LabeledSplit(name=f"webvision/{split_name}", class_names=names, labels=labels,
                         clean_labels=None if split_name == "train" else labels, ids=paths,
                         reader=FileReader(paths))
    _check_first_image(split, list_files[0])
    return split

  return {"train": build(lists, "", "train"),
          "test": build(["info/val_filelist.txt"], val_dir, "test")}


# ---------------------------------------------------------------- data.source loaders (data/sources.py SOURCES)

def image_folder_source(cfg) -> dict[str, LabeledSplit]:
  return load_image_folder(sources.need_root(cfg),
                           class_names=load_class_names(cfg.class_names, cfg.class_names_file))


def csv_source(cfg) -> dict[str, LabeledSplit]:
  return load_csv(cfg.train_file, test_file=cfg.test_file, class_names=cfg.class_names,
                  class_names_file=cfg.class_names_file, root=cfg.root)


def tiny_imagenet_source(cfg) -> dict[str, LabeledSplit]:
  return load_tiny_imagenet(sources.need_root(cfg))


def clothing1m_source(cfg) -> dict[str, LabeledSplit]:
  return load_clothing1m(sources.need_root(cfg))


def webvision_source(cfg) -> dict[str, LabeledSplit]:
  """WebVision's first num_classes (50) classes; with data.imagenet_val, ImageNet val of them as "test2"."""
  from deft_jax.data import tfds_sources  # pylint: disable=g-import-not-at-top

  n = cfg.num_classes or 50
  out = load_webvision(sources.need_root(cfg), subset=cfg.webvision_subset, num_classes=n)
  if cfg.imagenet_val:
    try:
      out["test2"] = tfds_sources.load_tfds("imagenet2012", split="validation", split_role="test", first_classes=n,
                                            data_dir=cfg.data_dir, manual_dir=cfg.manual_dir, download=cfg.download)
    except MissingDataError as e:
      raise MissingDataError(f"{e}\n(webvision's second test set; set data.imagenet_val=False to run without "
                             "it)") from e
    if out["test2"].class_names != out["test"].class_names:
      logging.warning("webvision and ImageNet class names differ: %s vs %s", out["test"].class_names[:3],
                      out["test2"].class_names[:3])
  return out
