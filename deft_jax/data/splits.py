"""LabeledSplit: one split's labels and ids in memory, images behind a reader.

Labels never travel through tf.data: pipelines carry only `index`, and gather
`label` / `clean_label` from the NumPy arrays here, so label noise generated on
the host (and saved to a file) is exactly what training sees.

Readers say how to get the encoded bytes of example i:
  BytesReader  JPEG/PNG bytes held in memory (offline CIFAR, demo data)
  FileReader   one file per example (folders, CSV, Clothing1M, WebVision)
  TfdsReader   a TFDS split, streamed (deft_jax.data.tfds_sources)
The first two allow random access; TFDS splits are read as per-process shards.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any, Sequence

import numpy as np

from deft_jax.data import preprocess
from deft_jax.data._tf import AUTOTUNE, native_stderr_captured, tf
from deft_jax.data.errors import ClassNamesError, CorruptImageError, DataError, check_labels


def even_shard_bounds(n: int, count: int) -> list[tuple[int, int]]:
  """[start, end) of `count` contiguous shards of n items; the first n % count get one more.

  The same boundaries as tfds.even_splits(..., drop_remainder=False).
  """
  base, extra = divmod(n, count)
  bounds, start = [], 0
  for i in range(count):
    end = start + base + (1 if i < extra else 0)
    bounds.append((start, end))
    start = end
  return bounds


class Reader:
  """How to get example i's encoded image; subclasses implement the storage."""

  random_access = True

  def __len__(self) -> int:
    raise NotImplementedError

  def fetch(self, index: tf.Tensor) -> tf.Tensor:
    """Graph op: int64 index -> encoded bytes (tf.string scalar)."""
    raise NotImplementedError

  def read(self, index: int) -> bytes:
    """Host: encoded bytes of example `index`."""
    raise NotImplementedError

  def describe(self, index: int) -> str:
    """A path or id naming example `index` in error messages."""
    raise NotImplementedError

  def subset(self, indices: np.ndarray) -> "Reader":
    raise NotImplementedError


class BytesReader(Reader):
  """Encoded images in one uint8 buffer; example i is buffer[offsets[r]:offsets[r+1]], r = rows[i]."""

  def __init__(self, buffer: np.ndarray, offsets: np.ndarray, names: Sequence[str],
               rows: np.ndarray | None = None):
    self._buffer, self._offsets = buffer, np.asarray(offsets, np.int64)
    self._rows = np.arange(len(offsets) - 1) if rows is None else np.asarray(rows, np.int64)
    self._names = np.asarray(names)
    if len(self._names) != len(self._rows):
      raise ValueError(f"{len(self._names)} names for {len(self._rows)} images")
    self._table = None

  @classmethod
  def from_encoded(cls, images: Sequence[bytes], names: Sequence[str]) -> "BytesReader":
    """One reader over a list of encoded images (PNG / JPEG / ... bytes), packed into one buffer."""
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in images], dtype=np.int64)])
    buffer = np.frombuffer(b"".join(images), np.uint8)
    return cls(buffer, offsets, names)

  def __len__(self):
    return len(self._rows)

  def read(self, index):
    r = self._rows[index]
    return self._buffer[self._offsets[r]:self._offsets[r + 1]].tobytes()

  def fetch(self, index):
    if self._table is None:  # built on first use: ~1 s per 100k images
      with tf.init_scope():  # eagerly, even when first called inside a dataset map
        self._table = tf.constant([self.read(i) for i in range(len(self))], tf.string)
    return tf.gather(self._table, index)

  def describe(self, index):
    return str(self._names[index])

  def subset(self, indices):
    return BytesReader(self._buffer, self._offsets, self._names[indices], self._rows[indices])


class FileReader(Reader):
  """One image file per example (any path tf.io.gfile reads, e.g. gs://)."""

  def __init__(self, paths: Sequence[str]):
    self.paths = np.asarray([str(p) for p in paths])
    self._table = None

  def __len__(self):
    return len(self.paths)

  def read(self, index):
    with tf.io.gfile.GFile(self.paths[index], "rb") as f:
      return f.read()

  def fetch(self, index):
    if self._table is None:
      with tf.init_scope():
        self._table = tf.constant(self.paths, tf.string)
    return tf.io.read_file(tf.gather(self._table, index))

  def describe(self, index):
    return str(self.paths[index])

  def subset(self, indices):
    return FileReader(self.paths[indices])


def _as_int32(a, what: str) -> np.ndarray:
  a = np.asarray(a)
  if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
    raise ValueError(f"{what} must be a 1-D integer array, got {a.dtype} {a.shape}")
  return a.astype(np.int32)


@dataclasses.dataclass(frozen=True)
class LabeledSplit:
  """One split: labels and ids on the host, images behind `reader`.

  Attributes:
    name: e.g. "cifar100/train".
    class_names: human readable ("_" already replaced by " ").
    labels: int32 [N], the given labels (human-noisy, synthetic-noisy or clean).
    clean_labels: int32 [N] ground truth, or None where unknown.
    ids: str [N], a path or TFDS id per example (for reports).
    reader: how to fetch encoded images.
    skipped: ids of unreadable images dropped at load time (skip_corrupt=True).
    noise_report: the NoiseReport of synthetic noise applied to `labels`, if any.
    parent_indices: for a subset, each example's index in the split it was cut from.
    corrections: what a reviewer's corrections file (data.corrections) changed, if one was applied.
  """

  name: str
  class_names: list[str]
  labels: np.ndarray
  clean_labels: np.ndarray | None
  ids: np.ndarray
  reader: Reader
  skipped: tuple[str, ...] = ()
  noise_report: Any = None
  parent_indices: np.ndarray | None = None
  corrections: dict | None = None

  def __post_init__(self):
    set_ = lambda k, v: object.__setattr__(self, k, v)  # frozen dataclass
    set_("class_names", [str(c) for c in self.class_names])
    set_("labels", _as_int32(self.labels, f"{self.name} labels"))
    set_("ids", np.asarray(self.ids).astype(str))
    n = len(self.labels)
    if len(self.ids) != n or len(self.reader) != n:
      raise DataError(f"{self.name}: {n} labels, {len(self.ids)} ids, "
                       f"{len(self.reader)} images; they must agree")
    if not self.class_names:
      raise ClassNamesError(f"{self.name}: no class names")
    check_labels(self.labels, self.num_classes, what=f"{self.name} labels", ids=self.ids)
    if self.clean_labels is not None:
      set_("clean_labels", _as_int32(self.clean_labels, f"{self.name} clean_labels"))
      if len(self.clean_labels) != n:
        raise DataError(f"{self.name}: {len(self.clean_labels)} clean labels for {n} examples")
      # -1 marks "unknown" for individual examples (e.g. Clothing1M train).
      known = self.clean_labels >= 0
      check_labels(np.where(known, self.clean_labels, 0), self.num_classes,
                   what=f"{self.name} clean_labels", ids=self.ids)

  @property
  def num_examples(self) -> int:
    return len(self.labels)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def noise_rate(self) -> float | None:
    """Fraction of given labels that differ from the known clean labels."""
    if self.clean_labels is None:
      return None
    known = self.clean_labels >= 0
    if not known.any():
      return None
    return float(np.mean(self.labels[known] != self.clean_labels[known]))

  def with_labels(self, labels: np.ndarray, noise_report=None) -> "LabeledSplit":
    """The same split with other given labels (clean labels are kept)."""
    return dataclasses.replace(self, labels=labels, noise_report=noise_report)

  def subset(self, indices, name: str | None = None) -> "LabeledSplit":
    """Examples `indices` re-numbered 0..k-1; `parent_indices` maps back."""
    indices = np.asarray(indices, np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= self.num_examples):
      raise IndexError(f"{self.name}: subset indices must lie in [0, {self.num_examples})")
    parent = indices if self.parent_indices is None else self.parent_indices[indices]
    return dataclasses.replace(
        self, name=name or self.name, labels=self.labels[indices],
        clean_labels=None if self.clean_labels is None else self.clean_labels[indices],
        ids=self.ids[indices], reader=self.reader.subset(indices), parent_indices=parent,
        noise_report=None)

  def tf_dataset(self, process_index: int = 0, process_count: int = 1) -> tf.data.Dataset:
    """{"image": encoded bytes, "index": int64} for one process's contiguous shard, in order."""
    if not self.reader.random_access:
      return self.reader.stream(process_index, process_count)
    start, end = even_shard_bounds(self.num_examples, process_count)[process_index]
    fetch = self.reader.fetch
    return tf.data.Dataset.range(start, end).map(
        lambda i: {"image": fetch(i), "index": i}, num_parallel_calls=AUTOTUNE)

  def load_images(self, indices, size: int | None = None) -> np.ndarray:
    """Decoded uint8 [k, H, W, 3] images, in the order of `indices`.

    size: resize every image to size x size (bilinear, antialiased); None keeps
      the stored size, which must then be the same for all requested images.
    """
    indices = np.asarray(indices, np.int64).reshape(-1)
    if indices.size and (indices.min() < 0 or indices.max() >= self.num_examples):
      raise IndexError(f"{self.name}: image indices must lie in [0, {self.num_examples})")

    def prep(image):
      if size is None:
        return image
      return tf.cast(tf.clip_by_value(tf.round(tf.image.resize(
          image, [size, size], antialias=True)), 0, 255), tf.uint8)

    try:
      if self.reader.random_access:
        ds = tf.data.Dataset.from_tensor_slices(indices).map(
            lambda i: prep(preprocess.decode(self.reader.fetch(i))),
            num_parallel_calls=AUTOTUNE, deterministic=True)
        images = list(ds.prefetch(AUTOTUNE).as_numpy_iterator())
      else:
        images = self.reader.load_decoded(indices, prep)
    except tf.errors.OpError as e:
      raise_corrupt(self, indices, e)
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
      raise DataError(f"{self.name}: images differ in size ({sorted(shapes)[:3]}...); "
                       "pass size= to resize them")
    if not images:
      return np.zeros((0, size or 0, size or 0, 3), np.uint8)
    return np.stack(images)

  def check_decodable(self, indices) -> list[tuple[int, str, str]]:
    """(index, id, error) for each of `indices` whose image cannot be read or decoded."""
    bad = []
    for i in np.asarray(indices, np.int64).reshape(-1):
      with native_stderr_captured() as decoder_said:
        try:
          preprocess.decode(tf.constant(self.reader.read(int(i)))).numpy()
          err = None
        except (tf.errors.OpError, OSError, ValueError) as e:
          err = e
      if err is not None:
        msg = decoder_words(getattr(err, "message", None) or str(err))
        if decoder_said:
          msg += f" (the JPEG decoder: {'; '.join(decoder_said[:3])})"
        bad.append((int(i), self.reader.describe(int(i)), msg))
    return bad

  def summary(self) -> str:
    rate = self.noise_rate()
    return (f"{self.name}: {self.num_examples} examples, {self.num_classes} classes"
            + (f", label noise {100 * rate:.2f}%" if rate is not None else "")
            + (f", {len(self.skipped)} unreadable skipped" if self.skipped else ""))


# TensorFlow's decoration of an op's error: "{{function_node __wrapped__DecodeJpeg_device_/job:...}} " before the
# decoder's words, " [Op:DecodeJpeg] name: " after them.
_TF_DECORATION = re.compile(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:[^\]]*\](\s*name:\s*\S*)?")


def decoder_words(message: str) -> str:
  """The first line of a decoding error without TensorFlow's internals: the decoder's own words."""
  lines = str(message).strip().splitlines() or [""]
  return _TF_DECORATION.sub("", lines[0]).strip().rstrip(".")


def raise_corrupt(split: LabeledSplit, candidates, error: Exception):
  """Re-raises a tf.data failure as CorruptImageError naming the image, if one is at fault."""
  bad = split.check_decodable(candidates) if split.reader.random_access else []
  if not bad:
    raise error
  i, ident, msg = bad[0]
  raise CorruptImageError(
      f"{split.name}: cannot read or decode image {ident} (index {i}): {msg}. Any bare line such as 'Improper "
      "call to JPEG library' printed just before is the JPEG decoder's own message about this file. "
      f"{len(bad)} bad image(s) among the {len(candidates)} checked. Set "
      "data.skip_corrupt=True to drop unreadable images when the dataset loads."
  ) from error


def find_corrupt(split: LabeledSplit) -> np.ndarray:
  """Indices of images that fail to read or decode, from one parallel pass over the split."""
  if not split.reader.random_access:
    return np.zeros((0,), np.int64)  # TFDS images were decoded when prepared
  fetch = split.reader.fetch
  ds = tf.data.Dataset.range(split.num_examples).map(
      lambda i: (i, tf.shape(preprocess.decode(fetch(i)))[0]),
      num_parallel_calls=AUTOTUNE, deterministic=True)
  ds = ds.apply(tf.data.experimental.ignore_errors())
  good = np.zeros(split.num_examples, bool)
  with native_stderr_captured() as decoder_said:  # one line per bad JPEG otherwise
    for i, height in ds.prefetch(AUTOTUNE).as_numpy_iterator():
      good[i] = height > 0
  if decoder_said:
    logging.info("%s: the JPEG decoder reported %d problem(s), e.g. %s", split.name, len(decoder_said),
                 decoder_said[0])
  return np.flatnonzero(~good)


def drop_corrupt(split: LabeledSplit) -> LabeledSplit:
  """The split without unreadable images; their ids go to `skipped` and the log."""
  bad = find_corrupt(split)
  if not bad.size:
    return split
  ids = tuple(split.ids[bad])
  logging.warning("%s: skipping %d unreadable image(s), e.g. %s", split.name, bad.size,
                  ", ".join(ids[:5]))
  keep = np.setdiff1d(np.arange(split.num_examples), bad)
  out = split.subset(keep)
  return dataclasses.replace(out, skipped=split.skipped + ids, parent_indices=None)
