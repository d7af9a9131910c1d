"""Acceptance on real data: training on DEFT's clean subset beats training on every noisy label, at equal steps.

The offline real-noise setting of ``real_noise_workdir`` (tests/conftest.py): the packaged demo (4,000 CIFAR-10
train images with CIFAR-10N ``worse_label``, 41.6 % human noise; 1,000 clean test images), the tiny CLIP of
configs/demo.py pretrained on the demo's 5,000 clean held-out images, and DEFT's clean mask. Both runs use the
reference recipe of configs/demo.py (FFT of the blocks, new random head, CE, SGD momentum 0.9, lr 5e-4, wd 5e-4,
cosine per epoch, batch 64) for the same number of optimiser steps: 10 epochs of the full noisy set, so
about 17 epochs of DEFT's smaller subset.
"""

import importlib.util

import jax
import numpy as np
from clu import metric_writers

from conftest import REPO
from deft_jax import parallel
from deft_jax.adapt import train as adapt
from deft_jax.data import datasets

STEPS = 630  # 10 epochs of the 4,000 noisy labels at batch 64


def demo_config():
  spec = importlib.util.spec_from_file_location("demo_config", REPO / "configs" / "demo.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_fft_on_deft_subset_beats_fft_on_all_noisy_labels_at_equal_steps(real_noise_workdir, tmp_path):
  clip = str(real_noise_workdir / "pretrain" / "clip")
  detection = dict(np.load(real_noise_workdir / "detect" / "detection.npz"))
  config = demo_config()
  splits = {k: v for k, v in datasets.get_dataset(config.data).items() if k in ("train", "test")}
  train = splits["train"]
  precision = (train.labels == train.clean_labels)[detection["is_clean"]].mean()
  assert precision > 1 - train.noise_rate() + 0.05  # DEFT's subset is really cleaner than the whole set
  mesh = parallel.make_mesh([("data", 1)], jax.devices()[:1])
  top1 = {}
  for selection in ("deft", "all"):
    c = demo_config()
    c.adapt.update(dict(method="fft", selection=selection, steps=STEPS))
    res = adapt.run(c, tmp_path / selection, splits=splits, mesh=mesh, writer=metric_writers.LoggingWriter(),
                    clip_checkpoint=clip, detection=detection)
    assert res["steps"] == STEPS
    top1[selection] = res["test"]["top1"]
  print(f"FFT test top-1 at {STEPS} steps: DEFT subset {top1['deft']:.3f}, all noisy labels {top1['all']:.3f} "
        f"(subset precision {precision:.3f})")
  assert top1["deft"] > top1["all"], top1


def test_backbone_from_random_init_on_deft_subset_beats_all_noisy_labels(real_noise_workdir, tmp_path):
  """A phase-2 backbone other than CLIP (a small ResNet of the backbone registry; random init, since no
  pretrained weights exist offline), SGD lr 0.05, 630 steps on DEFT's subset against every noisy label."""
  detection = dict(np.load(real_noise_workdir / "detect" / "detection.npz"))
  config = demo_config()
  splits = {k: v for k, v in datasets.get_dataset(config.data).items() if k in ("train", "test")}
  mesh = parallel.make_mesh([("data", 1)], jax.devices()[:1])
  top1 = {}
  for selection in ("deft", "all"):
    c = demo_config()
    c.adapt.update(dict(method="fft", selection=selection, steps=STEPS, backbone="resnet_tiny",
                        backbone_checkpoint="none", backbone_optimizer=False))
    c.adapt.schedule.lr = 0.05
    res = adapt.run(c, tmp_path / selection, splits=splits, mesh=mesh, writer=metric_writers.LoggingWriter(),
                    clip_checkpoint=None, detection=detection)
    assert res["backbone"] == "resnet_tiny" and res["steps"] == STEPS
    top1[selection] = res["test"]["top1"]
  print(f"resnet_tiny (random init) test top-1 at {STEPS} steps: DEFT subset {top1['deft']:.3f}, "
        f"all noisy labels {top1['all']:.3f}")
  assert top1["deft"] > top1["all"] + 0.03, top1
