"""The PEFT layers of the visual blocks: LoRA, SSF and bottleneck adapters (Flax Linen).

Which block carries which of them, and under which parameter names, is decided by ``peft.BlockPEFT``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def uniform_init(bound: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


class LoRA(nn.Module):
  """Low-rank residual B(A(x)) * scale, as the reference: A [in, rank] ~ U(-1/sqrt(rank), 1/sqrt(rank)) (what
  PyTorch's ``kaiming_uniform_(a=sqrt(5))`` gives a tensor of that shape, whose fan-in is its second axis),
  B [rank, out] zero-initialised, scale = alpha / rank (1 / rank by default)."""

  features: int
  rank: int
  scale: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1]
    a = self.param("lora_a", uniform_init(1.0 / np.sqrt(self.rank)), (fan_in, self.rank))
    b = self.param("lora_b", nn.initializers.zeros, (self.rank, self.features))
    y = jnp.dot(jnp.dot(x, a.astype(self.dtype)), b.astype(self.dtype))
    return y * jnp.asarray(self.scale, self.dtype)


class SSF(nn.Module):
  """Learnable per-channel scale and shift (identity at init)."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (d,))
    shift = self.param("shift", nn.initializers.zeros, (d,))
    return x * scale.astype(self.dtype) + shift.astype(self.dtype)


class Adapter(nn.Module):
  """Bottleneck MLP with its own residual; the up-projection starts at zero."""

  bottleneck: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    h = nn.Dense(self.bottleneck, dtype=self.dtype, name="down")(x)
    h = nn.relu(h)
    h = nn.Dense(d, dtype=self.dtype, kernel_init=nn.initializers.zeros, name="up")(h)
    return x + h
