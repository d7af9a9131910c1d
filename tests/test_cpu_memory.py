"""deft_jax.cpu_memory: when the glibc heap setting applies, and that it stops XLA:CPU's per-call page faults."""

import subprocess
import sys

import pytest

from conftest import REPO, main_env
from deft_jax import cpu_memory

# A jitted function whose temporaries (cumsum, reversal: ~48 MB each) are allocated on every call.
CHILD = """
import resource
from deft_jax import cpu_memory
on = cpu_memory.configure()
import jax, jax.numpy as jnp
f = jax.jit(lambda x: (jnp.cumsum(jnp.sin(x)) * jnp.cos(x)[::-1]).sum())
x = jnp.ones((12_000_000,), jnp.float32)
for _ in range(3):  # compile, then let the heap reach its high-water mark
  f(x).block_until_ready()
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
  f(x).block_until_ready()
print(on, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 20)
"""


def _faults_per_call(setting: str) -> tuple[bool, float]:
  env = {**main_env(), cpu_memory.ENV: setting}
  out = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300, check=True).stdout.split()
  return out[-2] == "True", float(out[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a glibc malloc setting (Linux only)")
def test_kept_heap_removes_most_page_faults_of_each_xla_cpu_call():
  on, faults_on = _faults_per_call("on")
  off, faults_off = _faults_per_call("off")
  print(f"minor page faults per call: {faults_off:.0f} default malloc, {faults_on:.0f} kept heap")
  assert on and not off
  # Alone on the 2-core machine: ~47k vs ~2.3k; next to another test worker the kept heap measured ~13k.
  assert faults_on * 2 < faults_off


def test_auto_follows_jax_platforms_and_installed_plugins(monkeypatch):
  assert cpu_memory.cpu_only_host({"JAX_PLATFORMS": "cpu"})
  assert not cpu_memory.cpu_only_host({"JAX_PLATFORMS": "cuda"})
  assert not cpu_memory.cpu_only_host({"JAX_PLATFORMS": "cuda,cpu"})
  monkeypatch.setattr(cpu_memory, "accelerator_plugins", lambda: [])
  assert cpu_memory.cpu_only_host({})
  monkeypatch.setattr(cpu_memory, "accelerator_plugins", lambda: ["jax_plugins.xla_cuda12"])
  assert not cpu_memory.cpu_only_host({})
  assert not cpu_memory.configure({cpu_memory.ENV: "auto"})  # an accelerator host: left alone
  assert not cpu_memory.configure({cpu_memory.ENV: "off", "JAX_PLATFORMS": "cpu"})


def test_bad_setting_is_a_clear_error_and_main_exits_2(tmp_path):
  with pytest.raises(ValueError, match="DEFT_JAX_CPU_MALLOC must be 'auto', 'on' or 'off', got 'yes'"):
    cpu_memory.mode({cpu_memory.ENV: "yes"})
  env = {**main_env(), cpu_memory.ENV: "yes"}
  proc = subprocess.run([sys.executable, "-m", "deft_jax.main", "--config=configs/demo.py",
                         f"--workdir={tmp_path / 'run'}"], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 2
  assert "deft_jax: error: DEFT_JAX_CPU_MALLOC must be" in proc.stderr
  assert not (tmp_path / "run").exists()
