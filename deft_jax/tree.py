"""Pytrees of nested dicts as flat '/'-joined paths, and field access on config-like dicts: the helpers every
layer (models, parallel, optim) shares. Nothing heavy is imported here."""

from __future__ import annotations

from typing import Any, Mapping

import jax

PathDict = dict[str, Any]


def flatten(tree: Mapping[str, Any], sep: str = "/") -> PathDict:
  """Nested dict -> ``{"a/b": leaf}``."""
  out: PathDict = {}

  def rec(node, prefix):
    if isinstance(node, Mapping):
      for k, v in node.items():
        rec(v, f"{prefix}{sep}{k}" if prefix else str(k))
    else:
      out[prefix] = node

  rec(tree, "")
  return out


def unflatten(flat: Mapping[str, Any], sep: str = "/") -> dict:
  """``{"a/b": leaf}`` -> nested dict."""
  out: dict = {}
  for path, leaf in flat.items():
    node = out
    *parents, last = path.split(sep)
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = leaf
  return out


def tree_paths(tree) -> list[str]:
  """'/'-joined paths of every leaf of a pytree of dicts, in flatten order."""
  paths, _ = zip(*jax.tree_util.tree_flatten_with_path(tree)[0]) if jax.tree_util.tree_leaves(tree) else ((), ())
  return ["/".join(_key_str(k) for k in p) for p in paths]


def _key_str(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def get(cfg, key: str, default=None):
  """``cfg.key`` for a ConfigDict, a dict or an object (dataclass), ``default`` when it has none."""
  if cfg is None:
    return default
  return cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
