"""ResNet-50 v1.5 (stride on the 3x3 conv, as torchvision / timm / HF) with PyTorch batch-norm semantics.

Parameter names (``stage{i}`` is timm's ``layer{i+1}``, HF's ``encoder.stages.{i}``)::

  stem_conv/kernel  stem_bn/{scale,bias}
  stage{i}_block{j}/{conv1,conv2,conv3,proj_conv}/kernel  .../{bn1,bn2,bn3,proj_bn}/{scale,bias}
  head/{kernel,bias}

Running statistics live in the ``batch_stats`` collection under the same paths (``.../mean``,
``.../var``) and change only in a ``train=True`` call with ``mutable=["batch_stats"]``.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from deft_jax.models.backbones.common import check_images

Dtype = Any

# torch's kaiming_normal_(mode="fan_out", nonlinearity="relu"), what timm and HF use for convs.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class BatchNorm(nn.Module):
  """Batch norm with PyTorch's semantics, computed in fp32.

  Normalises with the biased batch variance but feeds the *unbiased* one (n / (n - 1)) into the
  running variance, as ``torch.nn.BatchNorm2d`` does; ``flax.linen.BatchNorm`` uses the biased one,
  which would make running statistics drift from a PyTorch run of the same recipe. Under ``jit``
  with a data-sharded batch the statistics are over the global batch (synchronised BN).
  """

  momentum: float = 0.9  # Flax convention: new = momentum * old + (1 - momentum) * batch (torch 0.1)
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  zero_init_scale: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    c = x.shape[-1]
    scale_init = nn.initializers.zeros if self.zero_init_scale else nn.initializers.ones
    scale = self.param("scale", scale_init, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    x32 = x.astype(jnp.float32)
    if train:
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(x32, axes)
      var = jnp.mean(jnp.square(x32 - mean), axes)
      if not self.is_initializing():
        n = x.size // c
        unbiased = var * (n / max(n - 1, 1))
        ra_mean.value = self.momentum * ra_mean.value + (1.0 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1.0 - self.momentum) * unbiased
    else:
      mean, var = ra_mean.value, ra_var.value
    y = (x32 - mean) * (scale * jax.lax.rsqrt(var + self.epsilon)) + bias
    return y.astype(self.dtype)


def _conv(features: int, kernel: int, stride: int, dtype: Dtype, name: str) -> nn.Conv:
  # PyTorch pads k // 2 on both sides; Flax's "SAME" pads asymmetrically for stride 2 on even
  # sizes, which would shift every feature map by a pixel relative to the checkpoint.
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                 use_bias=False, dtype=dtype, param_dtype=jnp.float32, kernel_init=_conv_init, name=name)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided) -> 1x1 with a projection shortcut when the shape changes."""

  width: int
  stride: int = 1
  expansion: int = 4
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    out_ch = self.width * self.expansion
    bn = lambda name, **kw: BatchNorm(dtype=self.dtype, name=name, **kw)
    y = _conv(self.width, 1, 1, self.dtype, "conv1")(x)
    y = nn.relu(bn("bn1")(y, train=train))
    y = _conv(self.width, 3, self.stride, self.dtype, "conv2")(y)
    y = nn.relu(bn("bn2")(y, train=train))
    y = _conv(out_ch, 1, 1, self.dtype, "conv3")(y)
    # Zero-init of the last BN scale makes a freshly initialised block the identity (Goyal et al.);
    # pretrained weights overwrite it.
    y = bn("bn3", zero_init_scale=True)(y, train=train)
    if x.shape[-1] != out_ch or self.stride != 1:
      x = _conv(out_ch, 1, self.stride, self.dtype, "proj_conv")(x)
      x = bn("proj_bn")(x, train=train)
    return nn.relu(y + x)


class ResNet(nn.Module):
  """Bottleneck ResNet classifier (ResNet-50: ``depths=(3, 4, 6, 3)``, ``width=64``).

  ``width`` is the stem's channel count and the first stage's bottleneck width; stage ``i`` has
  bottleneck width ``width * 2**i`` and ``4 * width * 2**i`` output channels.
  """

  num_classes: int
  depths: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool, return_features: bool = False):
    """NHWC float images -> fp32 logits ``[B, num_classes]`` (and pooled features if asked).

    Args:
      images: normalised images ``[B, H, W, 3]``.
      train: batch statistics (and running-stat updates: pass ``mutable=["batch_stats"]``)
        when True, running statistics when False.
      return_features: also return the pooled pre-head features ``[B, 4 * width * 8]`` (fp32).
    """
    check_images(images)
    x = _conv(self.width, 7, 2, self.dtype, "stem_conv")(images.astype(self.dtype))
    x = nn.relu(BatchNorm(dtype=self.dtype, name="stem_bn")(x, train=train))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, depth in enumerate(self.depths):
      for j in range(depth):
        stride = 2 if i > 0 and j == 0 else 1
        x = Bottleneck(self.width * 2**i, stride=stride, dtype=self.dtype,
                       name=f"stage{i}_block{j}")(x, train=train)
    features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    logits = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32,
                      kernel_init=nn.initializers.zeros, name="head")(features)
    return (logits, features) if return_features else logits
