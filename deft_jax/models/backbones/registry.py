"""Named phase-2 backbones: constructor, preprocessing, public checkpoints and the reference's optimiser.

``get_backbone("resnet50").build(num_classes)`` gives a Flax module whose ``__call__(images, *, train)``
returns logits; ``load_pretrained`` (loading.py) fills it from a checkpoint. The optimiser entry is
plain data; ``deft_jax/optim.py`` turns it into optax.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from deft_jax.models.backbones.convnext import ConvNeXt
from deft_jax.models.backbones.resnet import ResNet
from deft_jax.models.backbones.vit import ViT
from deft_jax.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """The reference's fine-tuning optimiser for a backbone, in PyTorch terms.

  ``decoupled_weight_decay``: True for torch AdamW (decay ``lr * wd * param`` outside the adaptive
  update: ``optax.adamw``); False for torch SGD, whose ``weight_decay`` is an L2 term added to the
  gradient before momentum (``optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum))``).
  """

  name: str  # "sgd" | "adamw"
  learning_rate: float
  weight_decay: float
  momentum: float = 0.0  # sgd only; 0 = plain SGD
  decoupled_weight_decay: bool = False


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
  """Everything the adaptation stage needs to know about one backbone.

  Attributes:
    name: registry name.
    family: "resnet" | "convnext" | "vit" (selects the checkpoint mapping).
    module: the Flax module class; ``kwargs`` its architecture fields.
    image_size, mean, std: preprocessing (images arrive normalised with this mean/std).
    optimizer: the reference's optimiser for fine-tuning this backbone.
    checkpoints: public safetensors checkpoints (hub ids) that fit; the first is the reference's.
    has_batch_stats: True when variables carry a ``batch_stats`` collection (train with
      ``mutable=["batch_stats"]``).
  """

  name: str
  family: str
  module: type[nn.Module]
  kwargs: Mapping[str, Any]
  image_size: int
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  optimizer: OptimizerSpec
  checkpoints: tuple[str, ...] = ()
  has_batch_stats: bool = False

  def __hash__(self) -> int:  # kwargs is a dict; the name identifies a registry entry
    return hash((self.name, self.family, self.image_size))

  def build(self, num_classes: int, dtype: Any = jnp.float32, **overrides) -> nn.Module:
    """The model with a new ``num_classes`` head; ``overrides`` replace architecture fields
    (e.g. ``drop_path_rate=0.1``, ``pool="avg"``, ``attention_impl="cudnn"``)."""
    if num_classes < 1:
      raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    fields = {f.name for f in dataclasses.fields(self.module)}
    bad = sorted(set(overrides) - fields)
    if bad:
      raise ConfigError(f"{self.name}: unknown model option(s) {bad}; {self.module.__name__} has "
                       f"{sorted(fields - {'parent', 'name'})}")
    return self.module(num_classes=num_classes, dtype=dtype, **{**self.kwargs, **overrides})

  def dummy_images(self, batch_size: int = 1, model: nn.Module | None = None) -> jax.Array:
    """Zeros ``[batch_size, S, S, 3]`` for ``init`` / ``eval_shape``; S is the model's
    ``image_size`` when it has one (ViT built with another size), else the spec's."""
    size = getattr(model, "image_size", self.image_size)
    return jnp.zeros((batch_size, size, size, 3), jnp.float32)

  def init(self, model: nn.Module, rng: jax.Array, batch_size: int = 1) -> dict:
    """Freshly initialised variables (``params`` and, for ResNet, ``batch_stats``)."""
    init = jax.jit(lambda r: model.init(r, self.dummy_images(batch_size, model), train=False))
    return dict(init(rng))


_OPT_VIT = OptimizerSpec("sgd", 1e-2, 1e-5, momentum=0.0)
_OPT_RESNET = OptimizerSpec("adamw", 1e-3, 1e-5, decoupled_weight_decay=True)
_OPT_CONVNEXT = OptimizerSpec("adamw", 1e-4, 1e-4, decoupled_weight_decay=True)
_OPT_MAE = OptimizerSpec("adamw", 1e-4, 1e-3, decoupled_weight_decay=True)

_VIT_B16 = dict(image_size=224, patch_size=16, width=768, depth=12, num_heads=12, mlp_dim=3072)
_VIT_TINY = dict(image_size=32, patch_size=8, width=32, depth=2, num_heads=2, mlp_dim=64)

_SPECS = [
    BackboneSpec("resnet50", "resnet", ResNet, dict(depths=(3, 4, 6, 3), width=64), 224,
                 IMAGENET_MEAN, IMAGENET_STD, _OPT_RESNET,
                 ("timm/resnet50.a1_in1k", "microsoft/resnet-50"), has_batch_stats=True),
    BackboneSpec("convnext_tiny", "convnext", ConvNeXt, dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)), 224,
                 IMAGENET_MEAN, IMAGENET_STD, _OPT_CONVNEXT,
                 ("timm/convnext_tiny.fb_in1k", "facebook/convnext-tiny-224")),
    BackboneSpec("vit_b16", "vit", ViT, dict(_VIT_B16, pool="token"), 224,
                 INCEPTION_MEAN, INCEPTION_STD, _OPT_VIT,
                 ("timm/vit_base_patch16_224.augreg_in1k", "google/vit-base-patch16-224")),
    # Token pooling = what the reference's timm.create_model("vit_base_patch16_224.mae") builds;
    # build(..., pool="avg") for MAE's own fine-tuning recipe (see vit.py).
    BackboneSpec("mae_vit_b16", "vit", ViT, dict(_VIT_B16, pool="token"), 224,
                 IMAGENET_MEAN, IMAGENET_STD, _OPT_MAE,
                 ("timm/vit_base_patch16_224.mae", "facebook/vit-mae-base")),
    # Tiny variants for tests and runlocal configs (same families, same optimiser entries).
    BackboneSpec("resnet_tiny", "resnet", ResNet, dict(depths=(1, 1, 1, 1), width=8), 32,
                 IMAGENET_MEAN, IMAGENET_STD, _OPT_RESNET, has_batch_stats=True),
    BackboneSpec("convnext_tiny_test", "convnext", ConvNeXt, dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64)), 32,
                 IMAGENET_MEAN, IMAGENET_STD, _OPT_CONVNEXT),
    BackboneSpec("vit_tiny_test", "vit", ViT, dict(_VIT_TINY, pool="token"), 32,
                 INCEPTION_MEAN, INCEPTION_STD, _OPT_VIT),
    BackboneSpec("mae_vit_tiny_test", "vit", ViT, dict(_VIT_TINY, pool="avg"), 32,
                 IMAGENET_MEAN, IMAGENET_STD, _OPT_MAE),
]
BACKBONES: dict[str, BackboneSpec] = {s.name: s for s in _SPECS}


def get_backbone(name: str) -> BackboneSpec:
  """The registry entry for ``name`` (e.g. from ``--config.adapt.backbone=resnet50``)."""
  try:
    return BACKBONES[name]
  except KeyError:
    raise ConfigError(f"unknown backbone {name!r}; known: {sorted(BACKBONES)}") from None
