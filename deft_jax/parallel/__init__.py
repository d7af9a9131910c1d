"""The one place that builds meshes and shardings (mesh.py), joins the processes of a run (multihost.py) and stops
them together (faults.py: preemption, one process failing)."""

from deft_jax.parallel.mesh import (  # noqa: F401
    addressable, batch_sharding, gather_by_index, make_mesh, replicated, shard_batch, shardings_for, to_host,
)
from deft_jax.parallel.multihost import (  # noqa: F401
    DistributedInitError, WorkdirNotSharedError, distributed_init_if_needed, distributed_settings,
    make_shared_workdir, sync_processes,
)
