"""A stand-in for SLURM's ``srun`` on one machine, so that launch/slurm_gpu.sbatch runs its real code path in tests.

  fake_srun.py [--ntasks-per-node=N] [other srun options...] COMMAND [ARGS...]

Starts SLURM_JOB_NUM_NODES x N copies of COMMAND on this machine, each with the variables a real ``srun`` step
gives its tasks (SLURM_PROCID, SLURM_LOCALID, SLURM_NODEID, SLURM_NTASKS, SLURM_STEP_NODELIST, ...), which is
what JAX's SLURM cluster detection reads (jax/_src/clusters/slurm_cluster.py). Every "node" is this host, named
by SLURM_JOB_NODELIST (default localhost). Like ``srun --kill-on-bad-exit=1``, a task that fails ends the
others; the exit status is the first failure's, else 0. Each task's stdout and stderr go to
``$FAKE_SRUN_LOG_DIR/task<i>.out`` / ``.err`` when that is set, and every task's pid to ``task<i>.pid``.
"""

import os
import subprocess
import sys
import time
from pathlib import Path


def _parse(argv):
  per_node, i = 1, 0
  while i < len(argv) and argv[i].startswith("-"):
    opt = argv[i]
    if opt.startswith("--ntasks-per-node="):
      per_node = int(opt.split("=", 1)[1])
    elif opt in ("--ntasks-per-node",):
      per_node, i = int(argv[i + 1]), i + 1
    i += 1
  if i == len(argv):
    sys.exit("fake_srun: no command given")
  return per_node, argv[i:]


def main(argv):
  per_node, command = _parse(argv)
  nodes = int(os.environ.get("SLURM_JOB_NUM_NODES", "1"))
  ntasks = nodes * per_node
  nodelist = os.environ.get("SLURM_JOB_NODELIST", "localhost")
  log_dir = Path(os.environ["FAKE_SRUN_LOG_DIR"]) if os.environ.get("FAKE_SRUN_LOG_DIR") else None
  procs = []
  for rank in range(ntasks):
    env = {**os.environ, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank % per_node),
           "SLURM_NODEID": str(rank // per_node), "SLURM_NTASKS": str(ntasks), "SLURM_STEP_NUM_TASKS": str(ntasks),
           "SLURM_STEP_NUM_NODES": str(nodes), "SLURM_STEP_NODELIST": nodelist, "SLURM_NODELIST": nodelist,
           "SLURM_STEP_ID": "0", "SLURMD_NODENAME": "localhost"}
    out = err = None
    if log_dir is not None:
      out, err = open(log_dir / f"task{rank}.out", "w"), open(log_dir / f"task{rank}.err", "w")
    procs.append(subprocess.Popen(command, env=env, stdout=out, stderr=err))
    if log_dir is not None:
      (log_dir / f"task{rank}.pid").write_text(f"{procs[-1].pid}\n")
  status = 0
  try:
    while any(p.poll() is None for p in procs):
      failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
      if failed:  # --kill-on-bad-exit=1
        status = failed[0]
        break
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
    for p in procs:
      p.wait()
  failed = [p.returncode for p in procs if p.returncode != 0]
  return status or (failed[0] if failed else 0)


if __name__ == "__main__":
  rc = main(sys.argv[1:])
  sys.exit(rc if rc >= 0 else 128 - rc)
