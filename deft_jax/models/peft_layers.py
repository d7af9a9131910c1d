"""The PEFT layers of the visual blocks: LoRA, SSF and bottleneck adapters (Flax Linen).

Which block carries which of them, and under which parameter names, is decided by ``peft.BlockPEFT``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from deft_jax.models import peft as peft_lib


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


def normal_init(mean: float, std: float):
  def init(key, shape, dtype=jnp.float32):
    return mean + std * jax.random.normal(key, shape, dtype)
  return init


class SSF(nn.Module):
  """Learnable per-channel scale and shift, initialised as the reference: scale ~ N(1, 0.02), shift ~ N(0, 0.02)
  (so, unlike LoRA, SSF moves the pretrained function slightly at init)."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    scale = self.param("scale", normal_init(1.0, 0.02), (d,))
    shift = self.param("shift", normal_init(0.0, 0.02), (d,))
    return x * scale.astype(self.dtype) + shift.astype(self.dtype)


class Adapter(nn.Module):
  """The reference's bottleneck: up(relu(down(LayerNorm(h)))) with no residual of its own. Its block adds it to
  the residual stream in place of the MLP output h (``residual=False``, the reference), or beside it
  (``residual=True``: h + adapter(h), the pretrained function at init). down ~ N(0, 1 / (3 fan_in)) (PyTorch's
  kaiming_normal_(a=sqrt(5))), up = 0, biases 0, LayerNorm eps 1e-5 (PyTorch's)."""

  bottleneck: int
  dtype: Any = jnp.float32
  residual: bool = False

  @nn.compact
  def __call__(self, h):
    d = h.shape[-1]
    y = nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, param_dtype=jnp.float32, name="ln")(h).astype(self.dtype)
    y = nn.Dense(self.bottleneck, dtype=self.dtype, name="down",
                 kernel_init=nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "normal"))(y)
    y = nn.relu(y)
    y = nn.Dense(d, dtype=self.dtype, kernel_init=nn.initializers.zeros, name="up")(y)
    return h + y if self.residual else y


def peft_dense(x, features: int, name: str, site: str, peft: peft_lib.BlockPEFT, dtype):
  """A projection with the PEFT of its site: LoRA's low-rank residual and SSF's scale and shift."""
  y = nn.Dense(features, dtype=dtype, name=name)(x)
  if peft.ssf:  # the reference scales and shifts the projection, then adds LoRA's residual (CLIP.py)
    y = SSF(dtype, name=peft_lib.ssf_name(site))(y)
  if site in peft.lora_targets:
    y = y + LoRA(features, peft.lora_rank, peft.lora_scale, dtype, name=peft_lib.lora_name(site))(x)
  return y
