"""Vision Transformer classifier: supervised ViT-B/16 (augreg) and the MAE ViT-B encoder.

Class token, learned position embedding (class token included), pre-norm blocks, exact GELU,
LayerNorm eps 1e-6. Parameter names (``block{i}`` is timm's ``blocks.{i}``, HF's ``encoder.layer.{i}``)::

  patch_embed/{kernel,bias}  cls_token [1, 1, D]  pos_embed [1, 1 + N, D]
  block{i}/norm1, block{i}/norm2                     {scale,bias}
  block{i}/attn/qkv/{kernel [D, 3, H, Dh], bias [3, H, Dh]}
  block{i}/attn/out/{kernel [H, Dh, D], bias [D]}
  block{i}/mlp/{fc1,fc2}/{kernel,bias}
  norm/{scale,bias}       (pool="token")    or    fc_norm/{scale,bias}   (pool="avg")
  head/{kernel,bias}

Pooling, and which checkpoint it matches:

* ``pool="token"``: final LayerNorm on all tokens, head on the class token. This is
  ``vit_base_patch16_224.augreg_in1k``, HF ``google/vit-base-patch16-224``, and also what
  ``timm.create_model("vit_base_patch16_224.mae")`` builds by default (timm's default
  ``global_pool="token"``; the MAE checkpoint's ``norm`` is its pretraining final norm).
* ``pool="avg"``: mean of the patch tokens (class token excluded), then ``fc_norm``, then the head:
  the MAE paper's fine-tuning recipe (timm ``global_pool="avg"``). Its ``fc_norm`` is new; loading a
  pretraining checkpoint drops that checkpoint's final ``norm`` by name, as MAE's own code does.

LayerNorm eps is 1e-6 as in the original (big_vision / MAE) and timm models; HF's ViT configs say
1e-12, a difference far below fp32 noise on real activations (``norm_eps`` overrides it).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from deft_jax.models.backbones.common import DropPath, check_images, drop_path_rates, layer_norm
from deft_jax.errors import ConfigError

Dtype = Any

_dense_init = nn.initializers.xavier_uniform()


class Attention(nn.Module):
  """Multi-head self-attention through ``jax.nn.dot_product_attention`` (softmax in fp32)."""

  num_heads: int
  dtype: Dtype = jnp.float32
  implementation: str | None = None  # None/"xla" anywhere; "cudnn" for fused GPU attention in bf16

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dim = x.shape[-1]
    if dim % self.num_heads:
      raise ConfigError(f"width {dim} is not divisible by num_heads {self.num_heads}")
    head_dim = dim // self.num_heads
    qkv = nn.DenseGeneral((3, self.num_heads, head_dim), dtype=self.dtype, param_dtype=jnp.float32,
                          kernel_init=_dense_init, name="qkv")(x)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # each [B, T, H, Dh]
    y = jax.nn.dot_product_attention(q, k, v, implementation=self.implementation)
    return nn.DenseGeneral(dim, axis=(-2, -1), dtype=self.dtype, param_dtype=jnp.float32,
                           kernel_init=_dense_init, name="out")(y)


class Mlp(nn.Module):
  hidden: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dense = lambda f, name: nn.Dense(f, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=_dense_init,
                                     bias_init=nn.initializers.normal(1e-6), name=name)
    y = nn.gelu(dense(self.hidden, "fc1")(x), approximate=False)
    return dense(x.shape[-1], "fc2")(y)


class _BlockSettings(nn.Module, kw_only=True):
  """What a ViT hands on to each of its blocks (keyword-only fields of both)."""

  norm_eps: float = 1e-6
  dtype: Dtype = jnp.float32
  attention_impl: str | None = None  # Attention.implementation


class Block(_BlockSettings):
  """Pre-norm transformer block: x + attn(norm1(x)); x + mlp(norm2(x))."""

  num_heads: int
  mlp_dim: int
  drop_path: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y = layer_norm(self.norm_eps, "norm1")(x).astype(self.dtype)
    y = Attention(self.num_heads, dtype=self.dtype, implementation=self.attention_impl, name="attn")(y)
    x = x + DropPath(self.drop_path)(y, train=train)
    y = layer_norm(self.norm_eps, "norm2")(x).astype(self.dtype)
    y = Mlp(self.mlp_dim, dtype=self.dtype, name="mlp")(y)
    return x + DropPath(self.drop_path)(y, train=train)


class ViT(_BlockSettings):
  """ViT classifier; ViT-B/16 defaults. See the module docstring for ``pool``."""

  num_classes: int
  image_size: int = 224
  patch_size: int = 16
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  pool: str = "token"
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool, return_features: bool = False):
    """NHWC float images -> fp32 logits ``[B, num_classes]`` (and pooled features if asked).

    Training with ``drop_path_rate > 0`` needs a ``'dropout'`` rng.
    """
    if self.pool not in ("token", "avg"):
      raise ConfigError(f"ViT pool must be 'token' or 'avg', got {self.pool!r}")
    if self.image_size % self.patch_size:
      raise ConfigError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
    check_images(images, self.image_size)
    p = self.patch_size
    x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                param_dtype=jnp.float32, kernel_init=nn.initializers.lecun_normal(),
                name="patch_embed")(images.astype(self.dtype))
    b, gh, gw, d = x.shape
    x = x.reshape(b, gh * gw, d)
    cls = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, d), jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, d)), x], axis=1)
    pos = self.param("pos_embed", nn.initializers.normal(0.02), (1, 1 + gh * gw, d), jnp.float32)
    x = x + pos.astype(x.dtype)
    for i, rate in enumerate(drop_path_rates(self.drop_path_rate, [self.depth])[0]):
      x = Block(self.num_heads, self.mlp_dim, norm_eps=self.norm_eps, drop_path=rate, dtype=self.dtype,
                attention_impl=self.attention_impl, name=f"block{i}")(x, train=train)
    if self.pool == "token":
      features = layer_norm(self.norm_eps, "norm")(x[:, 0])  # per-token norm: only the class token is used
    else:
      features = layer_norm(self.norm_eps, "fc_norm")(jnp.mean(x[:, 1:].astype(jnp.float32), axis=1))
    logits = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32,
                      kernel_init=nn.initializers.zeros, name="head")(features)
    return (logits, features) if return_features else logits
