"""Attention kernels of the CLIP towers: plain (XLA or cuDNN) and padded for cuDNN.

Inputs are [..., T, heads, head_dim]; logits and the softmax are float32 whatever the compute dtype, as in
``jax.nn.dot_product_attention``.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

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
