"""The one way a stage makes its train state and its step, written once for pretrain, detect, adapt and the
training baselines (big_vision's sequence).

  abstract  = jax.eval_shape(init, rng)                      shapes and dtypes only: no FLOPs, no memory
  shardings = parallel.shardings_for(abstract, mesh, rules)  sharding is config (parallel/)
  state     = checkpointer.restore(abstract on shardings)    a resumed run: nothing is built or loaded
           or load(jax.jit(init, out_shardings=shardings)(rng))
                                                             a new run: born sharded on the devices, then the
                                                             pretrained weights merged in (host side); with
                                                             ``loaded``, the leaves that load replaces are
                                                             neither computed nor compiled
  step      = jit_step(step_fn, shardings, mesh)             explicit shardings, the state donated

``init(rng) -> state`` must be a pure, jittable function of the key (random parameters, optimiser state,
per-example records); ``load(state) -> state`` may read files and must keep every shape and dtype (it gets
arrays each process can read whole, parallel.addressable). The
optimiser is built before, from the abstract parameters (``optim.make_optimizer`` accepts them).

``loaded(path) -> bool`` names the leaves (by "/"-joined key path) that ``load`` always replaces, e.g. every
pretrained CLIP weight. Their random values would be thrown away, yet computing them is most of what ``init``
compiles: a CLIP's random initialisation took 5-8 s of XLA:CPU compilation per stage. ``init`` is then jitted
for the other leaves only (the same values as before: the same keys, the same computation), and ``load`` gets
ShapeDtypeStructs in place of the rest; a leaf that ``load`` leaves abstract is a bug, reported by name.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import numpy as np

from deft_jax import parallel


def abstract_state(init: Callable[..., Any], *args) -> Any:
  """The state ``init(*args)`` would build, as ShapeDtypeStructs."""
  return jax.eval_shape(init, *args)


def with_shardings(abstract, shardings):
  """The abstract tree with its shardings attached: a restore target."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def place(tree, shardings):
  """Host or device arrays moved onto ``shardings`` (a matching tree), each leaf its own buffer.

  A tree may hold one array under two names (a ``load`` that starts two parameters from the same values);
  the step donates the state, and XLA refuses a buffer donated twice, so a repeated array is copied.
  """
  seen = set()

  def put(x, s):
    if isinstance(x, jax.Array):
      if id(x) in seen:
        x = np.array(x)  # a host copy: device_put makes it a new buffer
      else:
        seen.add(id(x))
    return jax.device_put(x if isinstance(x, jax.Array) else np.asarray(x), s)

  return jax.tree.map(put, tree, shardings)


def create(init: Callable[..., Any], *args, mesh, sharding_rules=(), checkpointer=None,
           load: Optional[Callable[[Any], Any]] = None,
           loaded: Optional[Callable[[str], bool]] = None) -> tuple[Any, Any]:
  """(state, shardings): restored from ``checkpointer``'s latest checkpoint when it has one, else initialised
  on the devices by ``init(*args)`` (the leaves ``loaded`` names excepted) and passed through ``load``."""
  abstract = abstract_state(init, *args)
  shardings = parallel.shardings_for(abstract, mesh, [tuple(r) for r in sharding_rules])
  if checkpointer is not None:
    restored = checkpointer.restore(with_shardings(abstract, shardings))
    if restored is not None:
      return restored, shardings
  if load is None or loaded is None:
    state = jax.jit(init, out_shardings=shardings)(*args)
  else:
    state = init_except(init, args, loaded, abstract=abstract, shardings=shardings)
  if load is not None:  # load reads the state on the host: each process must see its arrays whole
    state = load(parallel.addressable(state))
    unset = [path for path, x in flat_paths(state) if isinstance(x, jax.ShapeDtypeStruct)]
    if unset:
      raise RuntimeError(f"the state's load left {len(unset)} leaf/leaves it was said to replace unset: "
                         f"{unset[:5]}")
    state = place(state, shardings)
  return state, shardings


def flat_paths(tree) -> list[tuple[str, Any]]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [("/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path), x) for path, x in flat]


def init_except(init, args, loaded: Callable[[str], bool], *, abstract=None, shardings=None):
  """``init(*args)`` with the leaves ``loaded`` names left abstract (ShapeDtypeStructs): XLA compiles and runs
  only what computes the others (on ``shardings`` when given)."""
  abstract = abstract_state(init, *args) if abstract is None else abstract
  paths = flat_paths(abstract)
  keep = [not loaded(path) for path, _ in paths]
  treedef = jax.tree_util.tree_structure(abstract)

  def init_kept(*a):
    return [x for x, k in zip(jax.tree.leaves(init(*a)), keep) if k]

  if shardings is None:
    jitted = jax.jit(init_kept)
  else:
    jitted = jax.jit(init_kept, out_shardings=[s for s, k in zip(jax.tree.leaves(shardings), keep) if k])
  fresh = iter(jitted(*args))
  leaves = [next(fresh) if k else x for (_, x), k in zip(paths, keep)]
  return jax.tree_util.tree_unflatten(treedef, leaves)


def jit_step(step_fn: Callable, shardings, mesh):
  """``step_fn(state, batch) -> (state, metrics)`` jitted with the state's shardings in and out, batches split
  over the mesh, replicated metrics, and the state donated (updated in place)."""
  return jax.jit(step_fn, in_shardings=(shardings, parallel.batch_sharding(mesh)),
                 out_shardings=(shardings, parallel.replicated(mesh)), donate_argnums=(0,))
