"""The one registry idiom: a table from a name to where its code is, imported when the name is used.

A registry (``data.sources.SOURCES``, ``baselines.BASELINES``, ``adapt.METHODS``) is a dict in its package whose
values are (or hold) an import path, ``"package.module"`` or ``"package.module:attribute"``; :func:`load` imports
it. Listing the names imports nothing (config_check reads them without JAX), and the table is the one place that
says what exists: adding an entry is its code plus one line in the table.
"""

from __future__ import annotations

import importlib


def load(target: str):
  """The module ``"package.module"``, or the attribute ``"package.module:attribute"`` of it."""
  module, _, attribute = target.partition(":")
  loaded = importlib.import_module(module)
  return getattr(loaded, attribute) if attribute else loaded
