"""The deft_jax train steps the harness times, assembled without the TF data stack.

Phase 1 is ``deft_jax.detect.step.make_train_step`` with the state a ``Detector`` builds (params ``{"clip",
"prompts"}``, prompts + PEFT trainable, SGD momentum 0.9, lr 0.03, wd 5e-4, per-example online records of a
CIFAR-100-sized dataset). Phase 2 is the reference FFT: ``clip.VisionTransformer`` + a new Dense head on
ln_post(CLS), the 12 blocks and the head trainable, SGD momentum 0.9, lr 5e-4, wd 5e-4, masked-mean CE.
Random weights: speed does not depend on them. The batch lives on the device (this measures the model, not
the input pipeline). Everything runs on one device.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from deft_jax import optim, parallel
from deft_jax.detect import losses
from deft_jax.detect import prompts as prompts_lib
from deft_jax.detect import step as step_lib
from deft_jax.models import clip as clip_lib
from deft_jax.models import presets
from deft_jax.models.peft import PEFTConfig, trainable_patterns
from deft_jax.models.tokenizer import Tokenizer

NUM_EXAMPLES = 50_000  # CIFAR-100's train split: the size of the phase-1 online records
FFT_RULES = [("vision_model/encoder/.*", 1.0), ("head/.*", 1.0), (".*", None)]
SGD = dict(name="sgd", momentum=0.9, weight_decay=5e-4)


@dataclasses.dataclass
class BuiltStep:
  """A jitted step with its (device-resident) inputs and what the FLOP counter needs."""

  step: Any  # jitted (state, batch) -> (state, metrics), state donated
  state: dict
  batch: dict
  config: presets.CLIPConfig
  text_len: int = 0


class FFTClassifier(nn.Module):
  """CLIP's vision tower and a new linear head on the pre-projection feature ln_post(CLS)."""

  config: presets.CLIPConfig
  num_classes: int

  @nn.compact
  def __call__(self, images):
    dtype = jnp.dtype(self.config.dtype)
    pooled = clip_lib.VisionTransformer(self.config, name="vision_model")(images)
    logits = nn.Dense(self.num_classes, dtype=dtype, name="head")(pooled.astype(dtype))
    return logits.astype(jnp.float32)


def clip_config(cfg: common.BenchConfig) -> presets.CLIPConfig:
  c = presets.get_preset(cfg.model, dtype=cfg.dtype, attention=None if cfg.attention == "xla" else cfg.attention,
                         remat=cfg.remat, scan=cfg.scan)
  if cfg.image_size and cfg.image_size != c.vision.image_size:
    c = c.replace(vision=dataclasses.replace(c.vision, image_size=cfg.image_size))
  return c


def peft_config(cfg: common.BenchConfig) -> PEFTConfig:
  if cfg.step == "phase1_vpt_deep":
    return PEFTConfig(vpt="deep", vpt_tokens=cfg.vpt_tokens)
  if cfg.step == "phase1_lora":
    return PEFTConfig(lora_rank=cfg.lora_rank, lora_targets=("q", "v"))
  raise ValueError(f"{cfg.step} has no PEFT")


# Cached per model so that the batch sizes of a group (one process) compile the initialiser once.
@functools.lru_cache(maxsize=None)
def _jit_init(model: nn.Module, example_shape=None):
  if example_shape is None:
    return jax.jit(lambda k: clip_lib.init_params(model, k))
  return jax.jit(lambda k: model.init(k, jnp.zeros(example_shape))["params"])


@functools.lru_cache(maxsize=None)
def _template(num_classes: int, n_ctx: int) -> prompts_lib.PromptTemplate:
  return prompts_lib.build_template(common.class_names(num_classes), Tokenizer(), n_ctx=n_ctx)


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


def _jit(fn, state, mesh):
  sh = parallel.shardings_for(state, mesh)
  return jax.jit(fn, in_shardings=(sh, parallel.batch_sharding(mesh)),
                 out_shardings=(sh, parallel.replicated(mesh)), donate_argnums=(0,))


def _place(state, mesh):
  return jax.device_put(state, parallel.shardings_for(state, mesh))


def build_phase1(cfg: common.BenchConfig) -> BuiltStep:
  mesh = _mesh()
  peft = peft_config(cfg)
  model = clip_lib.CLIP(clip_config(cfg), peft)
  template = _template(cfg.num_classes, cfg.n_ctx)
  k_model, k_prompts, k_train = jax.random.split(jax.random.key(0), 3)
  clip_params = _jit_init(model)(k_model)
  prompts = prompts_lib.init_prompts(k_prompts, template, model.config.text.width)
  params = {"clip": clip_params, "prompts": prompts}
  # As deft_jax.detect.train.default_rules: prompts and PEFT train, every pretrained weight is frozen.
  rules = [(r"prompts/(pos|neg)_ctx", 1.0)] + [(f"clip/{p}", 1.0) for p in trainable_patterns(peft)]
  rules.append((r"clip/.*", None))
  steps_per_epoch = -(-NUM_EXAMPLES // cfg.batch)
  tx, _ = optim.make_optimizer(params, rules, optim=SGD, schedule=dict(lr=0.03, decay="cosine"),
                               total_steps=10 * steps_per_epoch, steps_per_epoch=steps_per_epoch)
  mask = optim.trainable_mask(params, rules)
  settings = step_lib.DetectSettings(steps_per_epoch=steps_per_epoch, warmup_epochs=1, pseudo_label_start_epoch=1)
  state = {"step": np.int32(0), "rng": jax.random.key_data(k_train), "params": params,
           "opt_state": tx.init(params), "online": step_lib.init_online(NUM_EXAMPLES)}
  state = _place(state, mesh)
  fn = step_lib.make_train_step(model, template, tx, mask, settings)
  return BuiltStep(_jit(fn, state, mesh), state, _batch(cfg, model.config.vision.image_size, mesh), model.config,
                   text_len=int(template.ids.shape[1]))


def make_fft_step(model: FFTClassifier, tx, mask):
  def train_step(state, batch):
    def loss_fn(p):
      logits = model.apply({"params": p}, batch["image"])
      return losses.masked_mean(losses.cross_entropy(logits, batch["label"]), batch["mask"]), None

    (loss, _), grads = optim.value_and_grad_trainable(loss_fn, state["params"], mask)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optim.apply_updates_trainable(state["params"], updates, mask)
    return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, {"loss": loss}

  return train_step


def build_phase2_fft(cfg: common.BenchConfig) -> BuiltStep:
  mesh = _mesh()
  config = clip_config(cfg)
  model = FFTClassifier(config, cfg.num_classes)
  size = config.vision.image_size
  params = _jit_init(model, (1, size, size, 3))(jax.random.key(0))
  tx, _ = optim.make_optimizer(params, FFT_RULES, optim=SGD, schedule=dict(lr=5e-4, decay="cosine", per_epoch=True),
                               total_steps=10 * 782, steps_per_epoch=782)
  mask = optim.trainable_mask(params, FFT_RULES)
  state = _place({"step": np.int32(0), "params": params, "opt_state": tx.init(params)}, mesh)
  return BuiltStep(_jit(make_fft_step(model, tx, mask), state, mesh), state, _batch(cfg, size, mesh), config)


def build(cfg: common.BenchConfig) -> BuiltStep:
  if cfg.step == "phase2_fft":
    return build_phase2_fft(cfg)
  if cfg.step in ("phase1_vpt_deep", "phase1_lora"):
    return build_phase1(cfg)
  raise ValueError(f"unknown step {cfg.step!r}; choose from {common.STEPS}")
