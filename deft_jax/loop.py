"""The epoch/step loop shared by every training stage (pretrain, detect, adapt).

A stage supplies a jitted pure step ``(state, batch) -> (state, metrics)``, a batch source
``batches(epoch, start_step)`` and optional epoch-end hooks; the loop supplies resumption from the latest
checkpoint, global batches on the mesh, periodic TensorBoard scalars, progress lines with steps/s and ETA,
and periodic asynchronous checkpoints. The state is a plain pytree whose ``"step"`` entry counts optimiser
steps; epoch and position in the epoch are derived from it, so a restored state tells the loop exactly
where to continue and the data iterator where to skip to.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from typing import Any, Callable, Iterator, Optional

import jax
import numpy as np
from clu import periodic_actions

from deft_jax import parallel
from deft_jax.checkpoint import StageCheckpointer


@dataclasses.dataclass
class LoopConfig:
  stage: str
  num_epochs: int
  steps_per_epoch: int
  log_every_steps: int = 50
  checkpoint_every_steps: int = 200

  @property
  def total_steps(self) -> int:
    return self.num_epochs * self.steps_per_epoch


def _fmt_secs(s: float) -> str:
  s = int(max(s, 0))
  return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def run(
    cfg: LoopConfig,
    state: Any,
    step_fn: Callable[[Any, dict], tuple[Any, dict]],
    batches: Callable[[int, int], Iterator[dict]],
    *,
    mesh,
    writer,
    checkpointer: Optional[StageCheckpointer] = None,
    on_epoch_end: Optional[Callable[[Any, int], Optional[dict]]] = None,
) -> Any:
  """Runs ``step_fn`` until ``cfg.total_steps`` optimiser steps are done; returns the final state.

  ``on_epoch_end(state, epoch)`` may return scalars, written to TensorBoard at the epoch's last step.
  """
  total = cfg.total_steps
  step = int(jax.device_get(state["step"]))
  if step >= total:
    logging.info("[%s] already complete (%d steps)", cfg.stage, step)
    return state
  if step:
    logging.info("[%s] resuming at step %d of %d (epoch %d)", cfg.stage, step, total, step // cfg.steps_per_epoch)
  progress = periodic_actions.ReportProgress(num_train_steps=total, writer=writer, every_secs=None,
                                             every_steps=cfg.log_every_steps)
  pending: list[dict] = []
  last_saved = None
  t_last, step_last = time.monotonic(), step
  while step < total:
    epoch, in_epoch = divmod(step, cfg.steps_per_epoch)
    it = prefetch_to_devices(batches(epoch, in_epoch), mesh)
    for _ in range(in_epoch, cfg.steps_per_epoch):
      try:
        batch = next(it)
      except StopIteration:
        raise RuntimeError(f"[{cfg.stage}] the data iterator of epoch {epoch} ended before its "
                           f"{cfg.steps_per_epoch} steps") from None
      state, metrics = step_fn(state, batch)
      pending.append(metrics)
      step += 1
      progress(step)
      if checkpointer is not None and checkpointer.save(step, state):
        last_saved = step
      if step % cfg.log_every_steps == 0 or step == total:
        scalars = _mean_metrics(pending)
        pending = []
        writer.write_scalars(step, {f"{cfg.stage}/{k}": v for k, v in scalars.items()})
        now = time.monotonic()
        rate = (step - step_last) / max(now - t_last, 1e-9)
        t_last, step_last = now, step
        logging.info("[%s] epoch %d/%d step %d/%d  %s  %.2f steps/s  ETA %s", cfg.stage, epoch + 1,
                     cfg.num_epochs, step, total, " ".join(f"{k}={v:.4g}" for k, v in scalars.items()),
                     rate, _fmt_secs((total - step) / max(rate, 1e-9)))
    if on_epoch_end is not None:
      extra = on_epoch_end(state, epoch)
      if extra:
        writer.write_scalars(step, {f"{cfg.stage}/{k}": v for k, v in extra.items()})
        logging.info("[%s] end of epoch %d: %s", cfg.stage, epoch + 1,
                     " ".join(f"{k}={v:.4g}" for k, v in extra.items()))
  if checkpointer is not None:
    if last_saved != step:
      checkpointer.save(step, state, force=True)
    checkpointer.wait()
  writer.flush()
  return state


def prefetch_to_devices(batches: Iterator[dict], mesh, size: int = 2) -> Iterator[dict]:
  """Global device batches, ``size`` transfers ahead: the host-to-device copy of the next batches
  (asynchronous in JAX) overlaps with the running step."""
  queue: collections.deque = collections.deque()
  for local in batches:
    queue.append(parallel.shard_batch(local, mesh))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def _mean_metrics(pending: list[dict]) -> dict[str, float]:
  if not pending:
    return {}
  host = jax.device_get(pending)  # one host sync per logging interval
  out = {}
  for k in host[0]:
    vals = np.asarray([m[k] for m in host], np.float64)
    out[k] = float(vals.mean())
  return out
