"""Launch scripts: valid bash, and (dry run) the commands they would execute. Their real code paths run in
tests/test_multiprocess.py (single_gpu.sh for 1 process, slurm_gpu.sbatch under a fake srun for 2)."""

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parents[1] / "launch"
SCRIPTS = ["tpu_vm.sh", "slurm_gpu.sbatch", "single_gpu.sh"]


def _dry_run(script, *args, **env):
  # The machine's own JAX_PLATFORMS (CPU-only CI sets it) must not choose the scripts' branch.
  base = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "GPUS_PER_NODE", "SLURM_GPUS_ON_NODE")}
  result = subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True, timeout=30,
                          env={**base, "DRY_RUN": "1", **env})
  return result


def _commands(stdout):
  return [shlex.split(line) for line in stdout.splitlines() if line.strip()]


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_is_valid_strict_bash_calling_deft_jax_main(script):
  text = (LAUNCH / script).read_text()
  subprocess.run(["bash", "-n", str(LAUNCH / script)], check=True, timeout=30)
  assert "set -euo pipefail" in text
  assert re.search(r'python"? -m deft_jax\.main', text), "does not run python -m deft_jax.main"


def test_single_gpu_installs_once_then_runs_main_with_overrides(tmp_path):
  venv = tmp_path / "venv"
  out = _dry_run("single_gpu.sh", "configs/cub200.py:runlocal", "wd/cub", "--", "--config.seed=3",
                 VENV=str(venv), JAX_CUDA="cuda13")
  assert out.returncode == 0, out.stderr
  cmds = _commands(out.stdout)
  assert any(c[-1] == "jax[cuda13]" for c in cmds)
  assert cmds[-1] == [f"{venv}/bin/python", "-m", "deft_jax.main", "--config", "configs/cub200.py:runlocal",
                      "--workdir", "wd/cub", "--config.seed=3"]
  (venv / "bin").mkdir(parents=True)
  (venv / ".deft_jax_installed_cuda13").touch()  # already installed -> only the main command runs
  again = _commands(_dry_run("single_gpu.sh", VENV=str(venv), JAX_CUDA="cuda13").stdout)
  assert len(again) == 1 and again[0][-4:] == ["--config", "configs/demo.py", "--workdir", "workdirs/demo"]


def test_single_gpu_rejects_unknown_cuda_flavour():
  out = _dry_run("single_gpu.sh", JAX_CUDA="cuda11")
  assert out.returncode == 2 and "cuda12 or cuda13" in out.stderr


def test_slurm_runs_one_srun_task_per_node_seeing_all_node_gpus(tmp_path):
  out = _dry_run("slurm_gpu.sbatch", "configs/webvision.py", "/shared/wd", "--", "--config.seed=1",
                 GPUS_PER_NODE="4", REPO_ROOT=str(tmp_path))
  assert out.returncode == 0, out.stderr
  assert "JAX_LOCAL_DEVICE_IDS=0,1,2,3" in out.stdout
  srun = _commands(out.stdout)[-1]
  assert srun[0] == "srun" and "--ntasks-per-node=1" in srun
  assert srun[srun.index("-m") + 1] == "deft_jax.main"
  assert srun[-5:] == ["--config", "configs/webvision.py", "--workdir", "/shared/wd", "--config.seed=1"]
  text = (LAUNCH / "slurm_gpu.sbatch").read_text()
  assert "#SBATCH --ntasks-per-node=1" in text


def test_slurm_on_cpus_lists_no_gpus_and_without_gpus_says_what_to_set(tmp_path):
  out = _dry_run("slurm_gpu.sbatch", "configs/demo.py", "/shared/wd", JAX_PLATFORMS="cpu", REPO_ROOT=str(tmp_path))
  assert out.returncode == 0, out.stderr
  assert "CPU only" in out.stdout and "JAX_LOCAL_DEVICE_IDS" not in out.stdout
  assert _commands(out.stdout)[-1][0] == "srun"
  # No GPU to be seen (no nvidia-smi on PATH, no SLURM_GPUS_ON_NODE) and no CPU choice: an error naming both ways.
  bin_dir = tmp_path / "bin"  # the tools the script uses, and no nvidia-smi
  bin_dir.mkdir()
  for tool in ("bash", "dirname", "basename", "seq", "wc"):
    (bin_dir / tool).symlink_to(shutil.which(tool))
  out = _dry_run("slurm_gpu.sbatch", REPO_ROOT=str(tmp_path), PATH=str(bin_dir))
  assert out.returncode == 2 and "GPUS_PER_NODE" in out.stderr and "JAX_PLATFORMS=cpu" in out.stderr


def test_tpu_vm_all_creates_copies_installs_and_runs_on_every_worker():
  out = _dry_run("tpu_vm.sh", "all", "--name", "t1", "--zone", "us-east5-a", "--accelerator-type", "v6e-16",
                 "--config", "configs/clothing1m.py", "--workdir", "/mnt/shared/c1m", "--", "--config.seed=2")
  assert out.returncode == 0, out.stderr
  cmds = _commands(out.stdout)
  gcloud = [c for c in cmds if c[0] == "gcloud"]
  create, scp, setup, run = gcloud
  assert create[4] == "create" and "--version=v2-alpha-tpuv6e" in create and "--accelerator-type=v6e-16" in create
  assert scp[4] == "scp" and "--worker=all" in scp
  assert setup[4] == "ssh" and "--worker=all" in setup and "_worker_setup" in setup[-1]
  assert run[4] == "ssh" and "--worker=all" in run
  remote = shlex.split(run[-1].split("=", 1)[1])
  assert remote[remote.index("-m") + 1:] == ["deft_jax.main", "--config", "configs/clothing1m.py",
                                             "--workdir", "/mnt/shared/c1m", "--config.seed=2"]
  assert "delete --name t1 --zone us-east5-a" in out.stderr


def test_tpu_vm_run_requires_a_workdir_directory_and_says_pods_need_it_shared():
  out = _dry_run("tpu_vm.sh", "run")
  assert out.returncode == 2 and "--workdir" in out.stderr
  out = _dry_run("tpu_vm.sh", "run", "--accelerator-type", "v4-32", "--workdir", "/tmp/wd")
  assert out.returncode == 0 and "every worker mounts" in out.stderr
  out = _dry_run("tpu_vm.sh", "run", "--accelerator-type", "v4-32", "--workdir", "gs://bucket/wd")
  assert out.returncode == 2 and "not a URL" in out.stderr and "gcloud" not in out.stdout
  assert _dry_run("tpu_vm.sh", "bogus").returncode == 2
