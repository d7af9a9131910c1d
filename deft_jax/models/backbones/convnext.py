"""ConvNeXt (Liu et al., 2022); ConvNeXt-T is ``depths=(3, 3, 9, 3)``, ``dims=(96, 192, 384, 768)``.

Parameter names (``stage{i}`` is timm's ``stages.{i}``, HF's ``encoder.stages.{i}``)::

  stem_conv/{kernel,bias}  stem_norm/{scale,bias}
  downsample{i}_norm/{scale,bias}  downsample{i}_conv/{kernel,bias}        (i >= 1)
  stage{i}_block{j}/{dwconv,fc1,fc2}/{kernel,bias}  .../norm/{scale,bias}  .../gamma
  norm/{scale,bias}  head/{kernel,bias}

All LayerNorms use eps 1e-6 (original and timm); HF's config gives the final one 1e-12, a
negligible difference for real checkpoints (``norm_eps`` overrides all of them).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from deft_jax.models.backbones.common import DropPath, check_images, drop_path_rates, layer_norm
from deft_jax.errors import ConfigError

Dtype = Any

# timm's init for ConvNeXt convs and linears (only matters when training from scratch).
_init = nn.initializers.truncated_normal(0.02)


class _BlockSettings(nn.Module, kw_only=True):
  """What a ConvNeXt hands on to each of its blocks (keyword-only fields of both)."""

  layer_scale_init: float = 1e-6
  norm_eps: float = 1e-6
  dtype: Dtype = jnp.float32


class ConvNeXtBlock(_BlockSettings):
  """7x7 depthwise conv -> LayerNorm -> Linear(4C) -> exact GELU -> Linear(C) -> layer scale."""

  dim: int
  drop_path: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    dense = lambda f, name: nn.Dense(f, dtype=self.dtype, param_dtype=jnp.float32,
                                     kernel_init=_init, name=name)
    y = nn.Conv(self.dim, (7, 7), padding=((3, 3), (3, 3)), feature_group_count=self.dim,
                dtype=self.dtype, param_dtype=jnp.float32, kernel_init=_init, name="dwconv")(x)
    y = layer_norm(self.norm_eps, "norm")(y)
    y = nn.gelu(dense(4 * self.dim, "fc1")(y), approximate=False)
    y = dense(self.dim, "fc2")(y)
    gamma = self.param("gamma", nn.initializers.constant(self.layer_scale_init), (self.dim,), jnp.float32)
    y = y * gamma.astype(y.dtype)
    return x + DropPath(self.drop_path)(y, train=train)


class ConvNeXt(_BlockSettings):
  """ConvNeXt classifier: patchify stem, 4 stages, global average pool, LayerNorm, linear head.

  ``drop_path_rate`` is the stochastic-depth rate of the last block (linear from 0); training with
  a rate > 0 needs a ``'dropout'`` rng.
  """

  num_classes: int
  depths: Sequence[int] = (3, 3, 9, 3)
  dims: Sequence[int] = (96, 192, 384, 768)
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool, return_features: bool = False):
    """NHWC float images -> fp32 logits ``[B, num_classes]`` (and pooled features if asked)."""
    check_images(images)
    if len(self.depths) != len(self.dims):
      raise ConfigError(f"ConvNeXt depths {tuple(self.depths)} and dims {tuple(self.dims)} differ in length")
    conv = lambda f, k, name: nn.Conv(f, (k, k), strides=(k, k), padding="VALID", dtype=self.dtype,
                                      param_dtype=jnp.float32, kernel_init=_init, name=name)
    x = conv(self.dims[0], 4, "stem_conv")(images.astype(self.dtype))
    x = layer_norm(self.norm_eps, "stem_norm")(x).astype(self.dtype)
    rates = drop_path_rates(self.drop_path_rate, self.depths)
    for i, (depth, dim) in enumerate(zip(self.depths, self.dims)):
      if i > 0:
        x = layer_norm(self.norm_eps, f"downsample{i}_norm")(x)
        x = conv(dim, 2, f"downsample{i}_conv")(x)
      for j in range(depth):
        x = ConvNeXtBlock(dim, drop_path=rates[i][j], layer_scale_init=self.layer_scale_init,
                          norm_eps=self.norm_eps, dtype=self.dtype, name=f"stage{i}_block{j}")(x, train=train)
    features = layer_norm(self.norm_eps, "norm")(jnp.mean(x.astype(jnp.float32), axis=(1, 2)))
    logits = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32,
                      kernel_init=nn.initializers.zeros, name="head")(features)
    return (logits, features) if return_features else logits
