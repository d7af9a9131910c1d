"""Training any Classifier: optimiser from rules, the sharded train state, the jitted step; each use's seed.

No data pipeline here (no TensorFlow): classify/fit.py runs the resumable loop over a split with it, for the
phase-2 stage (adapt/train.py) and the training baselines (deft_jax/baselines/); benchmarks time its step.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from deft_jax import optim, parallel, train_state
from deft_jax.classify import step as classify_step
from deft_jax.classify.classifier import Classifier
from deft_jax.errors import ConfigError


def rng_for(config, stream: int):
  """Independent keys per use (phase 2, each baseline) from the run seed."""
  return jax.random.fold_in(jax.random.key(int(config.seed)), stream)


@dataclasses.dataclass(frozen=True)
class TrainBudget:
  """How long to train: ``steps`` optimiser steps when > 0, else ``epochs`` epochs, at ``batch_size``."""

  epochs: int = 10
  steps: int = 0
  batch_size: int = 64

  def total_steps(self, steps_per_epoch: int) -> int:
    total = int(self.steps) if self.steps else int(self.epochs) * steps_per_epoch
    if total <= 0:
      raise ConfigError(f"the training budget is empty (epochs={self.epochs}, steps={self.steps})")
    return total


def _as_dict(d) -> dict:
  if d is None:
    return {}
  return d.to_dict() if hasattr(d, "to_dict") else dict(d)


class Trainer:
  """Everything static about one training run: optimiser, trainable mask, step settings, jitted step."""

  def __init__(self, classifier: Classifier, *, optim_cfg, schedule_cfg, settings: classify_step.StepSettings,
               total_steps: int, steps_per_epoch: int, mesh, sharding_rules: Sequence = ()):
    if not classifier.trains:
      raise ConfigError(f"classifier {classifier.name!r} has no trainable parameters (no optimiser rules)")
    self.classifier, self.settings, self.mesh = classifier, settings, mesh
    self.sharding_rules = [tuple(r) for r in sharding_rules]
    self.optim_cfg, self.schedule_cfg = _as_dict(optim_cfg), _as_dict(schedule_cfg)
    if classifier.optim:  # a backbone's reference optimiser replaces the configured one
      o = dict(classifier.optim)
      self.schedule_cfg["lr"] = o.pop("lr")
      self.optim_cfg.update(o)
    self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
    params = jax.eval_shape(classifier.init)["params"]  # the optimiser needs shapes and paths only
    self.tx, self.schedules = optim.make_optimizer(params, classifier.rules, optim=self.optim_cfg,
                                                   schedule=self.schedule_cfg, total_steps=total_steps,
                                                   steps_per_epoch=steps_per_epoch)
    self.mask = optim.trainable_mask(params, classifier.rules)

  def init_fn(self, num_examples: int, num_classes: int, sample_mask=None):
    """``rng -> state``: the classifier's random variables, the optimiser state and the per-example entries
    the settings need (``sample_mask``, bool [N], fixes which examples the loss may use when
    settings.loss_mask == "sample_mask"; all of them when None)."""
    if sample_mask is not None and self.settings.loss_mask != "sample_mask":
      raise ValueError("a sample mask needs StepSettings(loss_mask='sample_mask')")

    def init(rng):
      v = self.classifier.init()
      extras = classify_step.init_extras(self.settings, num_examples, num_classes)
      if sample_mask is not None:
        extras["sample_mask"] = jnp.asarray(np.asarray(sample_mask, bool).reshape(num_examples))
      return {"step": jnp.int32(0), "rng": jax.random.key_data(rng), "params": v["params"],
              "extra": {k: x for k, x in v.items() if k != "params"}, "opt_state": self.tx.init(v["params"]),
              **extras}

    return init

  def load_fn(self):
    """``state -> state`` with the classifier's pretrained variables merged in (None: nothing to load)."""
    if self.classifier.load is None:
      return None

    def load(state):
      v = self.classifier.load(self.variables(state))
      return {**state, "params": v["params"], "extra": {k: x for k, x in v.items() if k != "params"}}

    return load

  def loaded_fn(self):
    """The state's leaves that the classifier's load replaces (its variables live under "params" and
    "extra"), or None."""
    of_variables = self.classifier.loaded
    if self.classifier.load is None or of_variables is None:
      return None

    def loaded(path: str) -> bool:
      if path.startswith("params/"):
        return of_variables(path)
      return path.startswith("extra/") and of_variables(path[len("extra/"):])

    return loaded

  def init_state(self, rng, *, num_examples: int, num_classes: int, sample_mask=None, checkpointer=None) -> dict:
    """The train state: restored from ``checkpointer`` when it holds one, else born sharded and loaded
    (deft_jax/train_state.py). After training read the classifier's variables with ``variables(state)``."""
    state, self.shardings = train_state.create(
        self.init_fn(num_examples, num_classes, sample_mask), rng, mesh=self.mesh,
        sharding_rules=self.sharding_rules, checkpointer=checkpointer, load=self.load_fn(), loaded=self.loaded_fn())
    return state

  def jit_train_step(self, state):
    lr_fn = next(iter(self.schedules.values()), None)
    fn = classify_step.make_train_step(self.classifier.apply, self.tx, self.mask, self.settings, lr_fn)
    return train_state.jit_step(fn, self.state_shardings(state), self.mesh)

  def state_shardings(self, state):
    return parallel.shardings_for(state, self.mesh, self.sharding_rules)

  def variables(self, state) -> dict:
    """The classifier's variables after training (for evaluation)."""
    return {"params": state["params"], **state["extra"]}


def make_settings(loss: str, loss_params, *, steps_per_epoch: int, **kw) -> classify_step.StepSettings:
  lp = _as_dict(loss_params)
  return classify_step.StepSettings(loss=loss, loss_params=tuple(sorted(lp.items())), steps_per_epoch=steps_per_epoch,
                               **kw)
