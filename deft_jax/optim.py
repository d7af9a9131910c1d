"""The one place that builds optimisers.

Freezing is configuration, not code: ``rules`` is a list of ``(regex, value)`` pairs matched (``re.fullmatch``,
first match wins) against '/'-joined parameter paths. ``value`` is

- ``None``: the parameter is frozen: it gets ``optax.set_to_zero()`` and carries no optimiser state;
- a number: trained with the base schedule times this multiplier;
- a dict: trained with the base schedule overridden by these fields (e.g. ``{"lr": 0.1}``).

Every parameter must match some rule; the error lists those that do not.

Optimiser fields (``optim``): ``name`` (sgd | adamw | adam), ``momentum``, ``nesterov``, ``weight_decay``
(coupled L2 added to the gradient for SGD, as ``torch.optim.SGD``; decoupled for AdamW, as
``torch.optim.AdamW``), ``b1``, ``b2``, ``eps``, ``grad_clip_norm``.
Schedule fields (``schedule``): ``lr``, ``decay`` (cosine | constant | linear), ``warmup_steps``,
``per_epoch`` (True: the lr changes once per epoch, like a PyTorch scheduler stepped per epoch),
``min_lr``.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

from deft_jax.tree import get, tree_paths
from deft_jax.errors import ConfigError

Rule = tuple[str, Any]


def make_schedule(schedule: Mapping[str, Any], *, total_steps: int,
                  steps_per_epoch: int = 1) -> Callable[[jax.Array], jax.Array]:
  """Learning rate as a function of the optimiser step."""
  lr = float(get(schedule, "lr", 0.0))
  decay = get(schedule, "decay", "cosine")
  warmup = int(get(schedule, "warmup_steps", 0))
  min_lr = float(get(schedule, "min_lr", 0.0))
  per_epoch = bool(get(schedule, "per_epoch", False))
  if decay not in ("cosine", "constant", "linear"):
    raise ConfigError(f"unknown schedule decay {decay!r}; choose cosine, constant or linear")
  total_epochs = max(1, math.ceil(total_steps / max(steps_per_epoch, 1)))

  def fn(step):
    step = jnp.asarray(step, jnp.float32)
    if per_epoch:  # torch's CosineAnnealingLR(T_max=epochs) stepped once per epoch
      frac = jnp.floor(step / steps_per_epoch) / total_epochs
    else:
      frac = jnp.clip((step - warmup) / max(total_steps - warmup, 1), 0.0, 1.0)
    if decay == "cosine":
      value = min_lr + (lr - min_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
    elif decay == "linear":
      value = lr + (min_lr - lr) * frac
    else:
      value = jnp.full_like(frac, lr)
    if warmup:
      value = jnp.where(step < warmup, lr * (step + 1) / warmup, value)
    return value

  return fn


def _base_tx(optim: Mapping[str, Any], lr_fn) -> optax.GradientTransformation:
  name = get(optim, "name", "sgd")
  wd = float(get(optim, "weight_decay", 0.0))
  if name == "sgd":
    momentum = float(get(optim, "momentum", 0.0))
    parts = [optax.add_decayed_weights(wd)] if wd else []
    parts.append(optax.sgd(lr_fn, momentum=momentum or None, nesterov=bool(get(optim, "nesterov", False))))
    return optax.chain(*parts)
  if name in ("adamw", "adam"):
    kw = dict(b1=float(get(optim, "b1", 0.9)), b2=float(get(optim, "b2", 0.999)),
              eps=float(get(optim, "eps", 1e-8)))
    if name == "adamw":
      return optax.adamw(lr_fn, weight_decay=wd, **kw)
    parts = [optax.add_decayed_weights(wd)] if wd else []
    return optax.chain(*parts, optax.adam(lr_fn, **kw))
  raise ConfigError(f"unknown optimizer {name!r}; choose sgd, adamw or adam")


def param_labels(params, rules: Sequence[Rule]) -> tuple[Any, list[Any]]:
  """Per-leaf index into ``rules`` of the first matching rule; raises listing unmatched parameters."""
  paths = tree_paths(params)
  idx, unmatched = [], []
  for p in paths:
    for i, (pattern, _) in enumerate(rules):
      if re.fullmatch(pattern, p):
        idx.append(i)
        break
    else:
      unmatched.append(p)
  if unmatched:
    shown = "\n  ".join(unmatched[:30])
    raise ConfigError(f"{len(unmatched)} parameter(s) match no optimiser rule (add a rule, e.g. ('.*', None) "
                     f"to freeze the rest):\n  {shown}")
  treedef = jax.tree_util.tree_structure(params)
  return jax.tree_util.tree_unflatten(treedef, idx), [v for _, v in rules]


def trainable_mask(params, rules: Sequence[Rule]):
  """Pytree of bools: True where the parameter trains."""
  labels, values = param_labels(params, rules)
  return jax.tree.map(lambda i: values[i] is not None, labels)


def make_optimizer(
    params,
    rules: Sequence[Rule],
    *,
    optim: Mapping[str, Any],
    schedule: Mapping[str, Any],
    total_steps: int,
    steps_per_epoch: int = 1,
) -> tuple[optax.GradientTransformation, dict[str, Callable]]:
  """Builds the optimiser for ``params`` (concrete or abstract) from freezing / lr rules.

  Returns ``(tx, schedules)`` where ``schedules`` maps a group name (``g<i>`` for rule i) to its lr
  function, for logging.
  """
  rules = [tuple(r) for r in rules]
  labels, values = param_labels(params, rules)
  used = sorted(set(jax.tree_util.tree_leaves(labels)))
  transforms, schedules = {}, {}
  for i in used:
    value = values[i]
    group = f"g{i}"
    if value is None:
      transforms[group] = optax.set_to_zero()
      continue
    sched = dict(schedule)
    if isinstance(value, (int, float)):
      sched["lr"] = float(sched.get("lr", 0.0)) * float(value)
    elif isinstance(value, Mapping) or hasattr(value, "items"):
      sched.update(dict(value))
    else:
      raise ConfigError(f"optimiser rule {rules[i][0]!r}: value must be None, a number or a dict, got {value!r}")
    fn = make_schedule(sched, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    schedules[group] = fn
    transforms[group] = _base_tx(optim, fn)
  tx = optax.partition(transforms, jax.tree.map(lambda i: f"g{i}", labels))
  clip = get(optim, "grad_clip_norm", None)
  if clip:
    # Clipping sees only trainable gradients: frozen ones are zeroed first so they cannot count.
    mask = jax.tree.map(lambda i: values[i] is not None, labels)
    tx = optax.chain(_zero_frozen(mask), optax.clip_by_global_norm(float(clip)), tx)
  return tx, schedules


def _zero_frozen(mask) -> optax.GradientTransformation:
  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, m: u if m else jnp.zeros_like(u), updates, mask), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def count_state_leaves(opt_state) -> int:
  """Number of array leaves in an optimiser state (masked-out placeholders do not count)."""
  return len([x for x in jax.tree_util.tree_leaves(opt_state) if hasattr(x, "shape") and x.ndim > 0])


def value_and_grad_trainable(loss_fn: Callable, params, mask, *, has_aux: bool = True):
  """``jax.value_and_grad`` with respect to the trainable leaves only.

  Frozen leaves enter ``loss_fn`` as constants, so no weight gradient is ever formed for them (less work
  and memory than differentiating everything and zeroing afterwards); their entries in the returned
  gradient tree are zeros, which ``optax.set_to_zero()`` ignores.
  """
  leaves, treedef = jax.tree_util.tree_flatten(params)
  flags = jax.tree_util.tree_leaves(mask)
  if len(flags) != len(leaves):
    raise ValueError(f"trainable mask has {len(flags)} leaves, params have {len(leaves)}")

  def f(train_leaves):
    it = iter(train_leaves)
    full = [next(it) if m else jax.lax.stop_gradient(x) for x, m in zip(leaves, flags)]
    return loss_fn(jax.tree_util.tree_unflatten(treedef, full))

  value, g = jax.value_and_grad(f, has_aux=has_aux)([x for x, m in zip(leaves, flags) if m])
  it = iter(g)
  grads = [next(it) if m else jnp.zeros_like(x) for x, m in zip(leaves, flags)]
  return value, jax.tree_util.tree_unflatten(treedef, grads)


def apply_updates_trainable(params, updates, mask):
  """``optax.apply_updates`` on trainable leaves; frozen leaves are passed through untouched (bit-identical,
  and with a donated state XLA simply forwards their buffers)."""
  return jax.tree.map(lambda p, u, m: optax.apply_updates(p, u) if m else p, params, updates, mask)
