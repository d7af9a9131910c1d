"""The one place that builds meshes and shardings: see mesh.py."""

from deft_jax.parallel.mesh import (  # noqa: F401
    batch_sharding, distributed_init_if_needed, make_mesh, replicated, shard_batch, shardings_for,
)
