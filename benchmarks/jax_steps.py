"""The deft_jax train steps the harness times: the product's own, built from the product's config.

Phase 1 is ``deft_jax.detect.detector.Detector``'s state and jitted step (params ``{"clip", "prompts"}``,
prompts + PEFT trainable, SGD momentum 0.9, lr 0.03, wd 5e-4, per-example online records of a CIFAR-100-sized
dataset). Phase 2 is ``deft_jax.classify.trainer.Trainer``'s state and jitted step on the reference FFT classifier
of ``deft_jax.classify.classifier.clip_classifier`` (the visual blocks and a new head train, SGD momentum 0.9,
lr 5e-4, wd 5e-4, masked-mean CE). Both come from ``config_lib.base_config()`` with the benchmark's model
settings. Random weights: speed does not depend on them. The batch lives on the device (this measures the
model, not the input pipeline). Everything runs on one device. No TensorFlow and no CLU is imported.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from benchmarks import common, flops
from deft_jax import config_lib, parallel
from deft_jax.classify import classifier as clf_lib
from deft_jax.classify import trainer as trainer_lib
from deft_jax.classify.run_clip import RunCLIP
from deft_jax.detect.detector import Detector
from deft_jax.models import presets
from deft_jax.models import prompts as prompts_lib

NUM_EXAMPLES = 50_000  # CIFAR-100's train split: the size of the phase-1 online records
EPOCHS = 10


@dataclasses.dataclass
class BuiltStep:
  """A jitted step with its (device-resident) inputs and what the FLOP counter needs."""

  step: Any  # jitted (state, batch) -> (state, metrics), state donated
  state: dict
  batch: dict
  config: presets.CLIPConfig
  text_len: int = 0
  text: flops.TextPass | None = None  # phase 1's text pass, for the FLOP count


def run_config(cfg: common.BenchConfig):
  """The product's run configuration for a benchmark record: its model settings, the method's defaults."""
  c = config_lib.base_config()
  c.model.update(dict(preset=cfg.model, checkpoint="", dtype=cfg.dtype,
                      attention=None if cfg.attention == "xla" else cfg.attention, remat=cfg.remat, scan=cfg.scan))
  c.data.image_size = 0
  c.detect.n_ctx = cfg.n_ctx
  c.detect.text_prefix_sharing = cfg.text_prefix_sharing
  c.detect.text_chunk = cfg.text_chunk
  if cfg.step == "phase1_vpt_deep":
    c.detect.peft.update(dict(vpt="deep", vpt_tokens=cfg.vpt_tokens, lora_rank=0))
  elif cfg.step == "phase1_lora":
    c.detect.peft.update(dict(vpt="none", lora_rank=cfg.lora_rank, lora_targets=("q", "v")))
  return c


def clip_config(cfg: common.BenchConfig) -> presets.CLIPConfig:
  c = presets.get_preset(cfg.model, dtype=cfg.dtype, attention=None if cfg.attention == "xla" else cfg.attention,
                         remat=cfg.remat, scan=cfg.scan)
  if cfg.image_size and cfg.image_size != c.vision.image_size:
    raise ValueError(f"the product's {cfg.model} preset takes {c.vision.image_size} px images; --image_size "
                     f"{cfg.image_size} would time another model")
  return c


def _mesh():
  return parallel.make_mesh([("data", 1)], jax.devices()[:1])


def _batch(cfg: common.BenchConfig, image_size: int, mesh) -> dict:
  rng = np.random.default_rng(0)
  b = cfg.batch
  host = {"image": rng.normal(size=(b, image_size, image_size, 3)).astype(np.float32),
          "index": rng.choice(NUM_EXAMPLES, b, replace=False).astype(np.int32) if b <= NUM_EXAMPLES
          else np.arange(b, dtype=np.int32) % NUM_EXAMPLES,
          "label": rng.integers(0, cfg.num_classes, b).astype(np.int32),
          "clean_label": rng.integers(0, cfg.num_classes, b).astype(np.int32),
          "mask": np.ones(b, bool)}
  return parallel.shard_batch(host, mesh)


def build_phase1(cfg: common.BenchConfig) -> BuiltStep:
  mesh = _mesh()
  config = run_config(cfg)
  model_cfg = clip_config(cfg)
  det = Detector(config, class_names=common.class_names(cfg.num_classes), num_examples=NUM_EXAMPLES, mesh=mesh,
                 checkpoint=None, steps_per_epoch=-(-NUM_EXAMPLES // cfg.batch))
  state = det.init_state(jax.random.key(0))
  return BuiltStep(det.jit_train_step(state), state, _batch(cfg, model_cfg.vision.image_size, mesh), det.model.config,
                   text_len=int(det.template.ids.shape[1]), text=text_pass(det))


def text_pass(det: Detector) -> flops.TextPass:
  """The text pass the Detector's step runs (its template's layout), as the FLOP counter describes it."""
  t = det.template
  layout = prompts_lib.text_layout(t, class_specific=bool(det.config.detect.class_specific),
                                   share_prefix=det.settings.text_prefix_sharing)
  p = layout.prefix
  return flops.TextPass(length=layout.length, prefix=p, buckets=tuple((len(r), s) for r, s in layout.buckets),
                        prefix_grad=bool((t.ctx_index[0, :p] >= 0).any()),
                        suffix_grad=bool((t.ctx_index[:, p:] >= 0).any()), pooled=not det.model.config.scan)


def build_phase2_fft(cfg: common.BenchConfig, *, mesh=None, trainable: str = "blocks") -> BuiltStep:
  """``mesh``: one device by default; ``trainable``: adapt.trainable (the reference's "blocks", or "all")."""
  mesh = mesh or _mesh()
  config = run_config(cfg)
  config.adapt.trainable = trainable
  model_cfg = clip_config(cfg)
  a = config.adapt
  clf = clf_lib.clip_classifier(RunCLIP(config, None), num_classes=cfg.num_classes, mesh=mesh, rng=jax.random.key(0),
                                trainable=a.trainable)
  spe = -(-NUM_EXAMPLES // cfg.batch)
  settings = trainer_lib.make_settings(a.loss, a.loss_params, steps_per_epoch=spe)
  tr = trainer_lib.Trainer(clf, optim_cfg=a.optim, schedule_cfg=a.schedule, settings=settings,
                           total_steps=EPOCHS * spe, steps_per_epoch=spe, mesh=mesh)
  state = tr.init_state(jax.random.key(1), num_examples=NUM_EXAMPLES, num_classes=cfg.num_classes)
  return BuiltStep(tr.jit_train_step(state), state, _batch(cfg, model_cfg.vision.image_size, mesh), model_cfg)


def build(cfg: common.BenchConfig) -> BuiltStep:
  if cfg.step == "phase2_fft":
    return build_phase2_fft(cfg)
  if cfg.step in ("phase1_vpt_deep", "phase1_lora"):
    return build_phase1(cfg)
  raise ValueError(f"unknown step {cfg.step!r}; choose from {common.STEPS}")
