"""Phase 2: a classifier trained on the examples judged clean, then evaluated (the stage: ``train.run``).

:data:`METHODS` is the registry of phase-2 methods (deft_jax/registry.py): ``adapt.method`` -> its builder,
``(methods.Context) -> classify.classifier.Classifier``, and whether it trains on the selected labels (the others
only evaluate). Adding a method is a builder (adapt/methods.py) and its line here.
"""

from __future__ import annotations

import dataclasses

from deft_jax import registry


@dataclasses.dataclass(frozen=True)
class Method:
  build: str  # "module:function" of its builder
  trains: bool  # it trains on the selected labels (adapt.train_on); else it only evaluates


METHODS = {
    "fft": Method("deft_jax.adapt.methods:fft", trains=True),  # adapt.backbone: CLIP or a models.backbones model
    "peft": Method("deft_jax.adapt.methods:peft", trains=True),
    "vlpt": Method("deft_jax.adapt.methods:vlpt", trains=True),
    "none": Method("deft_jax.adapt.methods:learned_prompts", trains=False),
    "zeroshot": Method("deft_jax.adapt.methods:zeroshot", trains=False),
}


def get(name: str) -> Method:
  """The method ``adapt.method`` names; an unknown name is an error listing the known ones."""
  if name not in METHODS:
    from deft_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
    raise ConfigError(f"unknown adapt.method {name!r}; choose one of {tuple(METHODS)}")
  return METHODS[name]


def trains(config) -> bool:
  """Whether ``config.adapt.method`` trains on the selected labels (and so needs a selection)."""
  return get(config.adapt.method).trains


def build(name: str, ctx):
  """The classifier of method ``name`` (see adapt/methods.py)."""
  return registry.load(get(name).build)(ctx)
