"""The resumable training loop of a Trainer over a split (the data pipeline meets the train state here).

Budget semantics (``trainer.TrainBudget``): ``steps > 0`` fixes the number of optimiser steps, whatever the size
of the training subset (data epochs continue across their boundaries, the last one possibly partial); this is
how runs on subsets of different sizes are compared "at equal steps". ``steps == 0`` trains ``epochs`` full
epochs, as the reference does. A per-epoch schedule (``schedule.per_epoch``) always counts data epochs.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import jax

from deft_jax import loop
from deft_jax.classify.trainer import TrainBudget, Trainer
from deft_jax.checkpoint import StageCheckpointer
from deft_jax.data import pipeline
from deft_jax.errors import ConfigError


def fit(trainer: Trainer, state, split, *, stage: str, budget: TrainBudget, seed: int, augment: str, mesh, writer,
        checkpointer: Optional[StageCheckpointer], log_every_steps: int = 50, checkpoint_every_steps: int = 200,
        before_epoch: Optional[Callable[[Any, int], Any]] = None,
        on_epoch_end: Optional[Callable[[Any, int], Optional[dict]]] = None) -> Any:
  """Trains ``state`` on ``split`` until the budget is spent (resuming from ``state["step"]``).

  ``before_epoch(state, epoch) -> state`` runs at the start of every data epoch (also a resumed one); it must
  be a deterministic function of the state so that a resumption reproduces it. It needs an epoch budget.
  """
  data_kw = trainer.classifier.inputs.pipeline_kw()
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
      raise ConfigError(f"[{stage}] per-epoch selection needs whole epochs; {total} steps is not a multiple of "
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
    raise ConfigError(f"{split.name}: nothing to train on (the selection is empty)")
  return pipeline.steps_per_epoch(split, batch_size)


def log_budget(stage: str, split, budget: TrainBudget, spe: int, total: int) -> None:
  logging.info("[%s] %d examples, %d steps per epoch, %d steps (%.2f epochs) at batch %d", stage,
               split.num_examples, spe, total, total / spe, budget.batch_size)
