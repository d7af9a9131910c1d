"""Attention kernels of the CLIP towers: plain (XLA or cuDNN), padded for cuDNN, and prefix-continuing.

Inputs are [..., T, heads, head_dim]; logits and the softmax are float32 whatever the compute dtype, as in
``jax.nn.dot_product_attention``.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

CUDNN_SEQ_MULTIPLE = 16


def attention(q, k, v, *, causal: bool, implementation: Optional[str]):
  """``jax.nn.dot_product_attention`` on [B, T, heads, head_dim].

  cuDNN's fused kernel rejects some sequence lengths (ViT-B/16 has 197 tokens, 217 with VPT), so with
  ``implementation="cudnn"`` the sequence is padded to a multiple of 16 (see :func:`padded_attention`).
  """
  if implementation == "cudnn" and q.shape[1] % CUDNN_SEQ_MULTIPLE:
    return padded_attention(q, k, v, causal=causal, implementation=implementation, multiple=CUDNN_SEQ_MULTIPLE)
  return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation=implementation)


def padded_attention(q, k, v, *, causal: bool, implementation: Optional[str], multiple: int):
  """The same attention with the sequence zero-padded to a multiple of ``multiple``: padded keys are masked
  through ``key_value_seq_lengths`` and padded query rows are dropped."""
  t = q.shape[1]
  widths = ((0, 0), (0, (-t) % multiple), (0, 0), (0, 0))
  q, k, v = (jnp.pad(a, widths) for a in (q, k, v))
  lengths = jnp.full((q.shape[0],), t, jnp.int32)
  o = jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation=implementation,
                                   query_seq_lengths=lengths, key_value_seq_lengths=lengths)
  return o[:, :t]


def prefix_attention(q, k, v, prefix_k, prefix_v, *, causal: bool = True, query_positions=None):
  """Attention of suffix tokens over [their group's shared prefix ; the suffix itself].

  k, v: [G, N, S, heads, head_dim], N sequences per group that continue the group's prefix, whose keys and
  values prefix_k, prefix_v are [G, P, heads, head_dim]; q: [G, N, Sq, heads, head_dim], the suffix's own
  tokens (Sq = S) or, with ``query_positions`` [N, Sq], those at these positions of each suffix. Every query
  sees the whole prefix, and (``causal``) the suffix tokens up to its own. The prefix is never broadcast to the
  N sequences: its logits are a product against the [G, P] keys directly, so memory does not grow with N x P.
  Numerics follow ``jax.nn.dot_product_attention``'s XLA path (float32 logits and softmax, probabilities cast
  back).
  """
  if q.ndim != 5 or prefix_k.ndim != 4:
    raise ValueError(f"prefix_attention takes [G, N, S, H, D] and [G, P, H, D], got {q.shape}, {prefix_k.shape}")
  p, s = prefix_k.shape[1], k.shape[2]
  precision = jax.lax.DotAlgorithmPreset.BF16_BF16_F32 if q.dtype == jnp.bfloat16 else None
  dot = dict(precision=precision, preferred_element_type=jnp.float32)
  logits = jnp.concatenate([jnp.einsum("gnshd,gphd->gnhsp", q, prefix_k, **dot),
                            jnp.einsum("gnshd,gnthd->gnhst", q, k, **dot)], axis=-1)
  logits *= jnp.asarray(1.0 / np.sqrt(q.shape[-1]), jnp.float32)
  if causal:
    if query_positions is None:
      visible = np.concatenate([np.ones((s, p), bool), np.tril(np.ones((s, s), bool))], axis=1)
    else:  # [N, Sq, P + S] -> broadcast over groups and heads
      later = jnp.arange(s)[None, None, :] > jnp.asarray(query_positions)[:, :, None]
      visible = jnp.concatenate([jnp.ones(later.shape[:2] + (p,), bool), ~later], axis=-1)[None, :, None]
    logits = jnp.where(visible, logits, jnp.asarray(-0.7 * np.finfo(np.float32).max, jnp.float32))
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return (jnp.einsum("gnhsp,gphd->gnshd", probs[..., :p], prefix_v)
          + jnp.einsum("gnhst,gnthd->gnshd", probs[..., p:], v))
