"""Train-pipeline throughput: decoded + augmented + normalised images/s at 224 px on this CPU.

  python benchmarks/data_throughput.py [--batch 128] [--steps 30] [--large 1024] [--stages]

Runs deft_jax.data.train_batches (the real pipeline: JPEG decode, crop, resize,
flip in a parallel tf.data map, then batch and normalise) on
  * real CIFAR-10 JPEGs (32x32, from the packaged demo data), and
  * 500x375 JPEGs (CUB-like; quality 90) made from real ones: smooth upscales and
    detailed mosaics, which bracket the decode cost of real photos,
with and without the resize's antialiasing, and prints images/s (wall) and images
per CPU-second (the per-core cost, robust to other load on the machine), and the
cores one GPU would need at 1,500 and 3,000 images/s (roughly a ViT-B/16 full
fine-tuning step on an H100 in bf16). Run it from the repository root
(PYTHONPATH=. if deft_jax is not installed).

--stages adds a cumulative per-stage breakdown (`STAGES`) of the resize_crop
pipeline on both kinds of 500x375 JPEGs and of the cifar pipeline on the CIFAR
JPEGs. Each stage is train_batches itself with the later stages' functions in
deft_jax.data.preprocess replaced by the identity while the tf.data graph is
traced, so every row runs the product's own code up to that stage (and its
shuffle, fetch, batching and prefetch), never a copy of it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import time
from unittest import mock

import numpy as np
from PIL import Image

from benchmarks import common
from deft_jax.data import cifar_offline, pipeline, preprocess
from deft_jax.data.splits import BytesReader, LabeledSplit


def _cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def _large_split(base: LabeledSplit, n: int, mosaic: bool = False) -> LabeledSplit:
  """n 500x375 JPEGs (quality 90): upscaled CIFAR images, or mosaics of 16 x 12 of them.

  Upscales are smooth and small (~17 KB), mosaics detailed (~78 KB, like real
  photos of that size), so the two bracket the decode cost of e.g. CUB.
  """
  images = base.load_images(np.arange(min(base.num_examples, 4096)))
  blobs = []
  for i in range(n):
    if mosaic:
      pick = images[(np.arange(16 * 12) + 7 * i) % len(images)]
      im = pick.reshape(12, 16, 32, 32, 3).transpose(0, 2, 1, 3, 4).reshape(384, 512, 3)
      im = Image.fromarray(np.ascontiguousarray(im[:375, :500]))
    else:
      im = Image.fromarray(images[i % len(images)]).resize((500, 375), Image.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
  offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])])
  ids = [f"large/{i}" for i in range(n)]
  return LabeledSplit(name="synthetic-500x375", class_names=base.class_names,
                      labels=np.zeros(n, np.int32), clean_labels=None, ids=ids,
                      reader=BytesReader(np.concatenate(blobs), offsets, ids))


# Cumulative stages of the train pipeline; each row adds one to the row above.
STAGES = ("decode", "decode_window", "crop_resize", "flip", "normalize")
STAGE_TITLES = {
    "decode": "decode (whole image)",
    "decode_window": "decode (crop window only)",
    "crop_resize": "+ crop, resize",
    "flip": "+ flip",
    "normalize": "+ normalise (= the pipeline)",
}


def stages_for(augment: str) -> tuple[str, ...]:
  """The stages that exist for `augment`: only JPEG window crops decode a window (preprocess.train_view)."""
  if augment in ("resize_crop", "squash_crop", "random_resized_crop"):
    return STAGES
  return tuple(s for s in STAGES if s != "decode_window")


@contextlib.contextmanager
def stage(name: str):
  """Within this context train_batches stops after stage `name`: the later ones are the identity.

  The batches hold uint8 images before "normalize" (whose sizes are the decoded
  image's or the crop window's for the two decode stages), float32 after. It works
  because train_batches looks these functions up in `preprocess` while tracing.
  """
  if name not in STAGES:
    raise ValueError(f"unknown stage {name!r}; known: {STAGES}")
  upto = STAGES.index(name)
  patches = []
  if upto < STAGES.index("normalize"):
    patches.append(mock.patch.object(preprocess, "normalize", lambda images, mean=None, std=None: images))
  if upto < STAGES.index("flip"):
    patches.append(mock.patch.object(preprocess, "_flip", lambda image, seed: image))
  if name == "decode_window":
    patches.append(mock.patch.object(preprocess, "_finish_crop", lambda crop, size, seed, antialias: crop))
  if name == "decode":
    patches.append(mock.patch.object(preprocess, "train_view",
                                     lambda encoded, *args, **kwargs: preprocess.decode(encoded)))
  with contextlib.ExitStack() as stack:
    for p in patches:
      stack.enter_context(p)
    yield


def measure(split: LabeledSplit, augment: str, batch: int, steps: int, warmup: int = 3,
            image_size: int = 224, antialias: bool = True,
            upto: str = "normalize") -> tuple[float, float]:
  """(images per wall second, images per CPU second) over `steps` batches after `warmup`.

  CPU seconds are this process's user + system time over all its threads
  (time.process_time, the tf.data worker threads included): on a shared machine the wall rate falls with other load, the
  per-CPU-second rate (the pipeline's cost per core) much less. `upto` stops the
  pipeline after that stage (`stage`).
  """

  def batches():
    epoch = 0
    while True:
      yield from pipeline.train_batches(split, global_batch_size=batch, image_size=image_size,
                                        seed=0, epoch=epoch, augment=augment,
                                        process_index=0, process_count=1,
                                        antialias=antialias)
      epoch += 1

  with stage(upto):
    it = batches()
    for _ in range(warmup):
      next(it)
    cpu0 = _cpu_seconds()
    times, b = common.time_steps(lambda: next(it), lambda _: None, warmup=0, iters=steps)
    cpu = _cpu_seconds() - cpu0
    it.close()  # stops the prefetch threads, which would otherwise run on into the next measurement
  assert b["image"].shape[0] == batch
  if STAGES.index(upto) >= STAGES.index("crop_resize"):
    assert b["image"].shape == (batch, image_size, image_size, 3)
  return steps * batch / sum(times), steps * batch / cpu


def _cpu_seconds() -> float:
  # CLOCK_PROCESS_CPUTIME_ID: user + system time of every thread of the process, in ns, not 10 ms ticks
  # (os.times), which the fast stages (a CIFAR decode) would round to nothing.
  return time.process_time()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--large", type=int, default=1024, help="500x375 JPEGs of each kind")
  parser.add_argument("--stages", action="store_true",
                      help="also the per-stage breakdown: decode, crop/resize, flip, normalise")
  parser.add_argument("--gpu_rate", type=float, default=3172.0,
                      help="images/s one GPU consumes, for the stage rows' cores (default: the H100 "
                           "ViT-B/16 FFT step, cuDNN attention, batch 256, BENCHMARKS.md)")
  args = parser.parse_args()

  cifar = cifar_offline.load_demo()["pretrain"]  # 5,000 real CIFAR-10 JPEGs
  kb = lambda s: np.mean([len(s.reader.read(i)) for i in range(50)]) / 1024
  large = _large_split(cifar, args.large)
  mosaic = _large_split(cifar, args.large, mosaic=True)
  print(f"CPU cores available: {_cores()}; batch {args.batch}, {args.steps} timed steps, 224 px")
  up_name = f"500x375 upscale ~{kb(large):.0f} KB"
  mo_name = f"500x375 mosaic ~{kb(mosaic):.0f} KB"
  rows = [("CIFAR-10 JPEG 32x32", cifar, "cifar", True),
          ("CIFAR-10 JPEG 32x32", cifar, "resize_crop", True),
          (up_name, large, "resize_crop", True),
          (up_name, large, "resize_crop", False),
          (up_name, large, "random_resized_crop", True),
          (mo_name, mosaic, "resize_crop", True),
          (mo_name, mosaic, "resize_crop", False),
          (mo_name, mosaic, "random_resized_crop", True)]
  for name, split, augment, antialias in rows:
    rate, per_core = measure(split, augment, args.batch, args.steps, antialias=antialias)
    label = augment + ("" if antialias else " (no antialias)")
    print(f"{name:24s} {label:34s} {rate:6.0f} img/s wall {per_core:5.0f} img/CPU-s; cores "
          f"per GPU at 1500 / 3000 img/s: {1500 / per_core:4.1f} / {3000 / per_core:4.1f}",
          flush=True)
  if args.stages:
    print(f"\nPer stage, cumulative (each row adds one stage to the row above); cores per GPU at "
          f"{args.gpu_rate:.0f} img/s")
    for name, split, augment in [("CIFAR-10 JPEG 32x32", cifar, "cifar"), (up_name, large, "resize_crop"),
                                 (mo_name, mosaic, "resize_crop")]:
      for upto in stages_for(augment):
        rate, per_core = measure(split, augment, args.batch, args.steps, upto=upto)
        print(f"{name:24s} {augment:12s} {STAGE_TITLES[upto]:30s} {rate:6.0f} img/s wall "
              f"{per_core:5.0f} img/CPU-s; cores: {args.gpu_rate / per_core:4.1f}", flush=True)


if __name__ == "__main__":
  main()
