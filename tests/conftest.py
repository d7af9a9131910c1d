"""Shared test fixtures: the data assets beside the checkout, and a fixed CPU device count."""

import os
from pathlib import Path

# Multi-device behaviour is simulated on the CPU; must be set before jax initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One persistent XLA compilation cache for the whole test run: made once by the pytest process that imports this
# file first (the controller, under pytest-xdist), inherited by both workers and by every `python -m
# deft_jax.main` the tests start. Most of those runs' CPU time on 2 cores is compiling the same few programs.
# A fresh directory per run, so that a run's time never depends on an earlier one. (JAX's
# jax_share_binary_between_hosts, which would also spare process 1 of a 2-process run compiling what process 0
# compiles, breaks gloo's collectives in JAX 0.10.2: its first collective times out.)
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import tempfile
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="deft_jax_test_xla_cache_")

from deft_jax import cpu_memory  # noqa: E402

# The tests run on the CPU: XLA's temporaries without a page fault per 4 KB (before JAX starts). A test process
# cannot restart itself with glibc's huge pages as `python -m deft_jax.main` does, so it keeps one heap instead.
cpu_memory.configure({**os.environ, "JAX_PLATFORMS": "cpu"})

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO.parent / "shared" / "assets"


def pytest_collection_modifyitems(config, items):
  """The real-noise tests (tests/test_real_noise.py, which share a session fixture that pretrains a CLIP) are
  the longest chain of the suite: collected first, pytest-xdist's ``--dist loadfile`` (pytest.ini) starts
  them first, on one worker, while the other worker runs everything else module by module.
  tests/test_multiprocess.py is collected last: its runs are several processes at once, which keep both cores
  busy by themselves. Run last, they fill the core that a worker with nothing left to run leaves idle at the end,
  rather than taking CPU from the real-noise chain in the middle of the suite."""
  items.sort(key=lambda item: ("real_noise_workdir" not in item.fixturenames,
                               item.path.name == "test_multiprocess.py"))


def in_ci() -> bool:
  """CI sets CI=true (.ci/run runs there on a clean checkout with ../shared beside it)."""
  return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _no_skip_in_ci(report) -> None:
  """In CI every dependency is installed from the pinned requirements and the assets lie beside the checkout, so
  a skip there means a broken install (an `importorskip` of torch, cleanlab, datasets, selenium, ...) or missing
  data: it fails instead of turning into a green run. Outside CI a skip stays a skip (a developer without
  ../shared, a machine without Chromium), and says why."""
  if report.skipped and in_ci() and not hasattr(report, "wasxfail"):
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped in CI, where no test may be skipped: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  outcome = yield
  _no_skip_in_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
  outcome = yield
  _no_skip_in_ci(outcome.get_result())  # a module-level importorskip skips the whole module at collection


@pytest.fixture(scope="session")
def assets_dir() -> Path:
  if not ASSETS.exists():
    pytest.skip(f"real-data assets not found at {ASSETS} (they sit beside the checkout in CI)")
  return ASSETS


def save_tiny_clip(directory, seed: int) -> str:
  """A tiny random CLIP (preset "tiny") saved as a HF checkpoint in ``directory`` (what the pretrain stage writes)."""
  import jax

  from deft_jax.models import clip as clip_lib
  from deft_jax.models import clip_weights, presets

  cfg = presets.get_preset("tiny")
  params = jax.device_get(clip_lib.init_params(clip_lib.CLIP(cfg), jax.random.key(seed)))
  return str(clip_weights.save_hf_checkpoint(directory, params, cfg))


# The demo shrunk for the tests that check plumbing (resume, multi-process, faults), not quality: the unit tests'
# "tiny" CLIP, 256 training images (also the pretraining split), 128 test images, pretrain 1 epoch (4 steps),
# detect 2 epochs (16 steps, no scoring pass, so the margin ranks), no baseline, adapt 1 epoch (8 steps). Seconds
# per run.
SHRUNK_DEMO = "configs/demo.py:runlocal"
SHRUNK_OVERRIDES = (
    "--config.data.train_indices=0:256", "--config.data.test_size=128", "--config.pretrain.split=train",
    "--config.pretrain.batch_size=64", "--config.detect.epochs=2", "--config.detect.batch_size=32",
    "--config.detect.scoring_pass=False", "--config.detect.ranking=margin", "--config.baselines.methods=()",
    "--config.report.write_images=False",
    "--config.adapt.epochs=1", "--config.adapt.batch_size=32", "--config.checkpoint_every_steps=4",
    "--config.model.preset=tiny", "--config.pretrain.preset=tiny")


def main_env() -> dict:
  """The environment of a user's `python -m deft_jax.main`: this checkout importable, one CPU device."""
  env = dict(os.environ)
  env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
  env["XLA_FLAGS"] = ""
  env["JAX_PLATFORMS"] = "cpu"
  return env


def main_command(workdir, *overrides, config="configs/demo.py") -> list[str]:
  import sys
  return [sys.executable, "-m", "deft_jax.main", f"--config={config}", f"--workdir={workdir}", *overrides]


def run_main(workdir, *overrides, config="configs/demo.py", timeout=1800, check=True):
  """`python -m deft_jax.main` in a subprocess on one CPU device, as a user would run it."""
  import subprocess

  cmd = main_command(workdir, *overrides, config=config)
  proc = subprocess.run(cmd, cwd=REPO, env=main_env(), capture_output=True, text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
  return proc


# The offline real-noise setting shared by the detection and adaptation quality tests: the README's first command,
# `python -m deft_jax.main --config configs/demo.py`, as it is: the demo's tiny CLIP pretrained on 5,000 clean
# CIFAR-10 images, DEFT on 4,000 images with CIFAR-10N worse_label (41.6 % noise), the comparison baselines, and
# phase 2 (FFT on DEFT's subset for the demo's 5 epochs of the 4,000 noisy labels at batch 64, REAL_NOISE_ADAPT_STEPS
# optimiser steps): tests/test_real_noise.py compares it with the same training on every noisy label.
REAL_NOISE_ADAPT_STEPS = 315


@pytest.fixture(scope="session")
def real_noise_workdir(tmp_path_factory):
  """The demo's finished pretrain + detect (+ baselines) + adapt + evaluate run; tests copy from it."""
  import time

  workdir = tmp_path_factory.mktemp("real_noise") / "run"
  t0 = time.time()
  proc = run_main(workdir)  # configs/demo.py, no overrides
  (workdir / "seconds.txt").write_text(f"{time.time() - t0:.1f}")
  (workdir / "stdout.txt").write_text(proc.stdout)  # the report as the demo prints it (README.md quotes it)
  return workdir


@pytest.fixture(scope="session")
def mesh1():
  """A one-device mesh (the tests' simulated devices number 8)."""
  import jax

  from deft_jax import parallel
  return parallel.make_mesh([("data", 1)], jax.devices()[:1])


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> str:
  """A tiny random CLIP saved as a HF checkpoint, shared by the tests that only need some CLIP."""
  return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"), seed=42)


def tiny_config(checkpoint: str = "", **sections):
  """config_lib.base_config() shrunk for unit tests (tiny model, 32 px, small batches, few epochs): the run's
  own configuration with its defaults, so tests cannot drift from it. ``sections`` update config sections,
  e.g. ``adapt=dict(epochs=2)``."""
  from deft_jax import config_lib

  c = config_lib.base_config()
  c.model.preset, c.model.checkpoint = "tiny", checkpoint
  c.data.image_size, c.data.train_augment = 32, "cifar"
  c.detect.update(dict(epochs=2, batch_size=8, eval_batch_size=8, n_ctx=4))
  c.detect.peft.update(dict(vpt_tokens=2))
  c.adapt.update(dict(epochs=1, batch_size=8, eval_batch_size=8, zeroshot_templates="single"))
  c.baselines.update(dict(epochs=2, warmup_epochs=1, batch_size=8, eval_batch_size=8))
  c.baselines.peft.update(dict(vpt_tokens=2))
  c.log_every_steps = 1
  c.checkpoint_every_steps = 1000
  for name, fields in sections.items():
    c[name].update(fields)
  return c
