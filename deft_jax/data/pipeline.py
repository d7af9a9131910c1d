"""tf.data input pipelines yielding host-local NumPy batches (docs/ARCHITECTURE.md, batch contract).

Each yielded dict holds image float32 [b, H, W, 3] (normalised), index int32,
label int32, clean_label int32 (-1 unknown) and mask bool, with
b = global_batch_size // process_count. Every process yields the same number of
batches; padding examples have mask False, index 0.

Random-access splits (in memory, files) are shuffled globally: the epoch's
permutation of all N examples comes from NumPy seeded by (seed, epoch), is
padded to whole global batches, and process p takes columns
[p*b, (p+1)*b) of every global batch. The global batch at a step is therefore
the same whatever the number of processes. TFDS splits are streamed as
per-process shards (tfds.even_splits boundaries) and shuffled within the shard.

Resume: `start_step=k` drops k batches' worth of indices (or encoded TFDS
records) before the decode map, then yields exactly what an uninterrupted
iterator yields from step k; augmentation randomness is stateless, keyed by
(seed, epoch, index).
"""

from __future__ import annotations

import math

import numpy as np

from deft_jax.data import preprocess
from deft_jax.data._tf import AUTOTUNE, tf
from deft_jax.data.splits import LabeledSplit, raise_corrupt
from deft_jax.data.errors import DataError

# Decoded in place of padding examples, so padding costs almost nothing.
_PAD_IMAGE = tf.io.encode_png(tf.zeros([8, 8, 3], tf.uint8)).numpy()


def _process(process_index, process_count) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  return int(process_index), int(process_count)


def _local_batch(global_batch_size: int, process_count: int) -> int:
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise DataError(f"global_batch_size {global_batch_size} must be a positive "
                     f"multiple of the process count {process_count}")
  return global_batch_size // process_count


def steps_per_epoch(split: LabeledSplit, global_batch_size: int,
                    process_count: int | None = None) -> int:
  """Batches per epoch, the same on every process (the last one padded)."""
  _, process_count = _process(0 if process_count else None, process_count)
  b = _local_batch(global_batch_size, process_count)
  if split.reader.random_access:
    return math.ceil(split.num_examples / global_batch_size)
  return max(math.ceil(n / b) for n in split.reader.shard_sizes(process_count))


def _plan(split, global_batch_size: int, process_index, process_count) -> tuple[int, int, int, int]:
  """(this process, process count, local batch, steps per epoch)."""
  p, count = _process(process_index, process_count)
  return p, count, _local_batch(global_batch_size, count), steps_per_epoch(split, global_batch_size, count)


def _seed_base(seed: int, epoch: int) -> int:
  # 63 bits of a SeedSequence hash: nearby (seed, epoch) pairs give unrelated streams.
  state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(2, np.uint32)
  return int((int(state[0]) << 31) ^ int(state[1]))


def _local_order(order: np.ndarray, global_batch: int, p: int, count: int) -> np.ndarray:
  steps = math.ceil(len(order) / global_batch)
  padded = np.full(steps * global_batch, -1, np.int64)
  padded[:len(order)] = order
  return padded.reshape(steps, count, global_batch // count)[:, p].reshape(-1)


def _options() -> tf.data.Options:
  opts = tf.data.Options()
  opts.deterministic = True
  opts.experimental_optimization.map_parallelization = True
  return opts


class Batches:
  """Iterator over one epoch's host-local batches; len() is the number left."""

  def __init__(self, ds, split: LabeledSplit, local_order, b: int, num_steps: int,
               start_step: int):
    self._it = ds.as_numpy_iterator()
    self._split, self._order, self._b = split, local_order, b
    self._step, self._num_steps = start_step, num_steps

  def __iter__(self):
    return self

  def __len__(self):
    return self._num_steps - self._step

  def __next__(self) -> dict[str, np.ndarray]:
    try:
      batch = next(self._it)
    except StopIteration:
      if self._step != self._num_steps:
        raise RuntimeError(f"{self._split.name}: pipeline ended after {self._step} "
                           f"of {self._num_steps} batches") from None
      raise
    except tf.errors.OpError as e:
      cand = []
      if self._order is not None:
        cand = self._order[self._step * self._b:(self._step + 1) * self._b]
        cand = cand[cand >= 0]
      raise_corrupt(self._split, cand, e)
    self._step += 1
    index = batch["index"]
    mask = index >= 0
    index = np.where(mask, index, 0).astype(np.int32)
    split = self._split
    clean = (np.full(index.shape, -1, np.int32) if split.clean_labels is None
             else np.where(mask, split.clean_labels[index], -1).astype(np.int32))
    return {"image": batch["image"], "index": index,
            "label": np.where(mask, split.labels[index], 0).astype(np.int32),
            "clean_label": clean, "mask": mask}


def _indexed_dataset(split, order, *, shuffle_seed, shuffle_buffer, p, count, b, steps,
                     skip):
  """{"image": encoded, "index"} for this process, padded to steps*b, `skip` examples dropped."""
  if split.reader.random_access:
    local = order[skip:]
    fetch = split.reader.fetch
    pad = tf.constant(_PAD_IMAGE)
    return tf.data.Dataset.from_tensor_slices(local).map(
        lambda i: {"image": tf.cond(i >= 0, lambda: fetch(i), lambda: pad), "index": i},
        num_parallel_calls=AUTOTUNE, deterministic=True)
  ds = split.reader.stream(p, count)
  n = split.reader.shard_sizes(count)[p]
  if shuffle_seed is not None:
    ds = ds.shuffle(max(1, min(shuffle_buffer, n)), seed=shuffle_seed,
                    reshuffle_each_iteration=False)
  pad = tf.data.Dataset.from_tensors(
      {"image": tf.constant(_PAD_IMAGE), "index": tf.constant(-1, tf.int64)})
  ds = ds.concatenate(pad.repeat(steps * b - n))
  return ds.skip(skip)


def train_batches(split: LabeledSplit, *, global_batch_size: int, image_size: int,
                  seed: int, epoch: int, start_step: int = 0,
                  augment: str = "resize_crop", mean=preprocess.CLIP_MEAN,
                  std=preprocess.CLIP_STD, process_index: int | None = None,
                  process_count: int | None = None, shuffle_buffer: int = 16384,
                  resize_ratio: float = preprocess.RESIZE_RATIO,
                  antialias: bool = True, eval_resize: str = "short_side") -> Batches:
  """One training epoch of host-local batches, deterministic given (seed, epoch).

  Args:
    split: the examples; labels are gathered from split.labels by index.
    global_batch_size: summed over processes; must divide by the process count.
    image_size: output side in pixels.
    seed, epoch: the shuffle and augmentation randomness.
    start_step: batches of this epoch already consumed (resume).
    augment: one of preprocess.AUGMENTATIONS.
    mean, std: normalisation on the [0, 1] scale.
    process_index, process_count: default to jax.process_index()/process_count().
    shuffle_buffer: TFDS splits only (random-access splits shuffle globally).
    resize_ratio: "resize_crop" resizes the short side to image_size*resize_ratio.
    antialias: antialias the crop's final resize (as PIL does); False is ~2x faster
      on large JPEGs (benchmarks/data_throughput.py) and aliases shrunk crops a little.
    eval_resize: the eval transform that augment="none" applies (preprocess.EVAL_RESIZES).
  """
  if augment not in preprocess.AUGMENTATIONS:
    raise ValueError(f"unknown augment {augment!r}; known: {preprocess.AUGMENTATIONS}")
  p, count, b, steps = _plan(split, global_batch_size, process_index, process_count)
  if not 0 <= start_step <= steps:
    raise DataError(f"start_step {start_step} not in [0, {steps}]")
  base = _seed_base(seed, epoch)
  order = None
  if split.reader.random_access:
    perm = np.random.default_rng([int(seed), int(epoch)]).permutation(split.num_examples)
    order = _local_order(perm, global_batch_size, p, count)
  ds = _indexed_dataset(split, order, shuffle_seed=base % (2**31 - 1),
                        shuffle_buffer=shuffle_buffer, p=p, count=count, b=b, steps=steps,
                        skip=start_step * b)

  def augment_fn(ex):
    key = tf.stack([tf.constant(base, tf.int64), ex["index"]])
    image = preprocess.train_view(ex["image"], image_size, augment, key, resize_ratio,
                                  antialias, eval_resize)
    return {"image": image, "index": ex["index"]}

  ds = _finish(ds.map(augment_fn, num_parallel_calls=AUTOTUNE, deterministic=True),
               b, mean, std)
  return Batches(ds, split, order, b, steps, start_step)


def eval_batches(split: LabeledSplit, *, global_batch_size: int, image_size: int,
                 mean=preprocess.CLIP_MEAN, std=preprocess.CLIP_STD,
                 process_index: int | None = None,
                 process_count: int | None = None, eval_resize: str = "short_side") -> Batches:
  """Every example exactly once over all processes, through the eval transform: resize short side (bicubic)
  + centre crop, or another of preprocess.EVAL_RESIZES (preprocess.eval_transform)."""
  if eval_resize not in preprocess.EVAL_RESIZES:
    raise ValueError(f"unknown eval_resize {eval_resize!r}; known: {preprocess.EVAL_RESIZES}")
  p, count, b, steps = _plan(split, global_batch_size, process_index, process_count)
  order = None
  if split.reader.random_access:
    order = _local_order(np.arange(split.num_examples), global_batch_size, p, count)
  ds = _indexed_dataset(split, order, shuffle_seed=None, shuffle_buffer=0, p=p,
                        count=count, b=b, steps=steps, skip=0)
  ds = ds.map(lambda ex: {"image": preprocess.eval_transform(preprocess.decode(ex["image"]),
                                                              image_size, eval_resize),
                          "index": ex["index"]},
              num_parallel_calls=AUTOTUNE, deterministic=True)
  return Batches(_finish(ds, b, mean, std), split, order, b, steps, 0)


def _finish(ds, b, mean, std):
  ds = ds.batch(b, drop_remainder=True)
  ds = ds.map(lambda ex: {"image": preprocess.normalize(ex["image"], mean, std),
                          "index": ex["index"]}, num_parallel_calls=AUTOTUNE)
  return ds.prefetch(AUTOTUNE).with_options(_options())
