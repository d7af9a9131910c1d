"""The DEFT detector of a run: the model, the prompt layout, the optimiser, the train state and the jitted step.

Everything here is a pure function of the config (no data pipeline, no TensorFlow), so that benchmarks time
exactly the step the detect stage trains with (benchmarks/jax_steps.py).
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from deft_jax import config_lib, optim, parallel, train_state
from deft_jax.classify.classifier import prompt_rules
from deft_jax.classify.run_clip import RunCLIP
from deft_jax.detect import step as detect_step
from deft_jax.models import clip as clip_lib
from deft_jax.models import prompts as prompts_lib
from deft_jax.models.peft import PEFTConfig
from deft_jax.errors import ConfigError


def default_rules(peft: PEFTConfig) -> list[tuple[str, Any]]:
  """Prompts and PEFT parameters train at the base lr; every pretrained weight is frozen."""
  return prompt_rules(r"prompts/(pos|neg)_ctx", peft)


class Detector:
  """Everything static about one detection run: model, prompt layout, optimiser, jitted functions."""

  def __init__(self, config, *, class_names, num_examples: int, mesh, checkpoint: Optional[str] = None,
               steps_per_epoch: int, clip: Optional[RunCLIP] = None):
    """``clip``: the run's CLIP (run.py builds it once); without it, the one of ``config`` and ``checkpoint``."""
    d = config.detect
    self.config, self.mesh = config, mesh
    self.clip = clip or RunCLIP(config, checkpoint)
    self.peft = PEFTConfig.from_dict(d.peft)
    self.model = self.clip.model(self.peft)
    self.layout = prompts_lib.PromptLayout.from_config(d)
    self.template = self.layout.template(class_names, self.clip.tokenizer)
    self.num_examples = num_examples
    self.steps_per_epoch = steps_per_epoch
    self.total_steps = d.epochs * steps_per_epoch
    self.recipe = recipe = config_lib.phase1_recipe(config)  # detect.recipe with the fields that override it
    warm = int(recipe["warmup_epochs"])
    pseudo = recipe["pseudo_labels_from_epoch"]
    self.settings = detect_step.DetectSettings(
        steps_per_epoch=steps_per_epoch, warmup_epochs=warm,
        pseudo_label_start_epoch=warm if pseudo is None else _first_epoch_index(pseudo),
        strict=bool(recipe["strict_selection"]),
        warmup_loss=recipe["warmup_loss"], text_chunk=self.layout.text_chunk,
        text_prefix_sharing=self.layout.share_prefix, negatives=d.negatives)
    self.rules = [tuple(r) for r in d.trainable] if d.trainable else default_rules(self.peft)
    self.sharding_rules = [tuple(r) for r in config.sharding_rules]
    self.tx, self.schedules = optim.make_optimizer(
        self._abstract_params(), self.rules, optim=d.optim,
        schedule=dict(d.schedule, decay=recipe["schedule_decay"]), total_steps=self.total_steps,
        steps_per_epoch=self.steps_per_epoch)
    self.mask = optim.trainable_mask(self._abstract_params(), self.rules)

  # ------------------------------------------------------------------------------------------------ state
  def _init_params(self, k_model, k_prompts) -> dict:
    clip_params = clip_lib.init_params(self.model, k_model)
    prompts = prompts_lib.init_prompts(k_prompts, self.template, self.model.config.text.width,
                                       class_specific=self.layout.class_specific,
                                       token_embedding=prompts_lib.token_embedding(clip_params),
                                       class_specific_negatives=self.layout.class_specific_negatives)
    return {"clip": clip_params, "prompts": prompts}

  def _abstract_params(self):
    return jax.eval_shape(self._init_params, jax.random.key(0), jax.random.key(1))

  def _init(self, rng) -> dict:
    k_model, k_prompts, k_train = jax.random.split(rng, 3)
    params = self._init_params(k_model, k_prompts)
    return {"step": jnp.int32(0), "rng": jax.random.key_data(k_train), "params": params,
            "opt_state": self.tx.init(params),
            "online": detect_step.init_online(self.num_examples, self.config.detect.epochs)}

  def _load(self, state) -> dict:
    clip = self.clip.load(self.model, state["params"]["clip"])
    if self.config.detect.logit_scale:  # phase 1 at a given scale (CLIP's is 100) instead of the checkpoint's
      clip = {**clip, "logit_scale": jnp.full_like(clip["logit_scale"], np.log(self.config.detect.logit_scale))}
    words = prompts_lib.words_init(jax.random.key(0), self.template, clip, class_specific=self.layout.class_specific,
                                   class_specific_negatives=self.layout.class_specific_negatives)
    return {**state, "params": {"clip": clip, "prompts": state["params"]["prompts"] if words is None else words}}

  def init_state(self, rng, checkpointer=None) -> dict:
    """The train state: restored from ``checkpointer`` when it holds one, else born sharded, then the
    pretrained CLIP merged in (deft_jax/train_state.py)."""
    state, _ = train_state.create(self._init, rng, mesh=self.mesh, sharding_rules=self.sharding_rules,
                                  checkpointer=checkpointer, load=self._load,
                                  loaded=self.clip.pretrained_leaves("params/clip"))
    return state

  def state_shardings(self, state):
    return parallel.shardings_for(state, self.mesh, self.sharding_rules)

  # ------------------------------------------------------------------------------------------- functions
  def jit_train_step(self, state):
    lr_fn = next(iter(self.schedules.values()), None)
    fn = detect_step.make_train_step(self.model, self.template, self.tx, self.mask, self.settings, lr_fn)
    return train_state.jit_step(fn, self.state_shardings(state), self.mesh)

  def jit_score(self, params, *, with_embedding: bool = False):
    """One batch's detector outputs, text features included (replicated); a pass over a split uses
    :meth:`jit_text_features` once and :meth:`jit_score_images` per batch instead."""
    fn = lambda p, b: detect_step.score_batch(self.model, p, b, self.template,  # noqa: E731
                                           strict=self.settings.strict, text_chunk=self.settings.text_chunk,
                                           text_prefix_sharing=self.settings.text_prefix_sharing,
                                           with_embedding=with_embedding)
    return jax.jit(fn, in_shardings=(self.state_shardings(params), parallel.batch_sharding(self.mesh)),
                   out_shardings=parallel.replicated(self.mesh))

  def jit_text_features(self, params):
    """``params -> (pos, neg)`` [C, D]: the prompts' text features, replicated; fixed while params are."""
    fn = lambda p: prompts_lib.text_features(self.model, p["clip"], p["prompts"], self.template,  # noqa: E731
                                             chunk=self.settings.text_chunk,
                                             share_prefix=self.settings.text_prefix_sharing)
    return jax.jit(fn, in_shardings=(self.state_shardings(params),), out_shardings=parallel.replicated(self.mesh))

  def jit_score_images(self, params, outputs: detect_step.ScoreOutputs):
    """``(params, text, batch) -> outputs``: the per-example scalars replicated (every process keeps them all),
    the [B, ...] arrays of ``outputs`` split over the devices like the batch, so that no device holds another's
    rows and each process reads back only the rows it fed."""
    def fn(p, t, b):
      out = detect_step.score_images(self.model, p, t, b, strict=self.settings.strict, outputs=outputs)
      return {**out, "local_index": b["index"], "local_valid": b["mask"]}

    shapes = jax.eval_shape(fn, params, jax.eval_shape(self.jit_text_features(params), params),
                            _abstract_batch(self.model.config.vision.image_size))
    rows, rep = parallel.batch_sharding(self.mesh), parallel.replicated(self.mesh)
    out_shardings = {k: rows if k in detect_step.ROW_ARRAYS or k.startswith("local_") else rep for k in shapes}
    return jax.jit(fn, in_shardings=(self.state_shardings(params), rep, rows), out_shardings=out_shardings)


def _abstract_batch(image_size: int, b: int = 1) -> dict:
  return {"image": jax.ShapeDtypeStruct((b, image_size, image_size, 3), jnp.float32),
          "index": jax.ShapeDtypeStruct((b,), jnp.int32), "label": jax.ShapeDtypeStruct((b,), jnp.int32),
          "mask": jax.ShapeDtypeStruct((b,), jnp.bool_)}


def _first_epoch_index(epoch: int) -> int:
  """detect.pseudo_labels_from_epoch (1-based) -> the 0-based epoch index the step compares against."""
  if int(epoch) < 1:
    raise ConfigError(f"detect.pseudo_labels_from_epoch counts epochs from 1 (got {epoch})")
  return int(epoch) - 1
