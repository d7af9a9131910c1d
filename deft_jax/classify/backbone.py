"""A ``deft_jax.models.backbones`` model (ResNet-50, ConvNeXt-T, ViT-B/16, MAE) as a :class:`Classifier`: every
parameter trains, as in the paper; batch-norm statistics travel as a second variable collection."""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from deft_jax.classify.classifier import Classifier
from deft_jax.data.config import ImageSpec
from deft_jax.models import backbones


def backbone_classifier(name: str, *, num_classes: int, mesh, rng, inputs: ImageSpec, checkpoint: str = "",
                        dtype: str = "float32", use_reference_optimizer: bool = True,
                        sharding_rules: Sequence = (), attention_impl: Optional[str] = None) -> Classifier:
  """A ``deft_jax.models.backbones`` model with a new head; every parameter trains. Its own normalisation
  statistics replace ``inputs``' (the backbone was pretrained with them); ``inputs.image_size`` resizes a ViT.

  ``checkpoint``: "" = the backbone's reference checkpoint (random init when it has none, as the tiny test
  backbones), "none" = random init, else a path or hub id. ``attention_impl``: a ViT's attention backend
  (None: its default).
  """
  spec = backbones.get_backbone(name)
  overrides = {}
  if inputs.image_size and inputs.image_size != spec.image_size and spec.family == "vit":
    overrides["image_size"] = inputs.image_size  # the loader resamples the position embedding
  if attention_impl and spec.family == "vit":
    overrides["attention_impl"] = attention_impl
  model = spec.build(num_classes, dtype=jnp.dtype(dtype), **overrides)
  dummy = spec.dummy_images(1, model)
  pretrained = checkpoint != "none" and bool(checkpoint or spec.checkpoints)
  if not pretrained:
    logging.warning("adapt: backbone %s starts from random weights (no checkpoint)", name)

  def init():
    return dict(model.init(rng, dummy, train=False))

  def load(variables):
    return dict(backbones.load_pretrained(spec, jax.device_get(variables), checkpoint or None))

  mutable = [k for k in jax.eval_shape(init) if k != "params"]

  def apply(variables, images, *, train: bool = False, rng=None):
    rngs = {"dropout": rng} if (train and rng is not None) else None
    if train and mutable:
      logits, updates = model.apply(variables, images, train=True, mutable=mutable, rngs=rngs)
      return logits, dict(updates)
    return model.apply(variables, images, train=train, rngs=rngs), {}

  o = spec.optimizer
  optim = None
  if use_reference_optimizer:
    optim = {"name": o.name, "momentum": o.momentum, "weight_decay": o.weight_decay, "lr": o.learning_rate}
  size = getattr(model, "image_size", None) or inputs.image_size or spec.image_size  # convnets take any size
  spec_inputs = dataclasses.replace(inputs, image_size=int(size), mean=tuple(spec.mean), std=tuple(spec.std))
  return Classifier(name=name, apply=apply, init=init, rules=[(".*", 1.0)], inputs=spec_inputs, mesh=mesh,
                    sharding_rules=sharding_rules, load=load if pretrained else None, optim=optim)
