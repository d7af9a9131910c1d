"""Layers shared by the phase-2 backbones: fp32 LayerNorm and stochastic depth."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from deft_jax.errors import ConfigError

Dtype = Any


def layer_norm(eps: float, name: str | None = None) -> nn.LayerNorm:
  """A LayerNorm that always computes (and returns) fp32, whatever the compute dtype.

  ``use_fast_variance=False`` because E[x^2] - E[x]^2 loses digits on the large activations of
  pretrained ConvNeXts/ViTs; the two-pass variance is what PyTorch computes.
  """
  return nn.LayerNorm(epsilon=eps, dtype=jnp.float32, param_dtype=jnp.float32,
                      use_fast_variance=False, name=name)


class DropPath(nn.Module):
  """Stochastic depth: drops the whole residual branch per example, rescaling the kept ones.

  Only draws from the ``'dropout'`` rng when ``train`` and ``rate > 0``, so evaluation and
  rate-0 training need no rng at all.
  """

  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if not 0.0 <= self.rate < 1.0:
      raise ConfigError(f"drop path rate must be in [0, 1), got {self.rate}")
    if not train or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros_like(x))


def drop_path_rates(rate: float, depths: tuple[int, ...] | list[int]) -> list[list[float]]:
  """Per-block stochastic-depth rates rising linearly from 0 to ``rate`` (timm/ConvNeXt rule)."""
  total = sum(depths)
  flat = [rate * i / max(total - 1, 1) for i in range(total)]
  out, start = [], 0
  for d in depths:
    out.append(flat[start:start + d])
    start += d
  return out


def check_images(images: jax.Array, image_size: int | None = None) -> None:
  """Raises ValueError unless ``images`` is NHWC with 3 channels (and the expected size)."""
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ConfigError(f"expected NHWC images with 3 channels, got shape {tuple(images.shape)}")
  if image_size is not None and tuple(images.shape[1:3]) != (image_size, image_size):
    raise ConfigError(
        f"this model was built for {image_size}x{image_size} images (its position embedding has that "
        f"grid), got {images.shape[1]}x{images.shape[2]}; build it with image_size={images.shape[1]}")
