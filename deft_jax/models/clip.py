"""CLIP in Flax Linen, with PEFT hooks in the visual encoder.

Parameter names follow the Hugging Face ``CLIPModel`` state dict (``vision_model/encoder/layers_3/self_attn/
q_proj/kernel`` <-> ``vision_model.encoder.layers.3.self_attn.q_proj.weight``) so that converting a checkpoint
is a rename plus transposes (see ``clip_weights.py``). With ``scan=True`` the blocks of a tower are stacked
under ``encoder/layers`` with a leading layer axis instead.

Numerics: parameters are float32; activations use ``CLIPConfig.dtype``; LayerNorm and the attention softmax
run in float32 (``jax.nn.dot_product_attention`` accumulates logits in float32 for bf16 inputs); image and
text features are returned in float32.

This module knows nothing about training: which parameters are frozen is decided by the optimiser rules.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from deft_jax.models import peft as peft_lib
from deft_jax.models.attention import CUDNN_SEQ_MULTIPLE, attention, padded_attention, prefix_attention  # noqa: F401
from deft_jax.models.peft_layers import SSF, Adapter, LoRA, peft_dense, uniform_init  # noqa: F401
from deft_jax.models.presets import CLIPConfig
from deft_jax.errors import ConfigError

Array = jax.Array


def _activation(name: str):
  if name == "quick_gelu":
    return lambda x: x * jax.nn.sigmoid(1.702 * x)
  if name == "gelu":
    return lambda x: jax.nn.gelu(x, approximate=False)
  raise ConfigError(f"unknown activation {name!r}")


def _layer_norm(eps: float, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=eps, dtype=jnp.float32, param_dtype=jnp.float32, name=name)


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """The shape and numerics every transformer block of a tower shares."""

  width: int
  heads: int
  mlp_dim: int
  ln_eps: float
  act: str
  causal: bool
  dtype: Any
  attention: Optional[str]
  prompt_init_bound: float = 0.0


class _Part(nn.Module):
  """A transformer block or one of its sublayers (attention, MLP): the block's spec and PEFT."""

  spec: BlockSpec
  peft: peft_lib.BlockPEFT = peft_lib.BlockPEFT()


class _ModedPart(_Part):
  """A block or its attention, which run in one of ``BLOCK_MODES`` (see :class:`Block`)."""

  mode: str = "full"


class Attention(_ModedPart):
  """Multi-head self-attention over [..., T, width].

  ``mode`` (see :class:`Block`): "full" attends to ``x`` itself; "prefix" also returns this layer's keys and
  values; "kv" returns only them; "suffix" lets ``x`` ([G, N, S, width]) attend to ``prefix_kv`` too; "pool"
  does so for one query per sequence, the token at ``pool`` [N] (-> [G, N, 1, width]).
  """

  @nn.compact
  def __call__(self, x, prefix_kv=None, pool=None):
    s, p = self.spec, self.peft
    hd = s.width // s.heads

    def proj(n, inputs):
      return peft_dense(inputs, s.width, f"{n}_proj", n, p, s.dtype).reshape(*inputs.shape[:-1], s.heads, hd)

    if self.mode == "kv":
      return proj("k", x), proj("v", x)
    q = proj("q", x if self.mode != "pool" else _take_tokens(x, pool))
    k, v = proj("k", x), proj("v", x)
    if self.mode in ("suffix", "pool"):
      o = prefix_attention(q, k, v, *prefix_kv, causal=s.causal,
                           query_positions=None if pool is None else jnp.asarray(pool)[:, None])
    else:
      o = attention(q, k, v, causal=s.causal, implementation=s.attention)
    out = peft_dense(o.reshape(*o.shape[:-2], s.width), s.width, "out_proj", "out", p, s.dtype)
    return (out, (k, v)) if self.mode == "prefix" else out


def _take_tokens(x, positions):
  """x [G, N, S, width] at one position per sequence, positions [N] -> [G, N, 1, width]."""
  idx = jnp.broadcast_to(jnp.asarray(positions, jnp.int32)[None, :, None, None], x.shape[:2] + (1, 1))
  return jnp.take_along_axis(x, idx, axis=2)


class MLP(_Part):
  @nn.compact
  def __call__(self, x):
    h = _activation(self.spec.act)(peft_dense(x, self.spec.mlp_dim, "fc1", "fc1", self.peft, self.spec.dtype))
    return peft_dense(h, self.spec.width, "fc2", "fc2", self.peft, self.spec.dtype)


BLOCK_MODES = ("full", "prefix", "kv", "suffix", "pool")


class Block(_ModedPart):
  """Pre-norm transformer block; optionally prepends its own visual prompts (VPT).

  ``mode`` serves a causal tower that encodes many sequences sharing their first P tokens (text prompts with
  one learned context): "full" is the plain block; "prefix" runs the shared tokens once and also returns the
  layer's keys and values ([G, P, heads, head_dim] each); "kv" returns only those (the last layer's prefix
  outputs are never read); "suffix" runs the remaining tokens of each sequence, [G, N, S, width], attending to
  the prefix's keys and values of their group; "pool" is "suffix" computed only for the token at ``pool`` [N]
  of each sequence (-> [G, N, 1, width]): the last layer of a tower read at one token per sequence. Causality
  makes this exact: prefix tokens never see suffixes, and no token sees those after it.
  """

  @nn.compact
  def __call__(self, x, prefix_kv=None, pool=None):
    s, p = self.spec, self.peft
    if self.mode not in BLOCK_MODES:
      raise ValueError(f"Block mode must be one of {BLOCK_MODES}, got {self.mode!r}")
    if self.mode != "full" and (p.prompt != "none" or not s.causal):
      raise ValueError("prefix sharing needs a causal block without visual prompts")
    if p.prompt != "none":
      prompts = self.param(peft_lib.VPT_PARAM, uniform_init(s.prompt_init_bound), (p.prompt_tokens, s.width))
      prompts = jnp.broadcast_to(prompts.astype(x.dtype), (x.shape[0],) + prompts.shape)
      if p.prompt == "replace":  # VPT-deep: drop the previous block's prompt outputs.
        x = x[:, :-p.prompt_tokens]
      # The prompts go after the patch tokens, so the class token stays at position 0.
      x = jnp.concatenate([x, prompts], axis=1)
    h = _layer_norm(s.ln_eps, "layer_norm1")(x).astype(s.dtype)
    attn = Attention(s, p, self.mode, name="self_attn")
    if self.mode == "kv":
      return attn(h)
    a = attn(h, prefix_kv, pool)
    if self.mode == "prefix":
      a, kv = a
    x = (x if self.mode != "pool" else _take_tokens(x, pool)) + a
    h = _layer_norm(s.ln_eps, "layer_norm2")(x).astype(s.dtype)
    h = MLP(s, p, name="mlp")(h)
    if p.adapter_dim:
      h = Adapter(p.adapter_dim, s.dtype, p.adapter_residual, name=peft_lib.ADAPTER)(h)
    return (x + h, kv) if self.mode == "prefix" else x + h


class _ScanBlock(Block):
  """Block with the (carry, xs) -> (carry, ys) signature that nn.scan needs: in "prefix" mode the ys are the
  layer's keys and values, in "suffix" mode the xs are the prefix's."""

  @nn.compact
  def __call__(self, x, xs):
    if self.mode == "prefix":
      return super().__call__(x)
    return super().__call__(x, xs if self.mode == "suffix" else None), None


class Encoder(nn.Module):
  spec: BlockSpec
  blocks: Sequence[peft_lib.BlockPEFT]
  remat: bool = False
  scan: bool = False

  @nn.compact
  def __call__(self, x, prefix_kv=None, *, mode: str = "full", pool=None):
    """``mode="full"``: [B, T, width] -> [B, T, width]. "prefix": the shared first tokens [G, P, width] ->
    their keys and values (k, v), each [layers, G, P, heads, head_dim]. "suffix": the remaining tokens
    [G, N, S, width] and the prefix's (k, v) -> [G, N, S, width], or with ``pool`` [N] the output at those
    positions only, [G, N, width]: then the last layer runs for them alone (see :class:`Block`)."""
    if not self.scan:
      cls = nn.remat(Block) if self.remat else Block
      n = len(self.blocks)
      if mode == "prefix":
        kvs = []
        for i, bp in enumerate(self.blocks):
          out = cls(self.spec, bp, "kv" if i == n - 1 else "prefix", name=f"layers_{i}")(x)
          x, kv = out if i < n - 1 else (x, out)
          kvs.append(kv)
        return tuple(jnp.stack(a) for a in zip(*kvs))
      for i, bp in enumerate(self.blocks):
        layer_kv = None if mode == "full" else (prefix_kv[0][i], prefix_kv[1][i])
        last = pool is not None and i == n - 1
        x = cls(self.spec, bp, "pool" if last else mode, name=f"layers_{i}")(x, layer_kv, pool if last else None)
      return x[:, :, 0] if pool is not None else x
    block = _scan_block_peft(self.blocks)
    if block.prompt != "none":
      # Every scanned block replaces the last prompt tokens; give the first one zeros to replace.
      x = jnp.concatenate([x, jnp.zeros((x.shape[0], block.prompt_tokens, x.shape[2]), x.dtype)], axis=1)
    cls = nn.remat(_ScanBlock) if self.remat else _ScanBlock
    scanned = nn.scan(cls, variable_axes={"params": 0}, split_rngs={"params": True},
                      length=len(self.blocks))
    # In "prefix" mode every scanned layer runs in full (one body for all): the last one's outputs are unused.
    x, ys = scanned(self.spec, block, mode, name="layers")(x, prefix_kv if mode == "suffix" else None)
    if pool is not None:  # one scanned body for all layers: the last one ran for every token
      return _take_tokens(x, pool)[:, :, 0]
    return ys if mode == "prefix" else x


def _scan_block_peft(blocks: Sequence[peft_lib.BlockPEFT]) -> peft_lib.BlockPEFT:
  """The one BlockPEFT a scanned encoder uses; VPT-deep's first block becomes a 'replace' block."""
  first = blocks[0]
  if first.prompt == "append":
    first = peft_lib.BlockPEFT(**{**first.__dict__, "prompt": "replace"})
  if any(b != first for b in blocks[1:]):
    raise ConfigError("scan=True needs the same PEFT on every block (no `partial`, no VPT-shallow); "
                     "use scan=False for this PEFT configuration")
  return first


class VisionEmbeddings(nn.Module):
  patch_size: int
  width: int
  num_positions: int
  dtype: Any

  @nn.compact
  def __call__(self, images):
    scale = self.width ** -0.5
    cls = self.param("class_embedding", nn.initializers.normal(scale), (self.width,))
    x = nn.Conv(self.width, (self.patch_size, self.patch_size), strides=self.patch_size, padding="VALID",
                use_bias=False, dtype=self.dtype, name="patch_embedding")(images.astype(self.dtype))
    b, h, w, c = x.shape
    if 1 + h * w != self.num_positions:
      raise ConfigError(f"images of {images.shape[1]}x{images.shape[2]} px give {h * w} patches, but the model "
                       f"has {self.num_positions - 1} patch positions (image_size mismatch)")
    x = x.reshape(b, h * w, c)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, c)), x], axis=1)
    pos = nn.Embed(self.num_positions, self.width, embedding_init=nn.initializers.normal(0.02),
                   name="position_embedding").embedding
    return x + pos.astype(x.dtype)[None]


class VisionTransformer(nn.Module):
  """Returns ln_post(class token): the pre-projection image feature."""

  config: CLIPConfig
  peft: peft_lib.PEFTConfig = peft_lib.PEFTConfig()

  @nn.compact
  def __call__(self, images):
    c, v = self.config, self.config.vision
    dtype = jnp.dtype(c.dtype)
    n_pos = (v.image_size // v.patch_size) ** 2 + 1
    x = VisionEmbeddings(v.patch_size, v.width, n_pos, dtype, name="embeddings")(images)
    x = _layer_norm(v.ln_eps, "pre_layrnorm")(x).astype(dtype)  # sic: the HF name
    blocks = tuple(self.peft.block(i, v.layers) for i in range(v.layers))
    spec = BlockSpec(v.width, v.heads, v.mlp_dim, v.ln_eps, c.act, False, dtype, c.attention,
                     peft_lib.vpt_init_bound(v.patch_size, v.width))
    x = Encoder(spec, blocks, c.remat, c.scan, name="encoder")(x)
    return _layer_norm(v.ln_eps, "post_layernorm")(x[:, 0])


class TextEmbeddings(nn.Module):
  vocab_size: int
  context_length: int
  width: int

  def setup(self):
    self.token_embedding = nn.Embed(self.vocab_size, self.width, embedding_init=nn.initializers.normal(0.02))
    self.position_embedding = nn.Embed(self.context_length, self.width,
                                       embedding_init=nn.initializers.normal(0.01))


class TextTransformer(nn.Module):
  """Causal text transformer pooled at the end-of-text token.

  ``embed_tokens`` + ``encode_embeds`` let a prompt learner replace word embeddings by learned vectors;
  ``__call__(ids)`` is their composition with pooling at the end-of-text position.
  """

  config: CLIPConfig

  def setup(self):
    c, t = self.config, self.config.text
    self.embeddings = TextEmbeddings(t.vocab_size, t.context_length, t.width)
    blocks = tuple(peft_lib.BlockPEFT() for _ in range(t.layers))
    spec = BlockSpec(t.width, t.heads, t.mlp_dim, t.ln_eps, c.act, True, jnp.dtype(c.dtype), c.attention)
    self.encoder = Encoder(spec, blocks, c.remat, c.scan)
    self.final_layer_norm = _layer_norm(t.ln_eps, "final_layer_norm")

  def embed_tokens(self, ids):
    return self.embeddings.token_embedding(ids)

  def eot_positions(self, ids):
    eos = self.config.text.eos_token_id
    if eos == 2:
      return jnp.argmax(ids, axis=-1)
    return jnp.argmax(ids == eos, axis=-1)

  def encode_embeds(self, embeds, eot_positions):
    """Token embeddings [B, T, width] (T <= context_length) -> pooled features [B, width]."""
    t = embeds.shape[1]
    if t > self.config.text.context_length:
      raise ConfigError(f"{t} tokens exceed the context length {self.config.text.context_length}")
    dtype = jnp.dtype(self.config.dtype)
    x = (embeds + self.embeddings.position_embedding.embedding[:t][None]).astype(dtype)
    x = self.final_layer_norm(self.encoder(x))
    return jnp.take_along_axis(x, eot_positions[:, None, None].astype(jnp.int32), axis=1)[:, 0]

  def encode_prefix(self, embeds):
    """The first P token embeddings [G, P, width] that G groups of prompts share -> their keys and values at
    every layer, (k, v) each [layers, G, P, heads, head_dim]: what :meth:`encode_suffix` continues from."""
    p = embeds.shape[1]
    if p > self.config.text.context_length:
      raise ValueError(f"{p} prefix tokens exceed the context length {self.config.text.context_length}")
    pos = self.embeddings.position_embedding.embedding[:p]
    return self.encoder((embeds + pos[None]).astype(jnp.dtype(self.config.dtype)), mode="prefix")

  def encode_suffix(self, prefix_kv, embeds, eot_positions):
    """The rest of each prompt, [G, N, S, width] (token j sits at position P + j), after its group's prefix
    (``prefix_kv`` from :meth:`encode_prefix`) -> pooled features [G, N, width] at ``eot_positions`` [N]
    (indices into the suffix). Tokens after a suffix's end of text are padding: causality keeps them out of
    every real token, and their positions are clipped to the context length."""
    p, s = prefix_kv[0].shape[2], embeds.shape[2]
    ctx_len = self.config.text.context_length
    pos = self.embeddings.position_embedding.embedding[np.minimum(p + np.arange(s), ctx_len - 1)]
    x = (embeds + pos[None, None]).astype(jnp.dtype(self.config.dtype))
    return self.final_layer_norm(self.encoder(x, prefix_kv, mode="suffix", pool=eot_positions))

  def __call__(self, ids):
    return self.encode_embeds(self.embed_tokens(ids), self.eot_positions(ids))


class CLIP(nn.Module):
  """The CLIP dual encoder. Use ``model.apply(variables, ..., method=CLIP.encode_image)`` etc."""

  config: CLIPConfig
  peft: peft_lib.PEFTConfig = peft_lib.PEFTConfig()

  def setup(self):
    c = self.config
    self.vision_model = VisionTransformer(c, self.peft)
    self.text_model = TextTransformer(c)
    self.visual_projection = nn.Dense(c.embed_dim, use_bias=False, dtype=jnp.dtype(c.dtype))
    self.text_projection = nn.Dense(c.embed_dim, use_bias=False, dtype=jnp.dtype(c.dtype))
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(c.logit_scale_init), ())

  def encode_image(self, images, *, return_pooled: bool = False):
    """Projected (unnormalised, float32) image features; optionally also the pooled feature."""
    pooled = self.vision_model(images)
    feats = self.visual_projection(pooled.astype(jnp.dtype(self.config.dtype))).astype(jnp.float32)
    return (feats, pooled) if return_pooled else feats

  def encode_text(self, ids):
    pooled = self.text_model(ids)
    return self.text_projection(pooled.astype(jnp.dtype(self.config.dtype))).astype(jnp.float32)

  def embed_tokens(self, ids):
    return self.text_model.embed_tokens(ids)

  def eot_positions(self, ids):
    return self.text_model.eot_positions(ids)

  def encode_text_embeds(self, embeds, eot_positions):
    pooled = self.text_model.encode_embeds(embeds, eot_positions)
    return self.text_projection(pooled.astype(jnp.dtype(self.config.dtype))).astype(jnp.float32)

  def encode_text_prefix(self, embeds):
    """Keys and values of a prefix that groups of prompts share (see ``TextTransformer.encode_prefix``)."""
    return self.text_model.encode_prefix(embeds)

  def encode_text_suffix(self, prefix_kv, embeds, eot_positions):
    """Projected (unnormalised, float32) features [G, N, embed_dim] of prompts continuing a shared prefix."""
    pooled = self.text_model.encode_suffix(prefix_kv, embeds, eot_positions)
    return self.text_projection(pooled.astype(jnp.dtype(self.config.dtype))).astype(jnp.float32)

  def __call__(self, images, ids):
    img = normalize(self.encode_image(images))
    txt = normalize(self.encode_text(ids))
    logits = jnp.exp(self.logit_scale) * img @ txt.T
    return {"image_embeds": img, "text_embeds": txt, "logits_per_image": logits}


def normalize(x, eps: float = 0.0):
  """L2-normalises the last axis (float32)."""
  x = x.astype(jnp.float32)
  return x / (jnp.linalg.norm(x, axis=-1, keepdims=True) + eps)


def init_params(model: CLIP, rng, *, batch: int = 1) -> dict:
  """Initialises all parameters (both towers) of a CLIP module."""
  c = model.config
  images = jnp.zeros((batch, c.vision.image_size, c.vision.image_size, 3), jnp.float32)
  ids = jnp.zeros((batch, c.text.context_length), jnp.int32)
  return model.init(rng, images, ids)["params"]
