"""The classifier train step: a pure ``(state, batch) -> (state, metrics)`` function for any Classifier.

State (a plain pytree): ``step``, ``rng`` (uint32 key data), ``params`` (the classifier's trainable tree,
frozen leaves included), ``extra`` (other variable collections, e.g. batch-norm statistics), ``opt_state``,
and, when a setting needs them, per-example arrays indexed by the example index of the training split:

- ``elr``: float32 [N, C], ELR's target memory (loss "elr");
- ``sample_mask``: bool [N], which examples the loss may use (``loss_mask="sample_mask"``: phase 2's selected
  examples when each epoch visits all N, or the GMM baseline's mask, refitted every epoch);
- ``online``: per-example records ``p_label``, ``log_p_label``, ``selected``, ``suggested``, ``margin``
  written as each index is visited (training baselines: after the last epoch they hold the last epoch's online
  selection).

``loss_mask="small_loss"`` selects inside the step: among the batch's valid examples, the (1 - r) fraction with
the smallest cross-entropy is kept, with r ramped as co-teaching does: linspace(0, rate, W)[epoch] during the
W = ``warmup_epochs`` warm-up epochs, ``rate`` afterwards.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from deft_jax import optim
from deft_jax.classify import losses
from deft_jax.errors import ConfigError

ONLINE_FIELDS = {"p_label": jnp.float32, "log_p_label": jnp.float32, "selected": jnp.bool_,
                 "suggested": jnp.int32, "margin": jnp.float32}
# Which valid examples of a batch the loss averages over: all, the small-loss fraction, or those of sample_mask.
LOSS_MASKS = ("none", "small_loss", "sample_mask")


@dataclasses.dataclass(frozen=True)
class StepSettings:
  """Static settings of the step (everything the jitted function closes over)."""

  loss: str = "ce"
  loss_params: tuple = ()  # sorted (name, value) pairs of config.adapt.loss_params
  steps_per_epoch: int = 1
  loss_mask: str = "none"
  small_loss_rate: float = 0.0
  warmup_epochs: int = 0
  record_online: bool = False

  def __post_init__(self):
    losses.check_loss(self.loss)
    if self.loss_mask not in LOSS_MASKS:
      raise ConfigError(f"unknown loss_mask {self.loss_mask!r}; choose one of {LOSS_MASKS}")
    if not 0.0 <= self.small_loss_rate < 1.0:
      raise ConfigError(f"the small-loss rate must lie in [0, 1), got {self.small_loss_rate}")

  @property
  def params(self) -> dict:
    return dict(self.loss_params)


def init_extras(settings: StepSettings, num_examples: int, num_classes: int) -> dict:
  """The per-example entries of the state that ``settings`` needs."""
  out = {}
  if settings.loss == "elr":
    out["elr"] = jnp.zeros((num_examples, num_classes), jnp.float32)
  if settings.loss_mask == "sample_mask":
    out["sample_mask"] = jnp.ones((num_examples,), jnp.bool_)
    out["mask_epoch"] = jnp.int32(-1)
  if settings.record_online:
    out["online"] = {k: jnp.zeros((num_examples,), dt) for k, dt in ONLINE_FIELDS.items()}
  return out


def small_loss_keep(per_example: jax.Array, valid: jax.Array, rate) -> jax.Array:
  """bool [B]: the floor((1 - rate) * n_valid) valid examples with the smallest loss (at least one)."""
  n_valid = valid.sum()
  n_keep = jnp.maximum(jnp.floor((1.0 - rate) * n_valid).astype(jnp.int32), jnp.minimum(n_valid, 1))
  keyed = jnp.where(valid, per_example, jnp.inf)
  rank = jnp.argsort(jnp.argsort(keyed, stable=True), stable=True)
  return valid & (rank < n_keep)


def small_loss_rate(settings: StepSettings, epoch):
  """co-teaching's forget-rate schedule: linspace(0, rate, W)[epoch] for epoch < W, rate afterwards."""
  w = settings.warmup_epochs
  if w <= 0:
    return jnp.float32(settings.small_loss_rate)
  ramp = jnp.minimum(epoch.astype(jnp.float32) / max(w - 1, 1), 1.0)
  return settings.small_loss_rate * ramp


def label_margin(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """logit of the given label minus the largest other logit (> 0 iff the label is the unique argmax)."""
  at = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
  others = jnp.where(jax.nn.one_hot(labels, logits.shape[-1], dtype=bool), -jnp.inf, logits)
  return at - others.max(-1)


def make_train_step(apply_fn: Callable, tx, mask, settings: StepSettings, lr_fn: Optional[Callable] = None):
  """The un-jitted step; the caller jits it with shardings and donation."""
  loss_params = settings.params

  def train_step(state: dict, batch: dict):
    step = state["step"]
    epoch = step // settings.steps_per_epoch
    rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), step)
    valid, index, labels = batch["mask"], batch["index"], batch["label"]

    def loss_fn(params):
      logits, new_extra = apply_fn({"params": params, **state["extra"]}, batch["image"], train=True, rng=rng)
      logits = logits.astype(jnp.float32)
      aux = {"logits": logits, "extra": new_extra}
      targets = None
      if settings.loss == "elr":
        aux["elr"], targets = losses.elr_update(state["elr"], logits, index, valid,
                                                float(loss_params["elr_beta"]))
      per = losses.per_example_loss(settings.loss, logits, labels, loss_params, targets)
      use = valid
      if settings.loss_mask == "sample_mask":
        use = use & state["sample_mask"][index]
      elif settings.loss_mask == "small_loss":
        ce = losses.cross_entropy(jax.lax.stop_gradient(logits), labels)
        use = small_loss_keep(ce, valid, small_loss_rate(settings, epoch))
      aux["used"] = use
      return losses.masked_mean(per, use), aux

    (loss, aux), grads = optim.value_and_grad_trainable(loss_fn, state["params"], mask)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optim.apply_updates_trainable(state["params"], updates, mask)
    new_state = {**state, "step": step + 1, "params": params, "opt_state": opt_state,
                 "extra": {**state["extra"], **aux["extra"]}}
    if "elr" in aux:
      new_state["elr"] = aux["elr"]
    logits = aux["logits"]
    if settings.record_online:
      n = state["online"]["p_label"].shape[0]
      idx = jnp.where(valid, index, n)  # padding rows point past the end and are dropped
      log_p = losses.log_prob_of_label(logits, labels)
      rec = {"p_label": jnp.exp(log_p), "log_p_label": log_p, "selected": aux["used"],
             "suggested": jnp.argmax(logits, -1), "margin": label_margin(logits, labels)}
      new_state["online"] = {k: state["online"][k].at[idx].set(rec[k].astype(dt), mode="drop")
                             for k, dt in ONLINE_FIELDS.items()}
    nvalid = jnp.maximum(valid.sum(), 1)
    metrics = {"loss": loss, "used_fraction": aux["used"].sum() / nvalid,
               "train_accuracy": ((jnp.argmax(logits, -1) == labels) & valid).sum() / nvalid}
    if lr_fn is not None:
      metrics["lr"] = lr_fn(step)
    return new_state, metrics

  return train_step
