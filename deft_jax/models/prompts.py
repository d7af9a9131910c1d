"""Dual textual prompts (CoOp style): learned positive and negative context vectors per class prompt.

For class k the positive prompt is ``[SOS] pos_ctx[0..n-1] tokens("<name>.") [EOT]`` ("end" position; "middle"
splits the context around the name, "front" puts the name first), "<name>." tokenised as one string, and
the negative prompt the same with ``neg_ctx``. The context vectors replace the word embeddings of n
placeholder tokens, so the end-of-text position (the pooling position) does not move.

Everything static about the prompts (token ids, where the context goes, the end-of-text positions, the
context length actually needed) is computed once on the host by :class:`PromptTemplate`; the per-step
work is a gather and one pass of the text tower: the prompts' shared prefix once per context, then every
class's suffix (deft_jax/models/text_prefix.py), optionally in class chunks.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from deft_jax.models import clip as clip_lib
from deft_jax.models import text_prefix
from deft_jax.models.tokenizer import Tokenizer
from deft_jax.errors import ConfigError

PLACEHOLDER = "X"


@dataclasses.dataclass(frozen=True)
class PromptLayout:
  """How the class prompts are laid out and run (``config.detect``'s fields; phase 1, VLPT and phase 2's
  "none" share them): the context length and its init words, the class name's position, class-specific
  contexts, and how the text tower runs them (``text_chunk``, ``share_prefix``)."""

  n_ctx: int = 16
  ctx_init: str = ""
  ctx_init_pad: bool = False
  position: str = "end"
  class_specific: bool = False
  class_specific_negatives: bool = False  # the negative contexts per class, the positive one shared
  text_chunk: int = 0
  share_prefix: bool = True

  @classmethod
  def from_config(cls, d) -> "PromptLayout":
    """From the ``detect`` config section."""
    return cls(n_ctx=int(d.n_ctx), ctx_init=d.ctx_init, ctx_init_pad=bool(d.ctx_init_pad),
               position=d.class_token_position, class_specific=bool(d.class_specific),
               class_specific_negatives=bool(d.class_specific_negatives), text_chunk=int(d.text_chunk),
               share_prefix=bool(d.text_prefix_sharing))

  def template(self, class_names: Sequence[str], tokenizer: Tokenizer) -> "PromptTemplate":
    return build_template(class_names, tokenizer, n_ctx=self.n_ctx, ctx_init=self.ctx_init, position=self.position,
                          ctx_init_pad=self.ctx_init_pad)


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
  """Static description of the C class prompts.

  Attributes:
    ids: int32 [C, T] token ids (placeholders where the context goes); T is trimmed to the longest prompt.
    ctx_index: int32 [C, T], j >= 0 where context vector j replaces the word embedding, -1 elsewhere.
    eot: int32 [C] end-of-text positions.
    n_ctx: number of context vectors.
    init_ids: int32 [k] token ids whose embeddings initialise the last k context vectors (ctx_init), or None;
      k = n_ctx unless the init is padded (the first n_ctx - k vectors then start from N(0, 0.02)).
  """

  ids: np.ndarray
  ctx_index: np.ndarray
  eot: np.ndarray
  n_ctx: int
  init_ids: Optional[np.ndarray] = None

  @property
  def num_classes(self) -> int:
    return self.ids.shape[0]


def clean_class_name(name: str) -> str:
  return " ".join(name.replace("_", " ").split())


def build_template(class_names: Sequence[str], tokenizer: Tokenizer, *, n_ctx: int = 16, ctx_init: str = "",
                   position: str = "end", ctx_init_pad: bool = False) -> PromptTemplate:
  """Token layout of every class prompt.

  With ``ctx_init`` (e.g. "a photo of a") the context starts from those words' embeddings and, as in CoOp, its
  length shrinks from ``n_ctx`` to the words' token count (4 for "a photo of a"): two things change at once.
  ``ctx_init_pad`` keeps ``n_ctx`` vectors, the words last (next to the class name) and N(0, 0.02) before them.
  Without ``ctx_init`` all ``n_ctx`` vectors start from N(0, 0.02) (the reference's only init).
  """
  if not class_names:
    raise ConfigError("no class names given")
  if position not in ("end", "middle", "front"):
    raise ConfigError(f"class_token_position must be 'end', 'middle' or 'front', got {position!r}")
  init_ids = None
  if ctx_init:
    init_ids = np.asarray(tokenizer.encode(ctx_init), np.int32)
    if not ctx_init_pad:
      n_ctx = len(init_ids)
    elif len(init_ids) > n_ctx:
      raise ConfigError(f"ctx_init {ctx_init!r} has {len(init_ids)} tokens, more than n_ctx={n_ctx} to pad to")
  if n_ctx <= 0:
    raise ConfigError(f"n_ctx must be positive, got {n_ctx}")
  ph = tokenizer.encode(PLACEHOLDER)
  if len(ph) != 1:
    raise ValueError("the placeholder must be a single token")
  rows, ctx_rows = [], []
  for name in class_names:
    name = clean_class_name(name)
    # "<name>." is tokenised as one string (BPE may merge a final punctuation mark with the "."); for the
    # "front" and "middle" positions the name is its first len(tokens(name)) tokens, as CoOp slices it.
    full = tokenizer.encode(name + ".")
    name_len = len(tokenizer.encode(name))
    if not name_len:
      raise ConfigError(f"class name {name!r} has no tokens")
    head, tail = full[:name_len], full[name_len:]
    c = list(range(n_ctx))
    if position == "end":
      body = [(None, j) for j in c] + [(t, -1) for t in full]
    elif position == "front":
      body = [(t, -1) for t in head] + [(None, j) for j in c] + [(t, -1) for t in tail]
    else:
      half = n_ctx // 2
      body = ([(None, j) for j in c[:half]] + [(t, -1) for t in head] + [(None, j) for j in c[half:]]
              + [(t, -1) for t in tail])
    seq = [(tokenizer.bos_id, -1)] + [(ph[0] if t is None else t, j) for t, j in body] + [(tokenizer.eos_id, -1)]
    if len(seq) > tokenizer.context_length:
      raise ConfigError(f"the prompt of class {name!r} needs {len(seq)} tokens, more than the context length "
                       f"{tokenizer.context_length}; shorten the name or n_ctx")
    rows.append([t for t, _ in seq])
    ctx_rows.append([j for _, j in seq])
  t_max = max(len(r) for r in rows)
  ids = np.full((len(rows), t_max), tokenizer.pad_id, np.int32)
  ctx_index = np.full((len(rows), t_max), -1, np.int32)
  for i, (r, c) in enumerate(zip(rows, ctx_rows)):
    ids[i, : len(r)] = r
    ctx_index[i, : len(c)] = c
  eot = np.asarray([len(r) - 1 for r in rows], np.int32)
  return PromptTemplate(ids, ctx_index, eot, n_ctx, init_ids)


def init_prompts(rng, template: PromptTemplate, width: int, *, class_specific: bool = False,
                 token_embedding: Optional[jax.Array] = None, class_specific_negatives: bool = False) -> dict:
  """``{"pos_ctx", "neg_ctx"}``, each [n_ctx, width] (or [C, n_ctx, width] when class-specific;
  ``class_specific_negatives``: the negative one only)."""
  if class_specific_negatives and not class_specific:
    out = init_prompts(rng, template, width, class_specific=True, token_embedding=token_embedding)
    return {"pos_ctx": init_prompts(rng, template, width, token_embedding=token_embedding)["pos_ctx"],
            "neg_ctx": out["neg_ctx"]}
  shape = (template.num_classes, template.n_ctx, width) if class_specific else (template.n_ctx, width)
  k_pos, k_neg = jax.random.split(rng)
  if template.init_ids is not None:
    if token_embedding is None:
      raise ValueError("ctx_init needs the token embedding table")
    k = len(template.init_ids)
    words = jnp.broadcast_to(jnp.asarray(token_embedding)[jnp.asarray(template.init_ids)],
                             shape[:-2] + (k, width)).astype(jnp.float32)
    if k == template.n_ctx:
      return {"pos_ctx": words, "neg_ctx": words}
    pad = shape[:-2] + (template.n_ctx - k, width)
    return {"pos_ctx": jnp.concatenate([0.02 * jax.random.normal(k_pos, pad, jnp.float32), words], axis=-2),
            "neg_ctx": jnp.concatenate([0.02 * jax.random.normal(k_neg, pad, jnp.float32), words], axis=-2)}
  return {"pos_ctx": 0.02 * jax.random.normal(k_pos, shape, jnp.float32),
          "neg_ctx": 0.02 * jax.random.normal(k_neg, shape, jnp.float32)}


def token_embedding(clip_params) -> jax.Array:
  """The text tower's word-embedding table [vocab, width] of a CLIP parameter tree."""
  return clip_params["text_model"]["embeddings"]["token_embedding"]["embedding"]


def words_init(rng, template: PromptTemplate, clip_params, *, class_specific: bool = False,
               class_specific_negatives: bool = False) -> Optional[dict]:
  """With ``ctx_init``, the contexts ``init_prompts`` gives once the pretrained CLIP is loaded (they start from
  the pretrained embeddings of its words, which a random init cannot know); None without ``ctx_init``."""
  if template.init_ids is None:
    return None
  table = token_embedding(clip_params)
  return init_prompts(rng, template, table.shape[-1], class_specific=class_specific, token_embedding=table,
                      class_specific_negatives=class_specific_negatives)


def _with_context(token_embeds, ctx, ctx_index: np.ndarray, rows: np.ndarray):
  """token_embeds [n, m, width] of the prompt grid's ``rows`` (and some columns, whose context indices are
  ``ctx_index`` [n, m]) with the context vectors in place of the placeholders. Without any placeholder (a
  suffix after the context) they are the word embeddings alone: no gradient path to the context then."""
  if not (np.asarray(ctx_index) >= 0).any():
    return token_embeds
  idx = jnp.asarray(ctx_index)
  j = jnp.maximum(idx, 0)
  if ctx.ndim == 2:
    ctx_full = ctx[j]  # [n, m, width]
  else:
    ctx_full = jnp.take_along_axis(ctx[jnp.asarray(rows)], j[..., None], axis=1)
  return jnp.where((idx >= 0)[..., None], ctx_full.astype(token_embeds.dtype), token_embeds)


def text_layout(template: PromptTemplate, *, class_specific: bool = False, share_prefix: bool = True,
                max_groups: Optional[int] = None) -> text_prefix.TextLayout:
  """How the text tower runs the template's prompts (see deft_jax/models/text_prefix.py): with one unified
  context and the name at the end, the prefix [SOS, ctx_1 .. ctx_n] once per context and the classes'
  suffixes by length; "middle" shares [SOS] and the first half of the context; class-specific contexts and
  "front" share the start token only. ``share_prefix=False``: every prompt whole (the reference's path)."""
  ctx = template.ctx_index
  if class_specific:  # a class's own context vectors are never the same input as another class's
    rows = np.arange(ctx.shape[0])[:, None]
    ctx = np.where(ctx >= 0, ctx + template.n_ctx * (rows + 1), -1)
  return text_prefix.plan(np.stack([template.ids, ctx], axis=-1), template.eot, share=share_prefix,
                          max_groups=max_groups)


def text_features(model: clip_lib.CLIP, clip_params, prompts: dict, template: PromptTemplate, *,
                  chunk: int = 0, share_prefix: bool = True) -> tuple[jax.Array, jax.Array]:
  """L2-normalised positive and negative text features, each [C, embed_dim] (float32).

  ``chunk`` > 0 runs the text tower over at most ``chunk`` prompts at a time, rematerialised, so that
  memory stays bounded for datasets with up to thousands of classes. ``share_prefix``: see :func:`text_layout`.
  """
  pos, neg = prompts["pos_ctx"], prompts["neg_ctx"]
  if pos.ndim != neg.ndim:  # class-specific negatives: two layouts, one pass each
    return tuple(context_features(model, clip_params, [c], template, chunk=chunk, share_prefix=share_prefix)[0]
                 for c in (pos, neg))
  pos, neg = context_features(model, clip_params, [pos, neg], template, chunk=chunk, share_prefix=share_prefix)
  return pos, neg


def context_features(model: clip_lib.CLIP, clip_params, contexts: Sequence[jax.Array], template: PromptTemplate,
                     *, chunk: int = 0, share_prefix: bool = True) -> list[jax.Array]:
  """For each context (CoOp's learned vectors), the L2-normalised [C, embed_dim] features of the C class prompts
  built with it; all of them in one pass of the text tower (see :func:`text_features`)."""
  if len({c.ndim for c in contexts}) != 1:
    raise ValueError("the contexts must be all unified or all class-specific")
  layout = text_layout(template, class_specific=contexts[0].ndim == 3, share_prefix=share_prefix)
  variables = {"params": clip_params}

  def embed(rows, cols):
    ids = template.ids[np.ix_(rows, cols)]
    tok = model.apply(variables, jnp.asarray(ids), method=clip_lib.CLIP.embed_tokens)
    ctx_index = template.ctx_index[np.ix_(rows, cols)]
    return jnp.stack([_with_context(tok, ctx, ctx_index, rows) for ctx in contexts])

  feats = clip_lib.normalize(text_prefix.encode(model, clip_params, layout, embed, chunk=chunk))
  return [feats[i] for i in range(len(contexts))]
