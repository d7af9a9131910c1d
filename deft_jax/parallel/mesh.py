"""Meshes, sharding rules and global batches.

Sharding is configuration, not code (as in big_vision):

- ``mesh``: a list of ``(axis_name, size)``; one size may be -1 (all remaining devices). Default
  ``[("data", -1)]``: pure data parallelism.
- ``sharding_rules``: ``(regex, rule)`` pairs matched with ``re.search`` against '/'-joined paths of any
  state pytree (parameters, optimiser state, ...), first match wins, default ``replicate``. A rule is
  ``"replicate"`` or ``"fsdp"`` / ``"fsdp:<axis>"``: shard the largest dimension divisible by the axis size
  (ZeRO-3 style; small or indivisible arrays stay replicated).

Batches are split along their leading axis over every mesh axis. ``jax.jit`` with these shardings is the
modern pjit. Host code reads state through :func:`to_host`: with several processes an "fsdp" array lives partly
on other processes' devices, and ``jax.device_get`` / ``np.asarray`` refuse it.
"""

from __future__ import annotations

import re
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from deft_jax.tree import tree_paths
from deft_jax.errors import ConfigError


def make_mesh(axes: Sequence[tuple[str, int]] = (("data", -1),), devices=None) -> Mesh:
  """A ``jax.sharding.Mesh`` over all (or the given) devices, with classic (auto) axis types."""
  devices = list(jax.devices() if devices is None else devices)
  axes = [(str(n), int(s)) for n, s in axes]
  sizes = [s for _, s in axes]
  if sizes.count(-1) > 1:
    raise ConfigError(f"mesh {axes}: at most one axis may have size -1")
  known = int(np.prod([s for s in sizes if s != -1])) if any(s != -1 for s in sizes) else 1
  if len(devices) % known:
    raise ConfigError(f"mesh {axes} does not divide the {len(devices)} available devices")
  sizes = [len(devices) // known if s == -1 else s for s in sizes]
  if int(np.prod(sizes)) != len(devices):
    raise ConfigError(f"mesh {axes} needs {int(np.prod(sizes))} devices, {len(devices)} are available")
  return Mesh(np.asarray(devices).reshape(sizes), tuple(n for n, _ in axes))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every mesh axis."""
  return NamedSharding(mesh, P(mesh.axis_names))


def _fsdp_spec(shape, axis: str, mesh: Mesh) -> P:
  size = mesh.shape[axis]
  dims = sorted(range(len(shape)), key=lambda d: -shape[d])
  for d in dims:
    if shape[d] % size == 0 and shape[d] >= size:
      spec = [None] * len(shape)
      spec[d] = axis
      return P(*spec)
  return P()


def shardings_for(tree, mesh: Mesh, rules: Sequence[tuple[str, str]] = ()):
  """A tree of NamedShardings for ``tree`` (arrays or ShapeDtypeStructs) following ``rules``."""
  paths = tree_paths(tree)
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  out = []
  for path, leaf in zip(paths, leaves):
    rule = "replicate"
    for pattern, r in rules:
      if re.search(pattern, path):
        rule = r
        break
    shape = getattr(leaf, "shape", ())
    if rule == "replicate" or not shape:
      out.append(NamedSharding(mesh, P()))
    elif rule.startswith("fsdp"):
      axis = rule.split(":", 1)[1] if ":" in rule else mesh.axis_names[0]
      if axis not in mesh.axis_names:
        raise ConfigError(f"sharding rule {pattern!r}: axis {axis!r} is not in the mesh {mesh.axis_names}")
      out.append(NamedSharding(mesh, _fsdp_spec(shape, axis, mesh)))
    else:
      raise ConfigError(f"unknown sharding rule {rule!r} for {pattern!r}; use 'replicate' or 'fsdp[:axis]'")
  return jax.tree_util.tree_unflatten(treedef, out)


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """Host-local NumPy batch -> global jax.Arrays split along the batch axis (works on one or many hosts)."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def addressable(tree):
  """``tree`` with every array that lies partly on other processes' devices replicated onto all devices, so that
  each process can read it whole; every other leaf unchanged (not copied). A collective when something must be
  replicated: every process calls it at the same point of the program (as every process handles its stage's
  state). With one process, or replicated state, it does nothing."""
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  spread = [i for i, x in enumerate(leaves) if isinstance(x, jax.Array) and not x.is_fully_addressable]
  if spread:
    targets = [NamedSharding(leaves[i].sharding.mesh, P()) for i in spread]
    gathered = jax.jit(lambda xs: xs, out_shardings=targets)([leaves[i] for i in spread])
    for i, x in zip(spread, gathered):
      leaves[i] = x
  return jax.tree_util.tree_unflatten(treedef, leaves)


def to_host(tree):
  """NumPy copies of the arrays of ``tree``, whole on every process however they are sharded (see
  :func:`addressable`)."""
  return jax.device_get(addressable(tree))


def gather_by_index(chunks: list[dict], num_examples: int) -> dict[str, np.ndarray]:
  """Concatenates per-batch outputs and orders them by example index; each index must appear exactly once."""
  host = jax.device_get(chunks)
  valid = np.concatenate([c["valid"] for c in host])
  index = np.concatenate([c["index"] for c in host])[valid]
  counts = np.bincount(index, minlength=num_examples)
  if len(counts) != num_examples or (counts != 1).any():
    missing, dup = np.flatnonzero(counts == 0), np.flatnonzero(counts > 1)
    raise RuntimeError(f"scoring pass covered the dataset incorrectly: {len(missing)} example(s) missing "
                       f"(e.g. {missing[:5].tolist()}), {len(dup)} seen more than once (e.g. {dup[:5].tolist()})")
  order = np.argsort(index)
  out = {}
  for k in host[0]:
    if k in ("valid", "index"):
      continue
    out[k] = np.concatenate([c[k] for c in host])[valid][order]
  return out
