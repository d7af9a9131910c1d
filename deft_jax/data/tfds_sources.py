"""TFDS sources: CIFAR-100, CUB-200-2011, Stanford Cars, CIFAR-10N/100N, ImageNet val (50 classes).

Example index i of a split is its position in the TFDS canonical order (read
with shuffle_files=False), restricted to the examples kept (e.g. ImageNet's first
50 classes). One label pass at load time reads every record without decoding an
image; images are then streamed per process from `split[a:b]` slices with the
boundaries of tfds.even_splits, so each host reads only its shard.

CIFAR-N and the image order: TFDS stores CIFAR in its own shuffled order, while
the CIFAR-N label files follow the original python order. TFDS' cifar10_n /
cifar100_n attach the human labels to each record at preparation time, so they
line up by construction. With tfds:cifar10 / tfds:cifar100 plus
`cifar_n_file` (the .npz of the shared assets, python order), each record's
'id' ("train_16399") gives its python index, and the file's clean labels are
checked against the record's label before any noisy label is used.
"""

from __future__ import annotations

import logging
import pathlib
import re

import numpy as np
import tensorflow_datasets as tfds

from deft_jax.data import class_names as names_lib
from deft_jax.data import sources
from deft_jax.data import preprocess
from deft_jax.data._tf import AUTOTUNE, tf
from deft_jax.data.errors import ClassNamesError, DataError, MissingDataError, require_file
from deft_jax.data.splits import LabeledSplit, Reader, even_shard_bounds

# Files TFDS wants in manual_dir, per dataset.
MANUAL_FILES = {
    "cifar10_n": ("CIFAR-10_human_annotations.csv", "side_info_cifar10N.csv",
                  "image_order_c10.npy"),
    "cifar100_n": ("CIFAR-100_human_annotations.csv", "side_info_cifar100N.csv",
                   "image_order_c100.npy"),
    "imagenet2012": ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"),
}
# label_set name -> TFDS feature key.
CIFAR_N_LABEL_SETS = {
    "cifar10_n": {"clean_label": "label", "aggre_label": "aggre_label",
                  "worse_label": "worse_label", "random_label1": "random_label1",
                  "random_label2": "random_label2", "random_label3": "random_label3"},
    "cifar100_n": {"clean_label": "label", "noisy_label": "noise_label"},
}
DEFAULT_LABEL_SET = {"cifar10_n": "worse_label", "cifar100_n": "noisy_label"}
_FIXED_NAMES = {"cifar10": names_lib.CIFAR10, "cifar10_n": names_lib.CIFAR10,
                "cifar100": names_lib.CIFAR100, "cifar100_n": names_lib.CIFAR100,
                "caltech_birds2011": names_lib.CUB200}
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_]+$")


class TfdsReader(Reader):
  """Streams the encoded images of chosen positions of a TFDS split."""

  random_access = False

  def __init__(self, builder, split: str, positions: np.ndarray, total: int, ids,
               image_key: str = "image"):
    self._builder, self._split, self._image_key = builder, split, image_key
    self.positions = np.asarray(positions, np.int64)
    self._total, self._ids = total, np.asarray(ids)

  def __len__(self):
    return len(self.positions)

  def describe(self, index):
    return str(self._ids[index])

  def subset(self, indices):
    return TfdsReader(self._builder, self._split, self.positions[indices], self._total,
                      self._ids[indices], self._image_key)

  def shard_sizes(self, count: int) -> list[int]:
    """Examples of this split inside each process's slice."""
    s = np.sort(self.positions)
    return [int(np.searchsorted(s, b) - np.searchsorted(s, a))
            for a, b in even_shard_bounds(self._total, count)]

  def _records(self, start: int, end: int) -> tf.data.Dataset:
    decoders = tfds.decode.PartialDecoding(
        {self._image_key: True}, decoders={self._image_key: tfds.decode.SkipDecoding()})
    return self._builder.as_dataset(
        split=f"{self._split}[{start}:{end}]", decoders=decoders, shuffle_files=False,
        read_config=tfds.ReadConfig(try_autocache=False))

  def stream(self, process_index: int, process_count: int) -> tf.data.Dataset:
    """{"image": encoded, "index"} of this process's slice, in canonical order."""
    start, end = even_shard_bounds(self._total, process_count)[process_index]
    inside = (self.positions >= start) & (self.positions < end)
    if end == start or not inside.any():
      return tf.data.Dataset.from_tensor_slices(
          {"image": tf.constant([], tf.string), "index": tf.constant([], tf.int64)})
    lookup = np.full(end - start, -1, np.int64)
    lookup[self.positions[inside] - start] = np.flatnonzero(inside)
    table, key = tf.constant(lookup), self._image_key
    ds = self._records(start, end).enumerate().map(
        lambda k, ex: {"image": ex[key], "index": tf.gather(table, k)},
        num_parallel_calls=AUTOTUNE, deterministic=True)
    if (lookup < 0).any():
      ds = ds.filter(lambda ex: ex["index"] >= 0)
    return ds

  def read(self, index):
    pos = int(self.positions[index])
    ex = next(iter(self._records(pos, pos + 1)))
    return ex[self._image_key].numpy()

  def load_decoded(self, indices, prep) -> list[np.ndarray]:
    wanted = np.zeros(len(self), bool)
    wanted[indices] = True
    table = tf.constant(wanted)
    ds = self.stream(0, 1).filter(lambda ex: tf.gather(table, ex["index"]))
    ds = ds.map(lambda ex: (ex["index"], prep(preprocess.decode(ex["image"]))),
                num_parallel_calls=AUTOTUNE, deterministic=True)
    got = dict(ds.prefetch(AUTOTUNE).as_numpy_iterator())
    return [got[int(i)] for i in indices]


def prepared_builder(name: str, *, data_dir: str = "", manual_dir: str = "",
                     download: bool = True):
  """tfds builder, downloaded and prepared if needed; a clear error when that is impossible."""
  base = name.split(":")[0]
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DataError(f"TFDS knows no dataset {name!r}: {e}") from None
  if builder.is_prepared():
    return builder
  where = f"{builder.data_dir}"
  files = MANUAL_FILES.get(base, ())
  # TFDS' own default: <data_dir root>/downloads/manual.
  root = getattr(builder, "_data_dir_root", None) or "~/tensorflow_datasets"
  manual = pathlib.Path(manual_dir or pathlib.Path(root).expanduser() / "downloads" / "manual")
  if not download:
    raise MissingDataError(
        f"TFDS dataset {name} is not prepared in {where} and data.download is False. "
        + (f"Put {', '.join(files)} in {manual} and " if files else "")
        + f"run `tfds build {base}` or set data.download=True.")
  # Checked before TFDS starts, which would first spend minutes on other downloads.
  missing = [f for f in files if not (manual / f).exists()]
  if missing:
    raise MissingDataError(
        f"TFDS dataset {name} needs a manual download: put {', '.join(missing)} into "
        f"{manual} (data.manual_dir), then rerun. TFDS instructions: "
        f"{' '.join((builder.MANUAL_DOWNLOAD_INSTRUCTIONS or '').split())}")
  try:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  except Exception as e:  # pylint: disable=broad-except
    raise MissingDataError(f"could not download and prepare TFDS dataset {name} into "
                           f"{where}: {type(e).__name__}: {e}") from e
  return builder


def _scan(builder, split: str, keys: list[str]) -> dict[str, np.ndarray]:
  """Every record's `keys` (no image decoded), in canonical order."""
  ds = builder.as_dataset(split=split, decoders=tfds.decode.PartialDecoding(
      {k: True for k in keys}), shuffle_files=False,
                          read_config=tfds.ReadConfig(try_autocache=False))
  cols = {k: [] for k in keys}
  for batch in ds.batch(4096).prefetch(2).as_numpy_iterator():
    for k in keys:
      cols[k].append(batch[k])
  return {k: (np.concatenate(v) if v else np.zeros((0,))) for k, v in cols.items()}


def _imagenet_names(wnids: list[str]) -> list[str]:
  if len(wnids) <= len(names_lib.IMAGENET_FIRST50):
    return list(names_lib.IMAGENET_FIRST50[:len(wnids)])
  try:  # TFDS ships the 1000 WordNet descriptions with one of its datasets.
    from tensorflow_datasets.datasets.siscore import labels  # pylint: disable=g-import-not-at-top
    return [names_lib.first_lemma(x) for x in labels.IMAGENET_LABELS_LIST[:len(wnids)]]
  except ImportError:
    logging.warning("no human-readable ImageNet names found; prompting with wnids")
    return wnids


def _class_names(builder, base: str, label_key: str, num_classes_hint: int | None):
  feature = builder.info.features[label_key]
  if base in _FIXED_NAMES:
    names = list(_FIXED_NAMES[base])
  else:
    names = list(feature.names)
  if num_classes_hint:
    names = names[:num_classes_hint]
  if base == "imagenet2012":
    wnids = [n for n in names if re.fullmatch(r"n\d{8}", n)]
    if len(wnids) == len(names):
      if names[:3] != ["n01440764", "n01443537", "n01484850"]:
        raise ClassNamesError("imagenet2012 labels are not in the standard synset order")
      names = _imagenet_names(names)
    return names_lib.clean_names(names)
  if len(names) != (num_classes_hint or feature.num_classes):
    raise ClassNamesError(f"{base}: {len(names)} class names for {feature.num_classes} classes")
  return names_lib.clean_names(names)


def _python_index(ids: np.ndarray, prefix: str = "train_") -> np.ndarray:
  out = np.empty(len(ids), np.int64)
  for i, raw in enumerate(ids):
    s = raw.decode() if isinstance(raw, bytes) else str(raw)
    m = re.fullmatch(rf"{prefix}(\d+)", s)
    if not m:
      raise DataError(f"record {i}: id {s!r} is not '{prefix}<index>'; cannot line up "
                      "CIFAR-N labels with TFDS images")
    out[i] = int(m.group(1))
  return out


def load_tfds(name: str, *, split: str, data_dir: str = "", manual_dir: str = "",
              download: bool = True, label_set: str = "", cifar_n_file: str = "",
              first_classes: int = 0, split_role: str = "train") -> LabeledSplit:
  """One TFDS split as a LabeledSplit.

  label_set: for cifar10_n / cifar100_n, which human label set is the given label
    (train split only; the test split carries clean labels).
  cifar_n_file: for cifar10 / cifar100, an .npz of CIFAR-N labels in python order
    (the shared-assets format) whose `label_set` becomes the given label.
  first_classes: keep only examples of classes [0, first_classes) (ImageNet for WebVision).
  """
  if not _SPLIT_NAME.match(split):
    raise DataError(f"TFDS split must be a plain name like 'train', got {split!r}; "
                     "select examples with data.train_indices instead")
  base = name.split(":")[0]
  builder = prepared_builder(name, data_dir=data_dir, manual_dir=manual_dir,
                             download=download)
  features = builder.info.features
  label_key, clean_key = "label", None
  if base in CIFAR_N_LABEL_SETS:
    sets = CIFAR_N_LABEL_SETS[base]
    chosen = label_set or DEFAULT_LABEL_SET[base]
    if chosen not in sets:
      raise DataError(f"{base}: unknown label_set {chosen!r}; known: {sorted(sets)}")
    clean_key = "label"
    if split_role == "train":
      label_key = sets[chosen]
  elif label_set and not cifar_n_file:
    raise DataError(f"label_set={label_set!r} needs tfds:cifar10_n / tfds:cifar100_n "
                     "or data.cifar_n_file")
  id_key = next((k for k in ("id", "image/filename", "file_name") if k in features), None)
  check_cub = base == "caltech_birds2011" and "label_name" in features
  keys = sorted({label_key, "label"} | ({id_key} if id_key else set())
                | ({"label_name"} if check_cub else set()))
  cols = _scan(builder, split, keys)
  if check_cub:
    _check_cub_names(cols["label"], cols["label_name"])
  total = len(cols["label"])
  positions = np.arange(total)
  if first_classes:
    positions = np.flatnonzero(cols["label"] < first_classes)
  ids = (np.array([f"{base}/{split}/{i}" for i in positions]) if id_key is None else
         np.array([f"{base}/{split}/{v.decode()}" for v in cols[id_key][positions]]))
  labels = cols[label_key][positions].astype(np.int64)
  known = clean_key or cifar_n_file or split_role == "test"  # test labels are ground truth
  clean = cols["label"][positions].astype(np.int64) if known else None
  if cifar_n_file and split_role == "train":
    labels, clean = _labels_from_cifar_n_file(cifar_n_file, label_set, cols[id_key][positions],
                                              clean)
  names = _class_names(builder, base, "label", first_classes or None)
  reader = TfdsReader(builder, split, positions, total, ids)
  logging.info("tfds %s/%s: %d of %d records", name, split, len(positions), total)
  chosen_set = label_set or DEFAULT_LABEL_SET.get(base, "")
  suffix = f"/{chosen_set}" if chosen_set and split_role == "train" else ""
  return LabeledSplit(name=f"{base}{suffix}/{split}", class_names=names, labels=labels,
                      clean_labels=clean, ids=ids, reader=reader)


def _labels_from_cifar_n_file(path, label_set, record_ids, tfds_labels):
  path = require_file(path, "data.cifar_n_file", MissingDataError)
  with np.load(path, allow_pickle=False) as z:
    if label_set not in z.files:
      raise DataError(f"{path}: no label set {label_set!r}; it has {z.files}")
    noisy, clean = z[label_set], z["clean_label"]
  py = _python_index(record_ids)
  if py.max() >= len(clean):
    raise DataError(f"{path} has {len(clean)} labels; TFDS ids reach python index {py.max()}")
  wrong = np.flatnonzero(clean[py] != tfds_labels)
  if wrong.size:
    raise DataError(f"{path}: clean labels disagree with the TFDS labels at {wrong.size} "
                    f"records (first: record {wrong[0]}, python index {py[wrong[0]]}); "
                    "the file is not in the original CIFAR order or is for another dataset")
  return noisy[py].astype(np.int64), clean[py].astype(np.int64)


def _check_cub_names(labels, label_names):
  """TFDS keeps a lower-cased folder name per record: it must match our CUB200 order."""
  known = {n.lower(): i for i, n in enumerate(names_lib.CUB200)}
  for label, raw in zip(labels, label_names):
    i = known.get(raw.decode() if isinstance(raw, bytes) else str(raw))
    if i is not None and i != label:
      raise ClassNamesError(f"caltech_birds2011: record with label {label} is named "
                            f"{raw!r}, which is class {i} in deft_jax's CUB list")


def tfds_source(cfg) -> dict[str, LabeledSplit]:
  """data.source = "tfds:<name>": its train and test splits (ImageNet's test split is "validation")."""
  name = cfg.source[len(sources.TFDS_PREFIX):]
  base = name.split(":")[0]
  common = dict(data_dir=cfg.data_dir, manual_dir=cfg.manual_dir, download=cfg.download)
  test_split = cfg.test_split or ("validation" if base == "imagenet2012" else "test")
  first = cfg.num_classes or (50 if base == "imagenet2012" else 0)
  out = {"train": load_tfds(name, split=cfg.train_split or "train", label_set=cfg.label_set,
                            cifar_n_file=cfg.cifar_n_file, first_classes=first, **common)}
  out["test"] = load_tfds(name, split=test_split, split_role="test", first_classes=first, **common)
  return out
