"""DEFT's phase-1 losses: clean-sample selection by dual prompts, L_cls and L_neg.

Notation (per batch of B images, C classes): ``s_pos[b, k]`` and ``s_neg[b, k]`` are the scaled cosine
similarities of image b to the positive and negative prompt of class k. Per class a two-way softmax gives

    p_yes[b, k] = e^{s_pos} / (e^{s_pos} + e^{s_neg}) = sigmoid(s_pos - s_neg),   p_no = 1 - p_yes,

where the sigmoid form is the same quantity computed stably. Stop-gradients (as the method states):
``s_pos`` enters p_yes as a constant, and ``s_neg`` is computed by the caller from stop-gradient image
features, so L_neg trains the negative prompts alone; L_cls trains the positive prompts and PEFT.

All means are masked means ``sum(m * x) / max(sum(m), 1)`` over static shapes: padding examples (``valid``
False) never count, and a batch with no selected sample gives L_cls = 0 instead of NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from deft_jax.classify.losses import cross_entropy, masked_mean, symmetric_cross_entropy

P_MIN = 1e-5  # probabilities are clamped to [1e-5, 1] before the log


def strict_margin(s_pos: jax.Array, s_neg: jax.Array, labels: jax.Array) -> jax.Array:
  """min(m_y, m_y - max_{k != y} m_k) [B] with m_k = s_pos_k - s_neg_k: positive exactly where the strict rule
  selects (p_yes_y > 0.5 and y = argmax_k p_yes_k, p_yes being monotone in m), and a ranking score by how far
  the given label is from losing either test."""
  m = s_pos.astype(jnp.float32) - s_neg.astype(jnp.float32)
  m_y = jnp.take_along_axis(m, labels[:, None], axis=-1)[:, 0]
  others = jnp.where(jax.nn.one_hot(labels, m.shape[-1], dtype=bool), -jnp.inf, m)
  return jnp.minimum(m_y, m_y - jnp.max(others, axis=-1))


def p_yes(s_pos: jax.Array, s_neg: jax.Array) -> jax.Array:
  """[B, C] probability that each class's positive prompt beats its negative prompt (s_pos held constant)."""
  return jax.nn.sigmoid(jax.lax.stop_gradient(s_pos).astype(jnp.float32) - s_neg.astype(jnp.float32))


def select_clean(py: jax.Array, labels: jax.Array, *, strict: bool) -> tuple[jax.Array, jax.Array]:
  """(p_clean [B], selected [B]): p_clean = p_yes at the given label; selected when > 0.5.

  ``strict`` (real-world datasets) also requires the given label to have the largest p_yes of all classes.
  """
  p_clean = jnp.take_along_axis(py, labels[:, None], axis=-1)[:, 0]
  selected = p_clean > 0.5
  if strict:
    selected = selected & (jnp.argmax(py, axis=-1) == labels)
  return p_clean, jax.lax.stop_gradient(selected)


NEGATIVES = ("uniform", "hard", "mixed")


def complementary_labels(rng, labels: jax.Array, num_classes: int, *, s_pos=None,
                         negatives: str = "uniform") -> jax.Array:
  """A class other than each given label: drawn uniformly from the C - 1 others (``negatives="uniform"``, the
  method's), from the positive prompts' softmax over the others (``"hard"``: the classes the image looks like
  most often, so the negative prompts learn look-alike classes), or from either with probability 1/2 each
  (``"mixed"``). ``s_pos`` [B, C]: the positive logits (the hard draw reads them as constants)."""
  if negatives == "uniform":  # the rng used whole, as before the other draws existed
    return (labels + jax.random.randint(rng, labels.shape, 1, num_classes)) % num_classes
  if negatives not in NEGATIVES:
    raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
  k_uniform, k_hard, k_mix = jax.random.split(rng, 3)
  uniform = (labels + jax.random.randint(k_uniform, labels.shape, 1, num_classes)) % num_classes
  others = jnp.where(jax.nn.one_hot(labels, num_classes, dtype=bool), -jnp.inf,
                     jax.lax.stop_gradient(s_pos).astype(jnp.float32))
  hard = jax.random.categorical(k_hard, others, axis=-1)
  if negatives == "hard":
    return hard
  return jnp.where(jax.random.bernoulli(k_mix, 0.5, labels.shape), hard, uniform)


def deft_loss(s_pos, s_neg, labels, valid, rng, *, warmup, pseudo_labels, strict: bool = False,
              warmup_loss: str = "ce", negatives: str = "uniform") -> tuple[jax.Array, dict]:
  """Total phase-1 loss L_cls + L_neg and per-example outputs.

  Args:
    s_pos: [B, C] logits against positive prompts (gradient flows to positive prompts and PEFT).
    s_neg: [B, C] logits of stop-gradient image features against negative prompts.
    labels: [B] given (noisy) labels.
    valid: [B] bool, False for padding.
    rng: key for the complementary labels (fresh each call).
    warmup: traced bool; during warm-up L_cls uses every sample and t_i = given label.
    pseudo_labels: traced bool; when True unselected samples use t_i = argmax_k s_pos in L_neg.
    strict: the stricter selection rule of the real-world datasets.
    warmup_loss: "ce" or "sce" (symmetric CE, alpha = beta = 1) for L_cls during warm-up.
    negatives: how L_neg's complementary class is drawn (:func:`complementary_labels`; "uniform" is the method).

  Returns:
    (loss, aux) with aux holding loss_cls, loss_neg, p_clean [B], selected [B], suggested [B], margin [B].
  """
  num_classes = s_pos.shape[-1]
  py = p_yes(s_pos, s_neg)
  p_clean, selected = select_clean(py, labels, strict=strict)

  # L_cls: CE over C classes of s_pos against the given label, over selected samples (all in warm-up).
  ce = cross_entropy(s_pos, labels)
  warm_ce = symmetric_cross_entropy(s_pos, labels) if warmup_loss == "sce" else ce
  cls_mask = valid & jnp.where(warmup, True, selected)
  loss_cls = masked_mean(jnp.where(warmup, warm_ce, ce), cls_mask)

  # L_neg: push p_no up at a random complementary class, p_yes up at the target class t_i.
  comp = complementary_labels(rng, labels, num_classes, s_pos=s_pos, negatives=negatives)
  p_no_comp = 1.0 - jnp.take_along_axis(py, comp[:, None], axis=-1)[:, 0]
  suggested = jnp.argmax(s_pos, axis=-1)
  use_pseudo = pseudo_labels & ~selected
  target = jnp.where(use_pseudo, suggested, labels)
  p_yes_t = jnp.take_along_axis(py, target[:, None], axis=-1)[:, 0]
  log_clamped = lambda p: jnp.log(jnp.clip(p, P_MIN, 1.0))  # noqa: E731
  loss_neg = masked_mean(-log_clamped(p_no_comp), valid) + masked_mean(-log_clamped(p_yes_t), valid)

  s_pos_y = jnp.take_along_axis(s_pos, labels[:, None], axis=-1)[:, 0]
  s_neg_y = jnp.take_along_axis(s_neg, labels[:, None], axis=-1)[:, 0]
  aux = dict(loss_cls=loss_cls, loss_neg=loss_neg, p_clean=jax.lax.stop_gradient(p_clean), selected=selected,
             suggested=suggested, margin=jax.lax.stop_gradient(s_pos_y - s_neg_y))
  return loss_cls + loss_neg, aux
