"""The one way a stage makes its train state and its step, written once for pretrain, detect, adapt and the
training baselines (big_vision's sequence).

  abstract  = jax.eval_shape(init, rng)                      shapes and dtypes only: no FLOPs, no memory
  shardings = parallel.shardings_for(abstract, mesh, rules)  sharding is config (parallel/)
  state     = checkpointer.restore(abstract on shardings)    a resumed run: nothing is built or loaded
           or load(jax.jit(init, out_shardings=shardings)(rng))
                                                             a new run: born sharded on the devices, then the
                                                             pretrained weights merged in (host side)
  step      = jit_step(step_fn, shardings, mesh)             explicit shardings, the state donated

``init(rng) -> state`` must be a pure, jittable function of the key (random parameters, optimiser state,
per-example records); ``load(state) -> state`` may read files and must keep every shape and dtype (it gets
arrays each process can read whole, parallel.addressable). The
optimiser is built before, from the abstract parameters (``optim.make_optimizer`` accepts them).
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
           load: Optional[Callable[[Any], Any]] = None) -> tuple[Any, Any]:
  """(state, shardings): restored from ``checkpointer``'s latest checkpoint when it has one, else initialised
  on the devices by ``init(*args)`` and passed through ``load``."""
  abstract = abstract_state(init, *args)
  shardings = parallel.shardings_for(abstract, mesh, [tuple(r) for r in sharding_rules])
  if checkpointer is not None:
    restored = checkpointer.restore(with_shardings(abstract, shardings))
    if restored is not None:
      return restored, shardings
  state = jax.jit(init, out_shardings=shardings)(*args)
  if load is not None:  # load reads the state on the host: each process must see its arrays whole
    state = place(load(parallel.addressable(state)), shardings)
  return state, shardings


def jit_step(step_fn: Callable, shardings, mesh):
  """``step_fn(state, batch) -> (state, metrics)`` jitted with the state's shardings in and out, batches split
  over the mesh, replicated metrics, and the state donated (updated in place)."""
  return jax.jit(step_fn, in_shardings=(shardings, parallel.batch_sharding(mesh)),
                 out_shardings=(shardings, parallel.replicated(mesh)), donate_argnums=(0,))
