"""Many prompts through the causal text tower at the cost of what they do not share.

C class prompts that start alike (``[SOS] ctx_1 .. ctx_n`` for CoOp-style learned contexts, ``[SOS] a photo of
a`` for caption templates) have identical hidden states over that common prefix at every layer: the text tower
is causal, so a prefix token never sees what follows it. :func:`encode` therefore runs the prefix once per
group of prompts (a group per learned context), keeps each layer's keys and values, and runs only each class's
suffix (its name, ".", end of text), attending to them. Features and gradients are those of the full path, to
floating-point rounding, not an approximation.

The suffixes are sorted by length into at most ``max_groups`` buckets, each padded to its own longest suffix
(never to the context length), all in one compiled program; ``chunk`` bounds the prompts encoded at a time
(rematerialised in the backward pass), so memory stays flat in C.

Everything static (the prefix length, the buckets, the class order) is planned on the host by :func:`plan`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from deft_jax.models import clip as clip_lib

# Suffix buckets by default: the shapes one compiled program holds (each bucket is its own code path).
MAX_BUCKETS = 4

# An embedding callback: (rows [n], columns [m]) of the prompt token grid -> [G, n, m, width] inputs.
EmbedFn = Callable[[np.ndarray, np.ndarray], jax.Array]


@dataclasses.dataclass(frozen=True)
class TextLayout:
  """How C prompts of at most T tokens go through the text tower.

  Attributes:
    eot: [C] end-of-text positions (in the full prompt).
    length: T, the longest prompt.
    prefix: P, tokens shared by every prompt (run once per group); 0 = the full path (every prompt whole).
    buckets: the suffix buckets, each (class indices, padded suffix length).
  """

  eot: tuple[int, ...]
  length: int
  prefix: int = 0
  buckets: tuple[tuple[tuple[int, ...], int], ...] = ()

  @property
  def suffix_tokens(self) -> int:
    """Tokens per group the suffix pass encodes (padding included): the text tower's work is prefix + this."""
    return sum(len(rows) * s for rows, s in self.buckets)


def shared_prefix_length(keys: np.ndarray) -> int:
  """The number of leading positions at which every row of ``keys`` ([C, T, ...]) is identical."""
  same = (keys == keys[:1]).reshape(keys.shape[0], keys.shape[1], -1).all(axis=(0, 2))
  return int(np.argmin(same)) if not same.all() else keys.shape[1]


def bucket_lengths(lengths: np.ndarray, max_groups: int) -> list[int]:
  """Bucket boundaries (the padded length of each bucket, ascending) minimising the padded tokens
  sum(len(bucket) * its length) with at most ``max_groups`` buckets; fewer buckets when that costs nothing."""
  values, counts = np.unique(lengths, return_counts=True)
  m = len(values)
  k_max = max(1, min(max_groups, m))
  inf = float("inf")
  # best[k][j]: the cost of covering values[:j] with k buckets, the last one ending at values[j - 1].
  best = [[inf] * (m + 1) for _ in range(k_max + 1)]
  cut = [[0] * (m + 1) for _ in range(k_max + 1)]
  best[0][0] = 0.0
  csum = np.concatenate([[0], np.cumsum(counts)])
  for k in range(1, k_max + 1):
    for j in range(1, m + 1):
      for i in range(j):
        c = best[k - 1][i] + (csum[j] - csum[i]) * values[j - 1]
        if c < best[k][j]:
          best[k][j], cut[k][j] = c, i
  k = min(range(1, k_max + 1), key=lambda kk: (best[kk][m], kk))
  ends, j = [], m
  while k:
    ends.append(int(values[j - 1]))
    j, k = cut[k][j], k - 1
  return ends[::-1]


def plan(keys: np.ndarray, eot: np.ndarray, *, share: bool = True, max_groups: Optional[int] = None) -> TextLayout:
  """The layout of C prompts: ``keys`` [C, T, ...] says what each position's input is (token ids, and which
  learned vector replaces them), so that positions where all rows agree are the same input; ``eot`` [C].

  The prefix stops at the first end of text (a suffix always holds its own), so it is at least the start
  token. ``share=False`` gives the full path. ``max_groups``: suffix buckets (default :data:`MAX_BUCKETS`).
  """
  keys, eot = np.asarray(keys), np.asarray(eot, np.int64)
  c, t = keys.shape[:2]
  if eot.shape != (c,) or eot.max() >= t:
    raise ValueError(f"eot must be [C] positions inside the {t} tokens, got {eot.shape} (max {eot.max()})")
  eot_t = tuple(int(e) for e in eot)
  if not share:
    return TextLayout(eot_t, t)
  p = min(shared_prefix_length(keys), int(eot.min()))
  if p < 1:
    return TextLayout(eot_t, t)
  lengths = eot + 1 - p
  order = np.argsort(lengths, kind="stable")
  buckets, start = [], 0
  for end in bucket_lengths(lengths, MAX_BUCKETS if max_groups is None else max_groups):
    stop = start + int((lengths[order[start:]] <= end).sum())
    buckets.append((tuple(int(i) for i in order[start:stop]), end))
    start = stop
  return TextLayout(eot_t, t, p, tuple(buckets))


def _chunked(fn, inputs, n: int, chunk: int):
  """``fn`` over the leading axis of ``inputs`` (a pytree with n rows) ``chunk`` rows at a time, each chunk
  rematerialised in the backward pass; all at once when chunk is 0 or covers n."""
  if not chunk or chunk >= n:
    return fn(*inputs)
  pad = (-n) % chunk

  def split(a):
    a = jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))
    return a.reshape(-1, chunk, *a.shape[1:])

  out = jax.lax.map(jax.checkpoint(lambda a: fn(*a)), tuple(split(a) for a in inputs))
  return out.reshape(-1, *out.shape[2:])[:n]


def encode(model: clip_lib.CLIP, clip_params, layout: TextLayout, embed: EmbedFn, *, chunk: int = 0) -> jax.Array:
  """Projected (unnormalised, float32) text features [G, C, embed_dim] of the C prompts of ``layout``, for G
  groups of inputs (e.g. the positive and the negative context): ``embed(rows, cols)`` gives their input
  embeddings [G, len(rows), len(cols), width] at those rows and positions of the prompt grid.

  ``chunk`` > 0 encodes at most ``chunk`` prompts at a time (in each suffix bucket, chunk // G classes of
  every group), rematerialised in the backward pass.
  """
  variables = {"params": clip_params}
  eot = np.asarray(layout.eot, np.int32)
  c, t = len(eot), layout.length
  if not layout.prefix:
    e = embed(np.arange(c), np.arange(t))
    g = e.shape[0]

    def full(x, pos):
      return model.apply(variables, x, pos, method=clip_lib.CLIP.encode_text_embeds)

    feats = _chunked(full, (e.reshape(g * c, t, -1), jnp.asarray(np.tile(eot, g))), g * c, chunk)
    return feats.reshape(g, c, -1)
  p = layout.prefix
  prefix_kv = model.apply(variables, embed(np.zeros(1, np.int64), np.arange(p))[:, 0],
                          method=clip_lib.CLIP.encode_text_prefix)
  g = prefix_kv[0].shape[1]

  def suffix(x, pos):  # x [n, G, S, width] (chunked over the leading axis), pos [n]
    out = model.apply(variables, prefix_kv, jnp.swapaxes(x, 0, 1), pos, method=clip_lib.CLIP.encode_text_suffix)
    return jnp.swapaxes(out, 0, 1)

  feats, rows_all = [], []
  for rows, s in layout.buckets:
    rows = np.asarray(rows)
    # Every position of a suffix bucket lies inside the grid: its longest suffix ends at most at T.
    e = jnp.swapaxes(embed(rows, np.arange(p, p + s)), 0, 1)
    feats.append(_chunked(suffix, (e, jnp.asarray(eot[rows] - p)), len(rows), max(chunk // g, 1) if chunk else 0))
    rows_all.append(rows)
  order = np.concatenate(rows_all)
  feats = jnp.swapaxes(jnp.concatenate(feats), 0, 1)  # [G, C, D] in bucket order
  if (order == np.arange(c)).all():
    return feats
  return feats[:, np.argsort(order)]
