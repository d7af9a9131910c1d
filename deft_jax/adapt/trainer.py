"""Training any phase-2 Classifier on a split: optimiser from rules, sharded state, resumable loop.

Used by the phase-2 stage (``adapt/train.py``) and by the training-based selectors (``adapt/selectors.py``).

Budget semantics (``TrainBudget``): ``steps > 0`` fixes the number of optimiser steps, whatever the size of
the training subset (data epochs continue across their boundaries, the last one possibly partial); this is
how runs on subsets of different sizes are compared "at equal steps". ``steps == 0`` trains ``epochs`` full
epochs of the subset, as the reference does. A per-epoch schedule (``schedule.per_epoch``) always counts
data epochs.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np

from deft_jax import loop, optim, parallel
from deft_jax.adapt import step as step_lib
from deft_jax.adapt.classifier import Classifier
from deft_jax.checkpoint import StageCheckpointer
from deft_jax.data import pipeline


@dataclasses.dataclass(frozen=True)
class TrainBudget:
  epochs: int = 10
  steps: int = 0
  batch_size: int = 64

  def total_steps(self, steps_per_epoch: int) -> int:
    total = int(self.steps) if self.steps else int(self.epochs) * steps_per_epoch
    if total <= 0:
      raise ValueError(f"the training budget is empty (epochs={self.epochs}, steps={self.steps})")
    return total


def _as_dict(d) -> dict:
  if d is None:
    return {}
  return d.to_dict() if hasattr(d, "to_dict") else dict(d)


class Trainer:
  """Everything static about one training run: optimiser, trainable mask, step settings, jitted step."""

  def __init__(self, classifier: Classifier, *, optim_cfg, schedule_cfg, settings: step_lib.StepSettings,
               total_steps: int, steps_per_epoch: int, mesh, sharding_rules: Sequence = ()):
    if not classifier.trains:
      raise ValueError(f"classifier {classifier.name!r} has no trainable parameters (no optimiser rules)")
    self.classifier, self.settings, self.mesh = classifier, settings, mesh
    self.sharding_rules = [tuple(r) for r in sharding_rules]
    self.optim_cfg, self.schedule_cfg = _as_dict(optim_cfg), _as_dict(schedule_cfg)
    if classifier.optim:  # a backbone's reference optimiser replaces the configured one
      o = dict(classifier.optim)
      self.schedule_cfg["lr"] = o.pop("lr")
      self.optim_cfg.update(o)
    self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
    params = classifier.variables["params"]
    self.tx, self.schedules = optim.make_optimizer(params, classifier.rules, optim=self.optim_cfg,
                                                   schedule=self.schedule_cfg, total_steps=total_steps,
                                                   steps_per_epoch=steps_per_epoch)
    self.mask = optim.trainable_mask(params, classifier.rules)

  def init_state(self, rng, *, num_examples: int, num_classes: int, sample_mask=None) -> dict:
    """A fresh train state. The classifier's variables move into it (the jitted step donates them), so after
    training read them back with ``variables(state)``. ``sample_mask`` (bool [N]) fixes which examples the
    loss may use (settings.loss_mask == "sample_mask"; all of them when None)."""
    v = self.classifier.variables
    params = v["params"]
    extras = step_lib.init_extras(self.settings, num_examples, num_classes)
    if sample_mask is not None:
      if "sample_mask" not in extras:
        raise ValueError("a sample mask needs StepSettings(loss_mask='sample_mask')")
      extras["sample_mask"] = np.asarray(sample_mask, bool).reshape(num_examples)
    state = {"step": np.int32(0), "rng": jax.random.key_data(rng), "params": params,
             "extra": {k: x for k, x in v.items() if k != "params"},
             "opt_state": self.tx.init(params), **extras}
    return jax.device_put(state, self.state_shardings(state))

  def state_shardings(self, state):
    return parallel.shardings_for(state, self.mesh, self.sharding_rules)

  def jit_train_step(self, state):
    lr_fn = next(iter(self.schedules.values()), None)
    fn = step_lib.make_train_step(self.classifier.apply, self.tx, self.mask, self.settings, lr_fn)
    sh = self.state_shardings(state)
    return jax.jit(fn, in_shardings=(sh, parallel.batch_sharding(self.mesh)),
                   out_shardings=(sh, parallel.replicated(self.mesh)), donate_argnums=(0,))

  def variables(self, state) -> dict:
    """The classifier's variables after training (for evaluation)."""
    return {"params": state["params"], **state["extra"]}


def restore_or_init(trainer: Trainer, rng, ckpt: StageCheckpointer, *, num_examples: int,
                    num_classes: int, sample_mask=None) -> dict:
  state = trainer.init_state(rng, num_examples=num_examples, num_classes=num_classes, sample_mask=sample_mask)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
  restored = ckpt.restore(abstract)
  return state if restored is None else restored


def fit(trainer: Trainer, state, split, *, stage: str, budget: TrainBudget, seed: int, augment: str, mesh, writer,
        checkpointer: Optional[StageCheckpointer], log_every_steps: int = 50, checkpoint_every_steps: int = 200,
        before_epoch: Optional[Callable[[Any, int], Any]] = None,
        on_epoch_end: Optional[Callable[[Any, int], Optional[dict]]] = None) -> Any:
  """Trains ``state`` on ``split`` until the budget is spent (resuming from ``state["step"]``).

  ``before_epoch(state, epoch) -> state`` runs at the start of every data epoch (also a resumed one); it must
  be a deterministic function of the state so that a resumption reproduces it. It needs an epoch budget.
  """
  c = trainer.classifier
  data_kw = dict(image_size=c.image_size, mean=c.mean, std=c.std, eval_resize=c.eval_resize)
  spe = trainer.steps_per_epoch
  total = trainer.total_steps

  def epoch_batches(epoch, start):
    return pipeline.train_batches(split, global_batch_size=budget.batch_size, seed=seed, epoch=epoch,
                                  start_step=start, augment=augment, **data_kw)

  def stream(_, start):  # a step budget: one long "epoch" that runs across data epochs
    e, s = divmod(start, spe)
    while True:
      yield from epoch_batches(e, s)
      e, s = e + 1, 0

  def run(cfg, state, batches, hook):
    return loop.run(cfg, state, trainer_step, batches, mesh=mesh, writer=writer, checkpointer=checkpointer,
                    on_epoch_end=hook)

  trainer_step = trainer.jit_train_step(state)
  if total % spe:
    if before_epoch is not None:
      raise ValueError(f"[{stage}] per-epoch selection needs whole epochs; {total} steps is not a multiple of "
                       f"{spe} steps per epoch")
    return run(loop.LoopConfig(stage, 1, total, log_every_steps, checkpoint_every_steps), state, stream,
               on_epoch_end)
  epochs = total // spe
  if before_epoch is None:
    return run(loop.LoopConfig(stage, epochs, spe, log_every_steps, checkpoint_every_steps), state,
               epoch_batches, on_epoch_end)
  for epoch in range(int(jax.device_get(state["step"])) // spe, epochs):
    state = before_epoch(state, epoch)
    # loop.run goes on from state["step"] to the end of this epoch (the jitted step is shared).
    state = run(loop.LoopConfig(stage, epoch + 1, spe, log_every_steps, checkpoint_every_steps), state,
                epoch_batches, on_epoch_end)
  return state


def steps_per_epoch(split, batch_size: int) -> int:
  if split.num_examples == 0:
    raise ValueError(f"{split.name}: nothing to train on (the selection is empty)")
  return pipeline.steps_per_epoch(split, batch_size)


def make_settings(loss: str, loss_params, *, steps_per_epoch: int, **kw) -> step_lib.StepSettings:
  lp = _as_dict(loss_params)
  return step_lib.StepSettings(loss=loss, loss_params=tuple(sorted(lp.items())), steps_per_epoch=steps_per_epoch,
                               **kw)


def log_budget(stage: str, split, budget: TrainBudget, spe: int, total: int) -> None:
  logging.info("[%s] %d examples, %d steps per epoch, %d steps (%.2f epochs) at batch %d", stage,
               split.num_examples, spe, total, total / spe, budget.batch_size)


