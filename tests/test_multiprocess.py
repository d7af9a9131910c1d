"""Multi-process runs on one machine: `python -m deft_jax.main` as 2 processes x 2 CPU devices through
jax.distributed (a localhost coordinator, gloo collectives), compared with 1 process x 4 devices; a process
SIGKILLed mid-detection; a missing peer and a workdir the processes do not share, which must be clear errors.

The 1 x 4 reference is started by launch/single_gpu.sh and the 2 x 2 run by launch/slurm_gpu.sbatch with a fake
``srun`` (tests/fake_srun.py): the scripts' real code paths, with the environment they build, on the CPU. The
SIGKILL run sets the explicit variables (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) instead,
so both ways of joining the processes run.

The demo is shrunk (conftest.SHRUNK_DEMO) so that these tests fit the suite's budget on 2 cores.
1 x 4 and 2 x 2 run the same partitioned program, but their cross-device sums differ (XLA's in-process
all-reduce vs gloo between the processes) in float32 rounding: the clean mask, every integer column of the
report, its ranking and the test top-1 must be identical; the float columns agree within FLOAT_TOL.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, SHRUNK_DEMO, SHRUNK_OVERRIDES, main_command, main_env

CONFIG, OVERRIDES = SHRUNK_DEMO, SHRUNK_OVERRIDES
KILL_AT_STEP = 4  # of detect's 16: the first checkpoint from this step on, in the middle of the first epoch
# Measured max |1x4 - 2x2| on this configuration: 5.8e-6 (p_clean), 3.1e-5 (margin, up to ~15 in magnitude),
# 5.4e-7 (label_score), 4.8e-7 (phase 2's test logits); the tolerance leaves room for other CPUs' float codegen.
FLOAT_TOL = dict(rtol=1e-4, atol=1e-4)
RUN_TIMEOUT = 1200
SLURM_PORT_BASE = 65535 - 2**12 + 1  # JAX's SLURM detection: port = SLURM_JOB_ID % 4096 + this


def _free_port(lo: int = 0, hi: int = 0) -> int:
  """A TCP port nobody listens on now (any, or one in [lo, hi])."""
  rng = np.random.default_rng()
  for _ in range(200):
    port = int(rng.integers(lo, hi + 1)) if hi else 0
    with socket.socket() as s:
      try:
        s.bind(("localhost", port))
      except OSError:
        continue
      return s.getsockname()[1]
  raise RuntimeError(f"no free port in [{lo}, {hi}]")


def _env(devices: int, **extra) -> dict:
  env = main_env()
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  launcher = ("SLURM_", "OMPI_", "TPU_WORKER", "JAX_COORDINATOR", "JAX_NUM_PROC", "JAX_PROCESS", "JAX_LOCAL_DEVICE")
  for k in [k for k in env if k.startswith(launcher)]:
    del env[k]  # nothing of the machine's own launcher leaks in
  env.update({k: str(v) for k, v in extra.items()})
  return env


def _start_processes(workdirs, *overrides, count=2, devices=2, pids=None, log_dir: Path, tag: str, **env):
  """The processes ``pids`` (default: all) of a ``count``-process run, joined by the explicit variables;
  workdirs: one, or one per process."""
  port = _free_port()
  procs = []
  for pid in range(count) if pids is None else pids:
    wd = workdirs[pid] if isinstance(workdirs, (list, tuple)) else workdirs
    e = _env(devices, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=count, JAX_PROCESS_ID=pid,
             **env)
    out, err = open(log_dir / f"{tag}.p{pid}.out", "w"), open(log_dir / f"{tag}.p{pid}.err", "w")
    procs.append(_popen(main_command(wd, *overrides, config=CONFIG), env=e, stdout=out, stderr=err))
  return procs


def _wait(procs, timeout: float) -> list:
  deadline = time.time() + timeout
  for p in procs:
    p.wait(timeout=max(1.0, deadline - time.time()))
  return [p.returncode for p in procs]


def _popen(cmd, **kw) -> subprocess.Popen:
  """A process in a session (and process group) of its own, so that _kill ends what it started too (the scripts'
  python, fake srun's tasks)."""
  return subprocess.Popen(cmd, cwd=REPO, start_new_session=True, **kw)


def _kill(procs) -> None:
  for p in procs:
    try:
      os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
  for p in procs:
    try:
      p.wait(timeout=60)
    except subprocess.TimeoutExpired:
      pass


def _fake_venv(root: Path) -> Path:
  """A "virtualenv" whose python is this interpreter, marked as installed, so that the launch scripts skip
  pip and run deft_jax.main."""
  venv = root / "venv"
  (venv / "bin").mkdir(parents=True)
  python = venv / "bin" / "python"
  python.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
  python.chmod(0o755)
  (venv / ".deft_jax_installed_cuda12").touch()  # single_gpu.sh's stamp: newer than requirements.txt
  return venv


def _fake_srun(root: Path) -> Path:
  bin_dir = root / "bin"
  bin_dir.mkdir()
  srun = bin_dir / "srun"
  srun.write_text(f"#!/bin/sh\nexec {sys.executable} {REPO / 'tests' / 'fake_srun.py'} \"$@\"\n")
  srun.chmod(0o755)
  return bin_dir


def _tail(path: Path, n: int = 4000) -> str:
  """The end of a log, without the list of extension modules Python prints when JAX aborts the process."""
  if not path.exists():
    return f"({path} missing)"
  return "\n".join(line for line in path.read_text().splitlines() if not line.startswith("Extension modules"))[-n:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The same shrunk demo, 1 process x 4 devices (launch/single_gpu.sh) and 2 processes x 2 devices
  (launch/slurm_gpu.sbatch under a fake srun), run at the same time."""
  root = tmp_path_factory.mktemp("mp")
  venv, bin_dir = _fake_venv(root), _fake_srun(root)
  logs = root / "logs"
  logs.mkdir()
  one, two = root / "one_x4", root / "two_x2"
  t0 = time.time()
  single = _popen(["bash", str(REPO / "launch" / "single_gpu.sh"), CONFIG, str(one), "--", *OVERRIDES],
                  env=_env(4, VENV=venv, JAX_CUDA="cuda12", JAX_PLATFORMS="cpu"),
                  stdout=open(logs / "one.out", "w"), stderr=open(logs / "one.err", "w"))
  job = _free_port(SLURM_PORT_BASE, 65535) - SLURM_PORT_BASE
  slurm_env = _env(2, VENV=venv, JAX_PLATFORMS="cpu", PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                   SLURM_JOB_ID=job, SLURM_JOB_NUM_NODES=2, SLURM_NTASKS=2, SLURM_JOB_NODELIST="localhost",
                   SLURM_SUBMIT_DIR=REPO, FAKE_SRUN_LOG_DIR=logs)
  slurm = _popen(["bash", str(REPO / "launch" / "slurm_gpu.sbatch"), CONFIG, str(two), "--", *OVERRIDES],
                 env=slurm_env, stdout=open(logs / "slurm.out", "w"), stderr=open(logs / "slurm.err", "w"))
  seconds = {}
  try:
    while len(seconds) < 2 and time.time() < t0 + RUN_TIMEOUT:
      for name, proc in (("1x4", single), ("2x2", slurm)):
        if name not in seconds and proc.poll() is not None:
          seconds[name] = round(time.time() - t0, 1)
      time.sleep(0.5)
  finally:
    _kill([single, slurm])
  assert single.returncode == 0, f"1 x 4 run failed ({single.returncode}):\n{_tail(logs / 'one.err')}"
  assert slurm.returncode == 0, (f"2 x 2 run failed ({slurm.returncode}):\n{_tail(logs / 'slurm.err')}\n"
                                 f"task 0:\n{_tail(logs / 'task0.err')}\ntask 1:\n{_tail(logs / 'task1.err')}")
  return {"one": one, "two": two, "logs": logs, "seconds": seconds, "root": root}


def _report(workdir: Path):
  from deft_jax.report import load_report
  table, mask, summary = load_report(workdir / "report")
  return table, mask, summary


def _compare_reports(a: Path, b: Path, *, exact: bool) -> dict:
  """Asserts the two runs' reports agree (clean mask and every integer column identical, the same ranking, float
  columns within FLOAT_TOL or bitwise with ``exact``); returns the largest float differences."""
  (ta, ma, _), (tb, mb, _) = _report(a), _report(b)
  np.testing.assert_array_equal(ma, mb)
  assert list(ta.columns) == list(tb.columns)
  assert ta["index"].tolist() == tb["index"].tolist(), "the ranking differs"
  figures = {"clean": int(ma.sum()), "examples": int(ma.size)}
  for col in ta.columns:
    if ta[col].dtype.kind == "f":
      x, y = ta[col].to_numpy(), tb[col].to_numpy()
      figures[f"max_abs_diff_{col}"] = float(np.max(np.abs(x - y)))
      if exact:
        np.testing.assert_array_equal(x, y, err_msg=col)
      else:
        np.testing.assert_allclose(x, y, **FLOAT_TOL, err_msg=col)
    else:
      assert ta[col].tolist() == tb[col].tolist(), col
  return figures


def test_two_processes_give_the_clean_mask_report_and_accuracy_of_one(runs):
  figures = {"seconds": runs["seconds"]}
  figures.update(_compare_reports(runs["one"], runs["two"], exact=False))
  ra, rb = (json.loads((runs[k] / "adapt" / "results.json").read_text()) for k in ("one", "two"))
  assert ra["num_selected"] == rb["num_selected"] == figures["clean"]
  assert ra["test"]["top1"] == rb["test"]["top1"] and ra["test"]["top5"] == rb["test"]["top5"]
  assert ra["test"]["count"] == rb["test"]["count"] == 128
  figures.update(test_top1={"1x4": ra["test"]["top1"], "2x2": rb["test"]["top1"]})
  la, lb = (np.load(runs[k] / "adapt" / "predictions.npz")["test_logits"] for k in ("one", "two"))
  figures["max_abs_diff_test_logits"] = float(np.max(np.abs(la - lb)))
  np.testing.assert_allclose(la, lb, **FLOAT_TOL)
  for name in ("pred_probs.npy", "features.npy"):  # each process wrote its own rows; process 0 merged them
    ea, eb = (np.load(runs[k] / "report" / name) for k in ("one", "two"))
    assert ea.shape == eb.shape and ea.dtype == eb.dtype, name
    figures[f"max_abs_diff_{name}"] = float(np.max(np.abs(ea - eb)))
    np.testing.assert_allclose(ea, eb, **FLOAT_TOL, err_msg=name)
  assert not list((runs["two"] / "detect").glob(".*part*")), "a part file of the scoring pass was left behind"
  print("1x4 vs 2x2:", json.dumps(figures))


def test_two_processes_really_ran_as_one_job_and_only_process_0_wrote(runs):
  logs, two = runs["logs"], runs["two"]
  err = [(logs / f"task{i}.err").read_text() for i in range(2)]
  out = [(logs / f"task{i}.out").read_text() for i in range(2)]
  for i in range(2):
    assert f"process {i}/2, 2 local / 4 global devices" in err[i], err[i][-3000:]
    assert "mesh {'data': 4} over 4 devices" in err[i]
  assert "CPU only" in (logs / "slurm.out").read_text()  # the sbatch script's CPU branch
  # One writer: the summary and the final lines are printed once, there is one TensorBoard event file.
  assert "Label health report" in out[0] and "deft_jax finished" in out[0]
  assert "Label health report" not in out[1] and "deft_jax finished" not in out[1]
  assert len(list((two / "tensorboard").glob("events.out.tfevents*"))) == 1
  assert not list(two.glob(".deft_jax_shared_check-*")), "the shared-workdir marker was left behind"
  assert not list(two.glob(".report.*")), "a report write was left half done"
  for stage in ("pretrain", "detect", "adapt"):
    steps = [p for p in (two / stage / "checkpoints").iterdir() if p.name.isdigit()]
    assert steps, f"no {stage} checkpoint"


def test_sigkill_of_one_process_mid_detection_then_rerun_gives_the_same_result(runs, tmp_path):
  """Process 0 (the coordinator, and Orbax's primary host) is killed once a detect checkpoint exists; the other
  must stop by itself (JAX's heartbeat, here 10 s), not hang; both restarted resume and finish identically."""
  two = runs["two"]
  killed = tmp_path / "killed"
  killed.mkdir()
  shutil.copytree(two / "pretrain", killed / "pretrain")  # the same pretrained CLIP: skip that stage
  shutil.copy(two / "config.json", killed / "config.json")
  stages = "--config.stages=('pretrain','detect')"  # not a result field: the workdir guard accepts it
  overrides = (*OVERRIDES, stages)
  ckpts = killed / "detect" / "checkpoints"
  t0 = time.time()
  procs = _start_processes(killed, *overrides, log_dir=tmp_path, tag="killed", DEFT_JAX_HEARTBEAT_TIMEOUT=10)
  saved = lambda: [int(p.name) for p in ckpts.iterdir() if p.name.isdigit()] if ckpts.exists() else []  # noqa: E731
  try:
    while time.time() < t0 + RUN_TIMEOUT and all(p.poll() is None for p in procs):
      if max(saved(), default=0) >= KILL_AT_STEP:
        break
      time.sleep(0.05)
    assert all(p.poll() is None for p in procs), (
        f"a process ended before it could be killed mid-detection:\n{_tail(tmp_path / 'killed.p0.err')}")
    kill_step = max(saved())
    procs[0].send_signal(signal.SIGKILL)
    t_kill = time.time()
    try:
      procs[1].wait(timeout=120)
    except subprocess.TimeoutExpired:
      pytest.fail("process 1 was still running 120 s after process 0 was killed: it hangs")
    survivor = {"exit_status": procs[1].returncode, "seconds_to_stop": round(time.time() - t_kill, 1)}
  finally:
    _kill(procs)
  assert procs[1].returncode != 0
  assert not (killed / "detect" / "detection.npz").exists()
  t1 = time.time()
  procs = _start_processes(killed, *overrides, log_dir=tmp_path, tag="rerun")
  try:
    codes = _wait(procs, RUN_TIMEOUT)
  finally:
    _kill(procs)
  assert codes == [0, 0], f"rerun failed {codes}:\n{_tail(tmp_path / 'rerun.p0.err')}"
  assert "[detect] resuming at step" in (tmp_path / "rerun.p0.err").read_text()
  a, b = (np.load(w / "detect" / "detection.npz") for w in (two, killed))
  assert sorted(a.files) == sorted(b.files)
  for k in a.files:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # the same processes and devices: bitwise
  figures = _compare_reports(two, killed, exact=True)
  print("SIGKILL then rerun vs uninterrupted 2x2:", json.dumps(
      {"killed_after_checkpoint_step": kill_step, "survivor": survivor, **figures,
       "seconds_until_kill": round(t_kill - t0, 1), "seconds_rerun": round(time.time() - t1, 1)}))


def test_a_missing_peer_is_a_clear_error_not_a_hang(tmp_path):
  """Process 0 of 2 started alone, and (with another coordinator address) process 1 of 2 alone: after
  DEFT_JAX_INIT_TIMEOUT seconds each stops with exit status 2 and says what it waited for, instead of waiting
  forever (JAX's coordinator) or aborting with a C++ stack trace (the others)."""
  t0 = time.time()
  procs = [*_start_processes(tmp_path / "w0", count=2, pids=[0], log_dir=tmp_path, tag="alone",
                             DEFT_JAX_INIT_TIMEOUT=5),
           *_start_processes(tmp_path / "w1", count=2, pids=[1], log_dir=tmp_path, tag="alone",
                             DEFT_JAX_INIT_TIMEOUT=5)]
  try:
    codes = _wait(procs, 240)
  finally:
    _kill(procs)
  for pid in range(2):
    err = (tmp_path / f"alone.p{pid}.err").read_text()
    assert codes[pid] == 2, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("deft_jax: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert "did not all meet within 5 s" in lines[0] and f"process {pid} of 2" in lines[0], lines[0]
    assert "coordinator localhost:" in lines[0] and "DEFT_JAX_INIT_TIMEOUT" in lines[0]
    assert not (tmp_path / f"w{pid}").exists()
  print(f"missing peer: exit status 2 on both after {time.time() - t0:.1f} s")


@pytest.mark.parametrize("case", ["local_disks", "uncreatable_on_1"])
def test_a_workdir_the_processes_do_not_share_is_a_clear_error(tmp_path, case):
  """Each process sees its own directory (as with a workdir on each host's local disk), or process 1 cannot
  create the workdir (a mount missing on its host): every process stops with exit status 2 and one line naming
  the workdir and the processes concerned, before anything is written there."""
  (tmp_path / "a_file").touch()
  if case == "local_disks":
    dirs, problem = [tmp_path / "host0" / "w", tmp_path / "host1" / "w"], "process(es) [1] cannot see it"
  else:
    dirs, problem = [tmp_path / "w", tmp_path / "a_file" / "w"], "cannot be created by process(es) [1] of the 2"
  t0 = time.time()
  procs = _start_processes(dirs, log_dir=tmp_path, tag="unshared")
  try:
    codes = _wait(procs, 600)
  finally:
    _kill(procs)
  assert codes == [2, 2], (tmp_path / "unshared.p0.err").read_text()[-3000:]
  for pid, wd in enumerate(dirs):
    err = (tmp_path / f"unshared.p{pid}.err").read_text()
    lines = [line for line in err.splitlines() if line.startswith("deft_jax: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert f"the workdir {wd} " in lines[0] and problem in lines[0], lines[0]
    assert "launch/README.md" in lines[0]
  if case == "uncreatable_on_1":
    assert "here, on process 1: NotADirectoryError" in (tmp_path / "unshared.p1.err").read_text()
  for wd in dirs[:1] if case == "uncreatable_on_1" else dirs:
    assert [p.name for p in wd.iterdir()] == [], "something was written before the check"
  print(f"workdir {case}: exit status 2 on both after {time.time() - t0:.1f} s")


def test_a_workdir_that_cannot_be_created_is_a_clear_error_in_one_process(tmp_path):
  from deft_jax import parallel
  (tmp_path / "a_file").touch()
  with pytest.raises(parallel.WorkdirNotSharedError, match="cannot create the workdir .*a_file/w: NotADirectory"):
    parallel.make_shared_workdir(tmp_path / "a_file" / "w")
  assert parallel.make_shared_workdir(tmp_path / "x" / "w").is_dir()


# Run by each of 2 processes: state sharded over both processes' devices ("fsdp"), built by train_state.create
# with a host-side load, read whole on each host, checkpointed and restored by Orbax from both processes; a file
# process 0 writes is there for process 1 when the writer returns.
STATE_CHECK = """
import sys
import numpy as np
from deft_jax import parallel
assert parallel.distributed_init_if_needed()
import jax, jax.numpy as jnp
from deft_jax import checkpoint, train_state
workdir = sys.argv[1]
mesh = parallel.make_mesh()
init = lambda k: {"step": jnp.int32(0), "w": jax.random.normal(k, (8, 6)), "online": jnp.zeros(16)}
load = lambda s: {**s, "w": np.asarray(s["w"]) + 1.0}  # host-side, as the stages load pretrained weights
key = jax.random.key(0)
state, sh = train_state.create(init, key, mesh=mesh, sharding_rules=[(".*", "fsdp")], load=load)
assert not state["w"].is_fully_addressable and not state["online"].is_fully_addressable
expected = np.asarray(jax.jit(init)(key)["w"]) + 1.0
host = parallel.to_host(state)
np.testing.assert_allclose(host["w"], expected, rtol=1e-6)
step = jax.jit(lambda s: {**s, "step": s["step"] + 1, "online": s["online"] + jnp.arange(16.0)},
               out_shardings=sh)
with checkpoint.StageCheckpointer(workdir + "/ckpt", every_steps=1) as ckpt:
  state = step(state)
  ckpt.save(1, state, force=True)
with checkpoint.StageCheckpointer(workdir + "/ckpt", every_steps=1) as ckpt:
  restored, _ = train_state.create(init, key, mesh=mesh, sharding_rules=[(".*", "fsdp")], checkpointer=ckpt)
back = parallel.to_host(restored)
assert int(back["step"]) == 1 and restored["online"].sharding == state["online"].sharding
np.testing.assert_array_equal(back["online"], np.arange(16.0))
np.testing.assert_allclose(back["w"], expected, rtol=1e-6)
checkpoint.save_npz(workdir + "/written_by_0.npz", {"w": host["w"]})
np.testing.assert_array_equal(checkpoint.load_npz(workdir + "/written_by_0.npz")["w"], host["w"])
print("state check ok on process", jax.process_index())
"""


def test_sharded_state_is_built_read_checkpointed_and_restored_from_two_processes(tmp_path):
  """The pieces the stages rely on, with state that no process holds whole: train_state.create's host-side load,
  parallel.to_host (jax.device_get alone refuses such arrays), Orbax save and restore from both processes, and
  checkpoint.save_npz as a barrier (process 1 reads what process 0 wrote)."""
  port = _free_port()
  procs = []
  for pid in range(2):
    env = _env(2, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=2, JAX_PROCESS_ID=pid)
    procs.append(_popen([sys.executable, "-c", STATE_CHECK, str(tmp_path)], env=env,
                        stdout=open(tmp_path / f"p{pid}.out", "w"), stderr=open(tmp_path / f"p{pid}.err", "w")))
  try:
    codes = _wait(procs, 300)
  finally:
    _kill(procs)
  assert codes == [0, 0], (tmp_path / "p0.err").read_text()[-3000:] + (tmp_path / "p1.err").read_text()[-3000:]
  for pid in range(2):
    assert f"state check ok on process {pid}" in (tmp_path / f"p{pid}.out").read_text()


@pytest.mark.parametrize("env, problem", [
    ({"JAX_COORDINATOR_ADDRESS": "h:1"}, "JAX_NUM_PROCESSES and JAX_PROCESS_ID"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2"}, "both JAX_NUM_PROCESSES and JAX_PROCESS_ID"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "needs JAX_COORDINATOR_ADDRESS"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"}, "must be below"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"}, "must be an integer"),
])
def test_incomplete_distributed_settings_are_refused_before_waiting(env, problem):
  from deft_jax import parallel
  with pytest.raises(parallel.DistributedInitError, match=problem):
    parallel.distributed_settings(env)


def test_distributed_settings_from_the_environment():
  from deft_jax import parallel
  assert parallel.distributed_settings({}) is None
  assert parallel.distributed_settings({"JAX_NUM_PROCESSES": "1", "JAX_PROCESS_ID": "0"}) is None
  assert parallel.distributed_settings({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "4",
                                        "JAX_PROCESS_ID": "3"}) == {
      "coordinator_address": "h:1", "num_processes": 4, "process_id": 3}
  # A cluster launcher describes the processes itself: JAX's detection reads it.
  assert parallel.distributed_settings({"SLURM_NTASKS": "2"}) == {}
  assert parallel.distributed_settings({"SLURM_NTASKS": "1"}) is None
  assert parallel.distributed_settings({"OMPI_COMM_WORLD_SIZE": "8"}) == {}
  assert parallel.distributed_settings({"TPU_WORKER_HOSTNAMES": "a,b"}) == {}
  assert parallel.distributed_settings({"TPU_WORKER_HOSTNAMES": "a"}) is None
