"""Several processes (hosts) of one run: joining them, waiting for each other, and checking the shared workdir.

A multi-process run is one ``python -m deft_jax.main`` per host (per SLURM task, per TPU VM worker), all with the
same arguments. They join through ``jax.distributed`` before anything else touches JAX:

- explicitly, from the environment: ``JAX_COORDINATOR_ADDRESS`` (host:port of process 0), ``JAX_NUM_PROCESSES``,
  ``JAX_PROCESS_ID`` (0 .. count-1) and optionally ``JAX_LOCAL_DEVICE_IDS`` (which JAX reads itself). JAX reads
  only the address from the environment, so without this a bare ``JAX_COORDINATOR_ADDRESS`` could not work;
- or by JAX's cluster detection (SLURM inside ``srun``, Open MPI, multi-host Cloud TPU), with no settings.

On the CPU the processes' collectives go through gloo (set before any computation). A process that cannot meet
all the others within ``DEFT_JAX_INIT_TIMEOUT`` seconds (default 300) stops with a message naming the coordinator
and the missing piece, and exit status 2; JAX itself would abort with a C++ stack trace (or keep waiting, for
the coordinator). Once joined, a process that fails or dies is noticed by the others, which stop with one line
naming it (faults.py) within a quarter of ``DEFT_JAX_HEARTBEAT_TIMEOUT`` seconds (JAX's default, 100), before
JAX's own heartbeat would terminate them; preemption (SIGTERM) is faults.py's too.

Files: process 0 writes the run's files (checkpoint.save_npz / write_json, the report, the pretrained CLIP),
every process may read them afterwards, and Orbax checkpoints are written by all processes together; so every
process must see the same workdir. :func:`make_shared_workdir` creates it and verifies that at the start of
a run.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
import threading
import time
from pathlib import Path
from typing import Mapping, Optional

import jax
import numpy as np

from deft_jax.errors import DeftError

INIT_TIMEOUT_ENV = "DEFT_JAX_INIT_TIMEOUT"
HEARTBEAT_TIMEOUT_ENV = "DEFT_JAX_HEARTBEAT_TIMEOUT"
DEFAULT_INIT_TIMEOUT = 300
MARKER_PREFIX = ".deft_jax_shared_check-"


class DistributedInitError(DeftError, RuntimeError):
  """The processes of a multi-process run cannot be joined as the environment describes them."""


class WorkdirNotSharedError(DeftError, RuntimeError):
  """The processes of a multi-process run do not all see the same workdir, or some cannot create it."""


def _int_env(env: Mapping[str, str], name: str, *, minimum: int = 0) -> Optional[int]:
  value = env.get(name, "").strip()
  if not value:
    return None
  try:
    n = int(value)
  except ValueError:
    n = None
  if n is None or n < minimum:
    raise DistributedInitError(f"{name}={value!r} must be an integer >= {minimum}")
  return n


def _cluster_env(env: Mapping[str, str]) -> Optional[str]:
  """The multi-process launcher JAX can read the process layout from, if this process was started by one."""
  if int(env.get("SLURM_NTASKS", "1") or 1) > 1:
    return "slurm"
  if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
    return "ompi"
  # Cloud TPU VMs of a multi-host slice list every worker in TPU_WORKER_HOSTNAMES.
  if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
    return "tpu"
  return None


def distributed_settings(env: Optional[Mapping[str, str]] = None) -> Optional[dict]:
  """The arguments for ``jax.distributed.initialize`` that ``env`` (default: the environment) describes: None for
  a single-process run, ``{}`` to let JAX detect the cluster (SLURM, Open MPI, TPU), else the explicit
  ``coordinator_address`` / ``num_processes`` / ``process_id``. Contradictory or incomplete settings raise
  DistributedInitError, before any process waits for the others."""
  env = os.environ if env is None else env
  address = env.get("JAX_COORDINATOR_ADDRESS", "").strip()
  count = _int_env(env, "JAX_NUM_PROCESSES", minimum=1)
  pid = _int_env(env, "JAX_PROCESS_ID")
  cluster = _cluster_env(env)
  if count is None and pid is None:
    if cluster:
      return {}
    if address:
      raise DistributedInitError(
          f"JAX_COORDINATOR_ADDRESS={address} is set but not how many processes there are, nor which one this is: "
          "set JAX_NUM_PROCESSES and JAX_PROCESS_ID (0 .. JAX_NUM_PROCESSES-1) in every process, or unset "
          "JAX_COORDINATOR_ADDRESS for a single-process run")
    return None
  if count is None or pid is None:
    raise DistributedInitError("set both JAX_NUM_PROCESSES and JAX_PROCESS_ID, or neither (got "
                               f"JAX_NUM_PROCESSES={env.get('JAX_NUM_PROCESSES')!r}, "
                               f"JAX_PROCESS_ID={env.get('JAX_PROCESS_ID')!r})")
  if pid >= count:
    raise DistributedInitError(f"JAX_PROCESS_ID={pid} must be below JAX_NUM_PROCESSES={count}")
  if count == 1:
    return None
  if not address:
    raise DistributedInitError(f"JAX_NUM_PROCESSES={count} needs JAX_COORDINATOR_ADDRESS: the host:port where "
                               "process 0 listens, the same in every process")
  return {"coordinator_address": address, "num_processes": count, "process_id": pid}


def _use_gloo_on_cpu() -> None:
  """Cross-process collectives of the CPU backend go through gloo (without it a multi-process CPU computation
  fails); the option was renamed across JAX versions. A user's own choice (its environment variable) is kept."""
  if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" in os.environ:
    return
  try:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except (AttributeError, KeyError, ValueError):
    jax.config.update("jax_cpu_enable_gloo_collectives", True)


def _fail_now(message: str) -> None:
  """Called from a watchdog thread while the main thread waits inside JAX's C++ code, where no exception can
  reach it: the message main.py would print for a DeftError, and its exit status."""
  logging.error("%s: %s", DistributedInitError.__name__, message)
  print(f"deft_jax: error: {message}", file=sys.stderr, flush=True)
  os._exit(2)  # pylint: disable=protected-access


def distributed_init_if_needed(env: Optional[Mapping[str, str]] = None) -> bool:
  """Joins this process to the others of a multi-process run (see the module docstring); False for one process.

  Must run before anything computes with JAX."""
  env = os.environ if env is None else env
  settings = distributed_settings(env)
  if settings is None:
    return False
  timeout = _int_env(env, INIT_TIMEOUT_ENV, minimum=1) or DEFAULT_INIT_TIMEOUT
  heartbeat = _int_env(env, HEARTBEAT_TIMEOUT_ENV, minimum=1)
  _use_gloo_on_cpu()
  where = (f"process {settings['process_id']} of {settings['num_processes']}, coordinator "
           f"{settings['coordinator_address']}" if settings else f"{_cluster_env(env)} cluster detection")
  logging.info("jax.distributed: joining (%s, up to %d s)", where, timeout)
  t0 = time.monotonic()
  watchdog = threading.Timer(timeout, _fail_now, args=(
      f"the processes of this run did not all meet within {timeout} s ({where}). Every process must be started "
      "with the same coordinator address (process 0's host, a port free there and reachable from every host) "
      f"and the same process count; a missing or crashed process makes the others wait. {INIT_TIMEOUT_ENV} sets "
      "this limit.",))
  watchdog.daemon = True
  watchdog.start()
  kw = dict(settings, initialization_timeout=timeout + 60)  # JAX's own limit aborts; the watchdog speaks first
  if heartbeat:
    kw["heartbeat_timeout_seconds"] = heartbeat
  try:
    jax.distributed.initialize(**kw)
  except (ValueError, TypeError, RuntimeError) as e:  # e.g. an incomplete cluster environment
    raise DistributedInitError(f"jax.distributed.initialize failed ({where}): {type(e).__name__}: {e}") from e
  finally:
    watchdog.cancel()
  logging.info("jax.distributed: process %d of %d joined in %.1f s", jax.process_index(), jax.process_count(),
               time.monotonic() - t0)
  return True


def sync_processes(name: str) -> None:
  """Every process waits here until all have arrived (nothing to wait for with one process). Every process must
  call it at the same point of the program: ``name`` is compared, so diverging code paths fail loudly."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def make_shared_workdir(workdir: str | Path) -> Path:
  """Creates ``workdir`` (on every process) and checks that all processes of the run see the same directory;
  raises WorkdirNotSharedError on every process if not. With one process it only creates the directory.

  A process that cannot create it (a mount missing on its host, no permission) is reported by every process,
  naming it, instead of failing alone and leaving the others waiting for it. Then process 0 writes a marker file
  with a token all processes agree on, and each looks for it. Without this a workdir on each host's local disk
  would fail later and obscurely (a restore that finds half a checkpoint, a process waiting for a file that is
  never written to its disk), or silently (each host resuming from different files).
  """
  workdir = Path(workdir)
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    problem = ""
  except OSError as e:
    problem = f"{type(e).__name__}: {e}"
  if jax.process_count() == 1:
    if problem:
      raise WorkdirNotSharedError(f"cannot create the workdir {workdir}: {problem}")
    return workdir
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  count = jax.process_count()
  fix = ("Every process must see the same workdir (a shared file system such as NFS or Lustre mounted at the same "
         "path on every host); Orbax writes each checkpoint from all processes together and process 0 writes the "
         "files the others read (launch/README.md).")
  created = np.asarray(multihost_utils.process_allgather(np.asarray([not problem])), bool).reshape(-1)
  if not created.all():
    failed = [int(p) for p in np.flatnonzero(~created)]
    mine = f" (here, on process {jax.process_index()}: {problem})" if problem else ""
    raise WorkdirNotSharedError(f"the workdir {workdir} cannot be created by process(es) {failed} of the {count} "
                                f"processes of this run{mine}. {fix}")
  token = int(multihost_utils.broadcast_one_to_all(np.int32(secrets.randbits(31))))  # JAX's ints are 32-bit
  marker = workdir / f"{MARKER_PREFIX}{token:08x}"
  if jax.process_index() == 0:
    marker.write_text(f"{token}\n")
  sync_processes("make_shared_workdir: marker written")
  try:
    seen = marker.read_text().strip() == str(token)
  except OSError:
    seen = False
  seen_by = np.asarray(multihost_utils.process_allgather(np.asarray([seen])), bool).reshape(-1)
  if jax.process_index() == 0:
    marker.unlink(missing_ok=True)
  if not seen_by.all():
    blind = [int(p) for p in np.flatnonzero(~seen_by)]
    raise WorkdirNotSharedError(
        f"the workdir {workdir} is not shared between the {count} processes of this run: process 0 wrote "
        f"{marker.name} there, process(es) {blind} cannot see it. {fix}")
  return workdir
