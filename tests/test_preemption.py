"""Faults of a running job, through `python -m deft_jax.main` on the shrunk demo: preemption (SIGTERM) on 1 and 2
processes, a non-coordinator process killed (SIGKILL), and one process failing alone with a DeftError late in
the run (a bad image only it reads).

SIGTERM: every process saves a checkpoint at one common step and exits with status 75, printing one line; the
rerun resumes from that step and its outputs (detection.npz, every file of the report) are bitwise those of an
uninterrupted run on the same processes. A failure: every process stops within a bounded time, the survivors
with one line naming the process that failed and why, and the rerun resumes to the same outputs.

Cost (the suite's budget): one uninterrupted 1-process run (pretrain + detect) whose pretrain/ folder every other
run copies, one uninterrupted 2-process detect run from it; detect runs 4 epochs (32 steps, checkpoints every 4),
so that a signal sent once a checkpoint exists lands mid-stage; the interrupted runs save every 5 steps. The
2-process faults are one job's life, each fault stopping the job and the next rerun resuming it: a bad image
only process 1 reads, SIGTERM to process 1 alone, SIGKILL of process 1, SIGTERM to both, then the rerun that
finishes, bitwise the uninterrupted run.
"""

import hashlib
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, SHRUNK_DEMO, SHRUNK_OVERRIDES, main_command, main_env
from test_multiprocess import _env, _free_port, _kill, _popen, _tail, _wait

STAGES = "--config.stages=('pretrain','detect')"  # not a result field: the workdir guard accepts it
OVERRIDES = (*SHRUNK_OVERRIDES, STAGES, "--config.detect.epochs=4")
# The interrupted runs save every 5 steps (a field a rerun may change): a signal sent once a checkpoint exists
# then stops at a step that no periodic checkpoint has, and so a rerun resumes there only if that save happened.
INTERRUPTED = (*OVERRIDES, "--config.checkpoint_every_steps=5")
PREEMPTED_EXIT = 75
STOP_WITHIN = 60  # seconds: how long a survivor may take to stop after another process failed
TIMEOUT = 600

# Loaded first by process 1 alone (PYTHONPATH): from its second detect epoch on, the training batches raise the
# error a corrupt image raises, as if process 1's share of the data held an image that no other process reads.
BAD_IMAGE_ON_THIS_PROCESS = '''
import importlib.abc, importlib.util, sys

class _Patch(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name != "deft_jax.data.pipeline":
      return None
    sys.meta_path.remove(self)
    spec = importlib.util.find_spec(name)
    run = spec.loader.exec_module

    def exec_module(module):
      run(module)
      train_batches = module.train_batches

      def failing(*args, epoch, **kw):
        if epoch >= 1:
          from deft_jax.data.errors import CorruptImageError
          raise CorruptImageError("cannot decode image 137 (/data/train/cat/0137.jpg): Invalid JPEG data")
        return train_batches(*args, epoch=epoch, **kw)

      module.train_batches = failing
    spec.loader.exec_module = exec_module
    return spec

sys.meta_path.insert(0, _Patch())
'''


def _start(workdir, count: int, log_dir: Path, tag: str, env_for=lambda pid: {}, overrides=INTERRUPTED) -> list:
  """A ``count``-process run (one CPU device each, explicit jax.distributed variables) or one process alone."""
  port = _free_port()
  procs = []
  for pid in range(count):
    extra = dict(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=count, JAX_PROCESS_ID=pid,
                 DEFT_JAX_HEARTBEAT_TIMEOUT=40) if count > 1 else {}
    env = _env(1, DEFT_JAX_PREEMPTION_CHECK_STEPS=2, **extra, **env_for(pid))
    out, err = open(log_dir / f"{tag}.p{pid}.out", "w"), open(log_dir / f"{tag}.p{pid}.err", "w")
    procs.append(_popen(main_command(workdir, *overrides, config=SHRUNK_DEMO), env=env, stdout=out, stderr=err))
  return procs


def _run(workdir, count: int, log_dir: Path, tag: str, overrides=INTERRUPTED) -> None:
  procs = _start(workdir, count, log_dir, tag, overrides=overrides)
  try:
    codes = _wait(procs, TIMEOUT)
  finally:
    _kill(procs)
  assert codes == [0] * count, f"{tag} failed {codes}:\n{_tail(log_dir / f'{tag}.p0.err')}"


def _fresh(base: Path, workdir: Path) -> Path:
  """A workdir holding the pretrained CLIP of ``base`` (and its config record), so that pretraining is skipped."""
  workdir.mkdir(parents=True)
  shutil.copytree(base / "pretrain", workdir / "pretrain")
  shutil.copy(base / "config.json", workdir / "config.json")
  return workdir


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
  """The uninterrupted runs: pretrain + detect on 1 process, then detect on 2 processes from its pretrained CLIP."""
  root = tmp_path_factory.mktemp("faults")
  out = {"root": root, 1: root / "ref1"}
  _run(out[1], 1, root, "ref1", OVERRIDES)
  out[2] = _fresh(out[1], root / "ref2")
  _run(out[2], 2, root, "ref2", OVERRIDES)
  return out


def _digests(workdir: Path) -> dict:
  files = [workdir / "detect" / "detection.npz", *sorted((workdir / "report").iterdir())]
  return {f.relative_to(workdir).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def _assert_same_outputs(ref: Path, workdir: Path) -> None:
  a, b = _digests(ref), _digests(workdir)
  assert sorted(a) == sorted(b)
  different = [k for k in a if a[k] != b[k]]
  assert not different, f"not bitwise those of the uninterrupted run: {different}"


def _checkpoint_steps(workdir: Path) -> list:
  ckpts = workdir / "detect" / "checkpoints"
  return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) if ckpts.exists() else []


def _wait_for_checkpoint(procs, workdir: Path, after: int, log: Path) -> None:
  """Until a detect checkpoint of a step beyond ``after`` exists: training is under way (and, with checkpoints
  every 5 steps and a SIGTERM check every 2, the step it stops at is seldom a periodic checkpoint's)."""
  deadline = time.time() + TIMEOUT
  while max(_checkpoint_steps(workdir), default=0) <= after:
    assert time.time() < deadline and all(p.poll() is None for p in procs), f"no checkpoint:\n{_tail(log)}"
    time.sleep(0.05)


def _logs(log_dir: Path, tag: str, count: int) -> list:
  return [(log_dir / f"{tag}.p{pid}.err").read_text() for pid in range(count)]


def _error_lines(err: str) -> list:
  return [line for line in err.splitlines() if line.startswith("deft_jax: error:")]


def _preempt(workdir: Path, count: int, signalled: tuple, log_dir: Path, tag: str) -> int:
  """Starts the run, sends SIGTERM to the processes ``signalled`` once a new checkpoint exists; asserts that every
  process saved at the same step and exited 75 with one line and no traceback; returns that step."""
  before = max(_checkpoint_steps(workdir), default=0)
  procs = _start(workdir, count, log_dir, tag)
  try:
    _wait_for_checkpoint(procs, workdir, before, log_dir / f"{tag}.p0.err")
    for pid in signalled:
      procs[pid].send_signal(signal.SIGTERM)
    codes = _wait(procs, TIMEOUT)
  finally:
    _kill(procs)
  lines = []
  for pid, err in enumerate(_logs(log_dir, tag, count)):
    assert codes[pid] == PREEMPTED_EXIT, f"process {pid}: {codes}\n{_tail(log_dir / f'{tag}.p{pid}.err')}"
    assert "Traceback" not in err and not _error_lines(err), err[-3000:]
    lines += [line for line in err.splitlines() if line.startswith("deft_jax: preempted at detect step ")]
  assert len(lines) == count and len(set(lines)) == 1, lines  # one line per process, all at the same step
  step = int(lines[0].split("detect step ")[1].split()[0])
  assert before < step < 32 and lines[0] == (f"deft_jax: preempted at detect step {step} of 32; checkpoint saved, "
                                             "rerun the same command to resume"), lines[0]
  assert _checkpoint_steps(workdir)[-1] == step
  assert not (workdir / "detect" / "detection.npz").exists()
  return step


def _finish(workdir: Path, count: int, log_dir: Path, resumes_at: int) -> None:
  _run(workdir, count, log_dir, "finish")
  assert f"[detect] resuming at step {resumes_at} of 32" in (log_dir / "finish.p0.err").read_text()


def test_sigterm_on_one_process_saves_exits_75_and_the_rerun_is_bitwise_the_uninterrupted_run(refs, tmp_path):
  workdir = _fresh(refs[1], tmp_path / "w")
  step = _preempt(workdir, 1, (0,), tmp_path, "term")
  _finish(workdir, 1, tmp_path, step)
  _assert_same_outputs(refs[1], workdir)
  print("1 process, SIGTERM:", json.dumps({"saved_at_step": step}))


def _process_1_fails(workdir: Path, fault: str, log_dir: Path, tag: str) -> dict:
  """Process 1 of 2 meets a DeftError only it sees (a bad image in its share of the data, from detect's second
  epoch on), or is SIGKILLed once a new checkpoint exists: process 0 must stop within STOP_WITHIN seconds with one
  line naming process 1 and why, and no traceback."""
  hook = log_dir / "hook"
  hook.mkdir(exist_ok=True)
  (hook / "sitecustomize.py").write_text(BAD_IMAGE_ON_THIS_PROCESS)
  bad_image = lambda pid: {"PYTHONPATH": f"{hook}:{main_env()['PYTHONPATH']}"} if pid == 1 else {}  # noqa: E731
  before = max(_checkpoint_steps(workdir), default=0)
  procs = _start(workdir, 2, log_dir, tag, bad_image if fault == "bad_image" else lambda pid: {})
  try:
    if fault == "sigkill":
      _wait_for_checkpoint(procs, workdir, before, log_dir / f"{tag}.p0.err")
      procs[1].send_signal(signal.SIGKILL)
    else:
      procs[1].wait(timeout=TIMEOUT)
    t0 = time.time()
    try:
      procs[0].wait(timeout=STOP_WITHIN)
    except subprocess.TimeoutExpired:
      pytest.fail(f"process 0 still runs {STOP_WITHIN} s after process 1 stopped ({fault}): it hangs\n"
                  f"{_tail(log_dir / f'{tag}.p0.err')}")
    seconds = round(time.time() - t0, 1)
    codes = _wait(procs, 60)
  finally:
    _kill(procs)
  err0, err1 = _logs(log_dir, tag, 2)
  lines = _error_lines(err0)
  assert len(lines) == 1 and "Traceback" not in err0, err0[-4000:]
  if fault == "sigkill":
    assert codes == [1, -signal.SIGKILL], codes
    assert lines[0].startswith("deft_jax: error: process 1 of 2 stopped: it died (no sign of life for 10 s"), lines[0]
  else:
    reason = "cannot decode image 137 (/data/train/cat/0137.jpg): Invalid JPEG data"
    assert codes == [2, 2], (codes, err1[-3000:])
    assert lines == [f"deft_jax: error: process 1 of 2 stopped: {reason}"]
    assert _error_lines(err1) == [f"deft_jax: error: {reason}"] and "Traceback" not in err1, err1[-3000:]
  assert not (workdir / "detect" / "detection.npz").exists()
  return {"survivor_stopped_after_s": seconds, "at_checkpoint": _checkpoint_steps(workdir)[-1]}


def test_a_two_process_job_through_faults_and_preemptions_ends_bitwise_the_uninterrupted_run(refs, tmp_path):
  """One job's life on 2 processes, each rerun resuming where the previous one stopped: a bad image only process 1
  reads (a DeftError late in the run, on one process), SIGTERM to process 1 alone, SIGKILL of process 1, SIGTERM
  to both (as SLURM and Cloud TPU send it), then the rerun that finishes."""
  workdir = _fresh(refs[1], tmp_path / "w")
  figures = {"bad_image": _process_1_fails(workdir, "bad_image", tmp_path, "bad_image")}
  figures["sigterm_to_1"] = _preempt(workdir, 2, (1,), tmp_path, "term1")
  figures["sigkill"] = _process_1_fails(workdir, "sigkill", tmp_path, "kill")
  figures["sigterm_to_all"] = _preempt(workdir, 2, (0, 1), tmp_path, "term_all")
  _finish(workdir, 2, tmp_path, figures["sigterm_to_all"])
  _assert_same_outputs(refs[2], workdir)
  print("2 processes:", json.dumps(figures))


@pytest.mark.parametrize("requeue", ["1", "0"])
def test_the_slurm_script_requeues_a_job_its_tasks_stopped_with_75(tmp_path, requeue):
  """slurm_gpu.sbatch after `srun` returned 75 (every task saved and stopped): `scontrol requeue $SLURM_JOB_ID`,
  unless REQUEUE_ON_PREEMPTION=0, and the script's own status is still 75. Fake srun and scontrol record their
  calls; SLURM's own lines of the script ask for the signal."""
  bin_dir, venv = tmp_path / "bin", tmp_path / "venv" / "bin"
  bin_dir.mkdir()
  venv.mkdir(parents=True)
  for name, body in (("srun", 'echo "srun $*" >> "$CALLS"; exit 75'), ("scontrol", 'echo "scontrol $*" >> "$CALLS"'),
                     ("nvidia-smi", "echo GPU 0")):
    (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
    (bin_dir / name).chmod(0o755)
  (venv / "python").write_text("#!/bin/sh\nexit 0\n")
  (venv / "python").chmod(0o755)
  calls = tmp_path / "calls"
  env = {**main_env(), "PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(calls), "VENV": str(venv.parent),
         "SLURM_JOB_ID": "4242", "REPO_ROOT": str(REPO), "REQUEUE_ON_PREEMPTION": requeue, "GPUS_PER_NODE": "1"}
  proc = subprocess.run(["bash", str(REPO / "launch" / "slurm_gpu.sbatch"), "configs/demo.py", str(tmp_path / "w")],
                        env=env, capture_output=True, text=True, timeout=60)
  assert proc.returncode == PREEMPTED_EXIT, proc.stderr
  lines = calls.read_text().splitlines()
  assert lines[0].startswith("srun ") and "deft_jax.main" in lines[0]
  assert lines[1:] == (["scontrol requeue 4242"] if requeue == "1" else []), lines
  assert "#SBATCH --signal=TERM@120" in (REPO / "launch" / "slurm_gpu.sbatch").read_text().splitlines()
