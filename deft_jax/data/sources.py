"""The registry of data sources: ``data.source`` names one, and its loader turns the data config into splits.

:data:`SOURCES` is the registry (deft_jax/registry.py): a name -> the import path of its loader, loaded when a
run reads that source. Adding a dataset layout is a loader beside the others (folders.py for folder layouts),
its line in :data:`SOURCES`, and a config file that sets ``data.source = "name"``:

  def my_layout_source(cfg):                # cfg: the data ConfigDict (deft_jax/data/config.py)
    return {"train": ..., "test": ...}      # LabeledSplits

  "my_layout": Source("deft_jax.data.folders:my_layout_source"),

``generic=True`` (the default) lets datasets.get_dataset apply ``data.train_indices`` and ``data.test_size``
after loading; sources that subset while loading (the CIFAR-10N ones) have ``generic=False``.
"TFDS:<name>" sources are one loader for every TFDS dataset (tfds_sources.py).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from deft_jax import registry
from deft_jax.data.errors import DataError, UnknownSourceError


@dataclasses.dataclass(frozen=True)
class Source:
  loader: str  # "module:function" of ``(data config) -> {"train": LabeledSplit, "test": ...}``
  generic: bool = True

  @property
  def load(self) -> Callable:
    return registry.load(self.loader)


TFDS_PREFIX = "tfds:"
PAPER_TFDS = ("cifar100", "caltech_birds2011", "cars196", "cifar10_n", "cifar100_n", "imagenet2012")
SOURCES = {
    "image_folder": Source("deft_jax.data.folders:image_folder_source"),
    "csv": Source("deft_jax.data.folders:csv_source"),
    "tiny_imagenet": Source("deft_jax.data.folders:tiny_imagenet_source"),
    "clothing1m": Source("deft_jax.data.folders:clothing1m_source"),
    "webvision": Source("deft_jax.data.folders:webvision_source"),
    "demo": Source("deft_jax.data.cifar_offline:demo_source", generic=False),
    "cifar10n_offline": Source("deft_jax.data.cifar_offline:cifar10n_offline_source", generic=False),
    TFDS_PREFIX: Source("deft_jax.data.tfds_sources:tfds_source"),
}


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
