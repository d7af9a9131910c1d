"""Classification losses: CE, and the robust losses the paper trains on all noisy labels with (phase 1 uses CE
and SCE from here too).

Every function returns per-example values ``[B]``; the train step reduces them with the masked mean
``sum(m * x) / max(sum(m), 1)`` (padding and unselected rows excluded, an empty batch gives 0, not NaN).

- CE:  -log p_y.
- GCE (Zhang & Sabuncu, 2018):  (1 - p_y^q) / q; q -> 0 recovers CE, q = 1 is MAE.
- SCE (Wang et al., 2019):  alpha * CE + beta * RCE, RCE = -sum_k p_k log onehot_k with log(0) clipped to
  log(1e-4), i.e. -log(1e-4) * (1 - p_y).
- ELR (Liu et al., 2020):  CE + lambda * log(1 - <t_i, p_i>), with a per-example target memory
  t_i <- beta * t_i + (1 - beta) * p_i (p_i without gradient), updated before the loss is taken, so the
  regulariser pulls p_i towards the running average of its own earlier predictions. The memory is kept by
  example index in the train state (``elr_update``).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from deft_jax.errors import ConfigError

LOSSES = ("ce", "gce", "sce", "elr")
RCE_LOG_ZERO = -4.0 * jnp.log(10.0)  # log(0) clipped to log(1e-4) in the reverse cross-entropy
# ELR clamps probabilities away from 0 and 1 so that log(1 - <t, p>) stays finite when p collapses to a
# one-hot that its memory agrees with.
ELR_P_CLIP = 1e-4

__all__ = ["LOSSES", "cross_entropy", "generalized_cross_entropy", "symmetric_cross_entropy", "elr_update",
           "elr_loss", "per_example_loss", "masked_mean", "check_loss", "log_prob_of_label", "reverse_cross_entropy"]


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  mask = mask.astype(x.dtype)
  return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example cross-entropy [B]."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]


def log_prob_of_label(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """log softmax(logits)[label] [B], written as -softplus(logsumexp_{k != y}(z_k - z_y)) so that it does not
  round to 0 where the label is confidently right (log_softmax does, once p_y > 1 - 6e-8 in float32): a
  ranking score free of ties among confident examples."""
  z = logits.astype(jnp.float32)
  rel = z - jnp.take_along_axis(z, labels[:, None], axis=-1)
  others = jnp.where(jax.nn.one_hot(labels, z.shape[-1], dtype=bool), -jnp.inf, rel)
  return -jax.nn.softplus(jax.nn.logsumexp(others, axis=-1))


def reverse_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """RCE = -sum_k p_k log(onehot_k) with log(0) clipped to log(1e-4): equals -log(1e-4) * (1 - p_y)."""
  p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  p_y = jnp.take_along_axis(p, labels[:, None], axis=-1)[:, 0]
  return -RCE_LOG_ZERO * (1.0 - p_y)


def generalized_cross_entropy(logits: jax.Array, labels: jax.Array, q: float = 0.7) -> jax.Array:
  if not 0.0 < q <= 1.0:
    raise ConfigError(f"GCE q must lie in (0, 1], got {q}")
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  logp_y = jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
  # p^q = exp(q log p) keeps the gradient finite where p_y underflows.
  return (1.0 - jnp.exp(q * logp_y)) / q


def symmetric_cross_entropy(logits: jax.Array, labels: jax.Array, alpha: float = 1.0,
                            beta: float = 1.0) -> jax.Array:
  return alpha * cross_entropy(logits, labels) + beta * reverse_cross_entropy(logits, labels)


def elr_probabilities(logits: jax.Array) -> jax.Array:
  p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.clip(p, ELR_P_CLIP, 1.0 - ELR_P_CLIP)


def elr_update(targets: jax.Array, logits: jax.Array, index: jax.Array, valid: jax.Array,
               beta: float) -> tuple[jax.Array, jax.Array]:
  """(new memory [N, C], the batch's updated targets [B, C]).

  Only rows ``index[valid]`` of the memory change; padding rows are scattered past the end and dropped.
  """
  p = jax.lax.stop_gradient(elr_probabilities(logits))
  p = p / p.sum(-1, keepdims=True)
  t = beta * targets[index] + (1.0 - beta) * p
  n = targets.shape[0]
  memory = targets.at[jnp.where(valid, index, n)].set(t, mode="drop")
  return memory, t


def elr_loss(logits: jax.Array, labels: jax.Array, batch_targets: jax.Array, lam: float) -> jax.Array:
  """CE + lambda * log(1 - <t_i, p_i>) per example, with the batch's (already updated) targets."""
  p = elr_probabilities(logits)
  inner = jnp.sum(jax.lax.stop_gradient(batch_targets) * p, axis=-1)
  return cross_entropy(logits, labels) + lam * jnp.log(1.0 - inner)


def check_loss(name: str) -> None:
  if name not in LOSSES:
    raise ConfigError(f"unknown adapt.loss {name!r}; choose one of {LOSSES}")


def per_example_loss(name: str, logits: jax.Array, labels: jax.Array, params: Mapping[str, Any],
                     elr_targets: jax.Array | None = None) -> jax.Array:
  """The per-example loss ``name`` with hyper-parameters from ``params`` (config.adapt.loss_params)."""
  check_loss(name)
  if name == "ce":
    return cross_entropy(logits, labels)
  if name == "gce":
    return generalized_cross_entropy(logits, labels, float(params["gce_q"]))
  if name == "sce":
    return symmetric_cross_entropy(logits, labels, float(params["sce_alpha"]), float(params["sce_beta"]))
  if elr_targets is None:
    raise ValueError("the ELR loss needs the batch's targets from elr_update")
  return elr_loss(logits, labels, elr_targets, float(params["elr_lambda"]))
