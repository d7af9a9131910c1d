"""The registry of data sources: ``data.source`` names one, and its loader turns the data config into splits.

Adding a dataset layout is a loader beside the others (folders.py for folder layouts) registered with
``@register("name")``, and a config file that sets ``data.source = "name"``:

  @sources.register("my_layout")
  def _my_layout(cfg):                      # cfg: the data ConfigDict (deft_jax/data/config.py)
    return {"train": ..., "test": ...}      # LabeledSplits

``generic=True`` (the default) lets datasets.get_dataset apply ``data.train_indices`` and ``data.test_size``
after loading; sources that subset while loading (the CIFAR-10N ones) register with ``generic=False``.
"TFDS:<name>" sources are one loader for every TFDS dataset (tfds_sources.py).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from deft_jax.data.errors import DataError, UnknownSourceError


@dataclasses.dataclass(frozen=True)
class Source:
  name: str
  load: Callable
  generic: bool = True


SOURCES: dict[str, Source] = {}
TFDS_PREFIX = "tfds:"
PAPER_TFDS = ("cifar100", "caltech_birds2011", "cars196", "cifar10_n", "cifar100_n", "imagenet2012")


def register(name: str, *, generic: bool = True):
  def deco(fn):
    if name in SOURCES:
      raise ValueError(f"data source {name!r} is registered twice")
    SOURCES[name] = Source(name, fn, generic)
    return fn
  return deco


def known() -> list[str]:
  return [f"{TFDS_PREFIX}{n}" for n in PAPER_TFDS] + sorted(k for k in SOURCES if k != TFDS_PREFIX)


def get(name: str) -> Source:
  """The source of ``data.source`` ("tfds:<any TFDS name>" all share the TFDS loader)."""
  key = TFDS_PREFIX if name.startswith(TFDS_PREFIX) else name
  if key not in SOURCES:
    raise UnknownSourceError(f"unknown data.source {name!r}; known: {', '.join(known())} (or tfds:<any TFDS "
                             "image classification dataset>)")
  return SOURCES[key]


def need_root(cfg) -> str:
  if not cfg.root:
    raise DataError(f"data.source={cfg.source!r} needs data.root (the dataset's folder)")
  return cfg.root
