"""The epoch/step loop shared by every training stage (pretrain, detect, adapt).

A stage supplies a jitted pure step ``(state, batch) -> (state, metrics)``, a batch source
``batches(epoch, start_step)`` and optional epoch-end hooks; the loop supplies resumption from the latest
checkpoint, global batches on the mesh, periodic TensorBoard scalars, progress lines with steps/s and ETA,
periodic asynchronous checkpoints, and a guard against divergence: a non-finite loss stops the stage with
:class:`~deft_jax.errors.DivergedError` before anything is written from that state (no checkpoint, no
epoch-end output), so the last good checkpoint stays the latest. Losses are checked at every logging step,
before every checkpoint and epoch end (no extra host sync), and the whole state's finiteness before every
checkpoint and at the end (a finite last loss can precede a broken update). The state is a plain pytree
whose ``"step"`` entry counts optimiser steps; epoch and position in the epoch are derived from it, so a
restored state tells the loop exactly where to continue and the data iterator where to skip to.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from typing import Any, Callable, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
from clu import periodic_actions

from deft_jax import parallel
from deft_jax.checkpoint import StageCheckpointer
from deft_jax.errors import DivergedError
from deft_jax.parallel import faults


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

  @classmethod
  def of(cls, stage: str, num_epochs: int, steps_per_epoch: int, config) -> "LoopConfig":
    """A stage's loop with the run config's logging and checkpoint intervals."""
    return cls(stage, int(num_epochs), int(steps_per_epoch), int(config.log_every_steps),
               int(config.checkpoint_every_steps))


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
  unchecked: list[tuple[int, Any]] = []  # (step, loss) not yet seen to be finite
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
      if "loss" in metrics:
        unchecked.append((step, metrics["loss"]))
      progress(step)
      saving = checkpointer is not None and checkpointer.should_save(step)
      logging_now = step % cfg.log_every_steps == 0 or step == total
      if saving or logging_now or step % cfg.steps_per_epoch == 0:
        _check_finite(cfg, unchecked, checkpointer)
        unchecked = []
      if saving or step == total:  # the last update may have broken the parameters after a finite loss
        _check_state_finite(cfg, state, step, checkpointer)
      if saving and checkpointer.save(step, state):
        last_saved = step
      if logging_now:
        scalars = _mean_metrics(pending)
        pending = []
        writer.write_scalars(step, {f"{cfg.stage}/{k}": v for k, v in scalars.items()})
        now = time.monotonic()
        rate = (step - step_last) / max(now - t_last, 1e-9)
        t_last, step_last = now, step
        logging.info("[%s] epoch %d/%d step %d/%d  %s  %.2f steps/s  ETA %s", cfg.stage, epoch + 1,
                     cfg.num_epochs, step, total, " ".join(f"{k}={v:.4g}" for k, v in scalars.items()),
                     rate, _fmt_secs((total - step) / max(rate, 1e-9)))
      if step % cfg.steps_per_epoch:  # an epoch's last step: after its hook, below
        last_saved = _stop_if_preempted(cfg, state, step, checkpointer, writer, unchecked, last_saved)
    if on_epoch_end is not None:
      extra = on_epoch_end(state, epoch)
      if extra:
        writer.write_scalars(step, {f"{cfg.stage}/{k}": v for k, v in extra.items()})
        logging.info("[%s] end of epoch %d: %s", cfg.stage, epoch + 1,
                     " ".join(f"{k}={v:.4g}" for k, v in extra.items()))
    last_saved = _stop_if_preempted(cfg, state, step, checkpointer, writer, unchecked, last_saved)
  if checkpointer is not None:
    if last_saved != step:
      checkpointer.save(step, state, force=True)
    checkpointer.wait()
  writer.flush()
  return state


def _stop_if_preempted(cfg: LoopConfig, state, step: int, checkpointer: Optional[StageCheckpointer], writer,
                       unchecked: list, last_saved: Optional[int]) -> Optional[int]:
  """After ``step`` (every process calls it at every step, in the same order): when any process of the run got
  SIGTERM (faults.preemption_requested), every process saves this step's checkpoint and raises
  faults.Preempted. Nothing to do at the last step (the stage saves it anyway) or without a checkpointer."""
  if checkpointer is None or step >= cfg.total_steps or not faults.preemption_requested(step):
    return last_saved
  _check_finite(cfg, unchecked, checkpointer)
  unchecked.clear()
  _check_state_finite(cfg, state, step, checkpointer)
  if last_saved != step:
    checkpointer.save(step, state, force=True)
  checkpointer.wait()
  parallel.sync_processes(f"[{cfg.stage}] saved step {step} before stopping")  # no process exits before all saved
  writer.flush()
  logging.warning("[%s] preempted: saved the checkpoint of step %d of %d in %s", cfg.stage, step, cfg.total_steps,
                  checkpointer.directory)
  raise faults.Preempted(cfg.stage, step, cfg.total_steps)


def _check_finite(cfg: LoopConfig, unchecked: list[tuple[int, Any]],
                  checkpointer: Optional[StageCheckpointer]) -> None:
  """Raises DivergedError at the first non-finite loss among ``unchecked`` (one host sync for all)."""
  if not unchecked:
    return
  losses = np.asarray(jax.device_get([loss for _, loss in unchecked]), np.float64)
  bad = np.flatnonzero(~np.isfinite(losses))
  if bad.size:
    _diverged(cfg, unchecked[int(bad[0])][0], f"the loss is {losses[bad[0]]}", checkpointer)


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [x for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.bool_(True)


def _check_state_finite(cfg: LoopConfig, state, step: int, checkpointer: Optional[StageCheckpointer]) -> None:
  """Before a checkpoint and at the end: every floating-point leaf of the state (parameters, optimiser state)
  is finite, else DivergedError; so no checkpoint and no stage output ever comes from a broken state."""
  if not bool(jax.device_get(_all_finite(state))):
    _diverged(cfg, step, "the parameters are no longer finite", checkpointer)


def _diverged(cfg: LoopConfig, step: int, what: str, checkpointer: Optional[StageCheckpointer]):
  kept = "no checkpoint of this stage exists yet"
  if checkpointer is not None:
    checkpointer.wait()  # an asynchronous save of an earlier, finite state completes
    latest = checkpointer.latest_step()
    if latest is not None:
      kept = f"the last good checkpoint (step {latest}) is kept in {checkpointer.directory}"
  section = cfg.stage.split("/")[0]  # "baselines/small_loss" trains with the baselines section
  raise DivergedError(
      f"[{cfg.stage}] {what} at step {step} of {cfg.total_steps} (epoch "
      f"{(step - 1) // cfg.steps_per_epoch + 1}): training diverged. Nothing was written from this state; "
      f"{kept}. Lower the learning rate ({section}.schedule.lr) or set {section}.optim.grad_clip_norm, "
      "and start again in a new --workdir.")


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
