"""deft_jax.cpu_memory: which glibc malloc setting applies where, and what each makes glibc do with large blocks."""

import subprocess
import sys

import pytest

from conftest import REPO, main_env
from deft_jax import cpu_memory

# What glibc does with a 64 MB block, read back from mallinfo2(3): with the kept heap it comes from the heap, not
# from its own mmap (hblkhd, the bytes in mmapped blocks, stays 0), and after free() the heap keeps it (arena,
# the heap's size, stays >= 64 MB: no trim). With the default malloc the block is an mmap of its own.
CHILD = """
import ctypes
from deft_jax import cpu_memory
on = cpu_memory.configure() == "kept"

class MallInfo2(ctypes.Structure):
  _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                              "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
p = libc.malloc(64 << 20)
ctypes.memset(p, 1, 64 << 20)
held = libc.mallinfo2()
libc.free(p)
after = libc.mallinfo2()
print(on, held.hblkhd >> 20, after.arena >> 20)
"""
BLOCK_MB = 64


def _malloc_of_a_large_block(setting: str) -> tuple[bool, int, int]:
  """(configured, MB in mmapped blocks while the block is held, MB of heap after it is freed)."""
  env = {**main_env(), cpu_memory.ENV: setting}
  out = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=120, check=True).stdout.split()
  return out[-3] == "True", int(out[-2]), int(out[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a glibc malloc setting (Linux only)")
def test_kept_heap_serves_large_blocks_from_one_untrimmed_heap():
  """The setting that stops XLA:CPU's per-call page faults, checked by what glibc reports rather than by counting
  page faults (a count that load on a shared machine moves; benchmarks/cpu_malloc.py measures the faults and the
  step time: BENCHMARKS.md "CPU host memory")."""
  on, mmapped_on, heap_on = _malloc_of_a_large_block("kept")
  off, mmapped_off, heap_off = _malloc_of_a_large_block("off")
  assert on and not off
  assert mmapped_on == 0 and heap_on >= BLOCK_MB  # from the heap, and kept there after free()
  assert mmapped_off >= BLOCK_MB and heap_off < BLOCK_MB  # glibc's default: an mmap of its own, unmapped at free()


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
  with pytest.raises(ValueError, match=r"DEFT_JAX_CPU_MALLOC must be 'auto', 'hugepages', 'kept' \(or 'on'\) or "
                                      "'off', got 'yes'"):
    cpu_memory.mode({cpu_memory.ENV: "yes"})
  env = {**main_env(), cpu_memory.ENV: "yes"}
  proc = subprocess.run([sys.executable, "-m", "deft_jax.main", "--config=configs/demo.py",
                         f"--workdir={tmp_path / 'run'}"], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 2
  assert "deft_jax: error: DEFT_JAX_CPU_MALLOC must be" in proc.stderr
  assert not (tmp_path / "run").exists()


# A 64 MB block touched page by page, then the process's anonymous huge pages (smaps_rollup), in MB.
HUGE_CHILD = """
import ctypes
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
p = libc.malloc(64 << 20)
ctypes.memset(p, 1, 64 << 20)
rollup = open("/proc/self/smaps_rollup").read().split("\\n")
print(next(int(l.split()[1]) for l in rollup if l.startswith("AnonHugePages")) >> 10)
"""


def _huge_mb(tunables: str) -> int:
  env = {**main_env(), "GLIBC_TUNABLES": tunables}
  out = subprocess.run([sys.executable, "-c", HUGE_CHILD], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=120, check=True).stdout.split()
  return int(out[-1])


def test_auto_picks_huge_pages_where_offered_and_they_back_large_blocks():
  """"auto" on a CPU-only host: glibc's malloc with transparent huge pages where glibc >= 2.35 and the kernel's
  THP setting allow it, else the kept heap. The tunable must make a large block huge-page backed (the point of
  it: a page fault per 2 MB, not per 4 KB); on a host without THP, auto must fall back to the kept heap."""
  cpu = {"JAX_PLATFORMS": "cpu"}
  assert cpu_memory.choose({**cpu, cpu_memory.ENV: "auto"}, available=True) == "hugepages"
  assert cpu_memory.choose({**cpu, cpu_memory.ENV: "auto"}, available=False) == "kept"
  assert cpu_memory.choose({**cpu, cpu_memory.ENV: "kept"}, available=True) == "kept"
  assert cpu_memory.choose({**cpu, cpu_memory.ENV: "on"}, available=True) == "kept"
  assert cpu_memory.choose({**cpu, cpu_memory.ENV: "off"}, available=True) == ""
  assert cpu_memory.choose({"JAX_PLATFORMS": "cuda", cpu_memory.ENV: "auto"}, available=True) == ""
  started = {**cpu, cpu_memory.ENV: "auto", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
  assert cpu_memory.choose(started, available=False) == "hugepages"  # the restarted process keeps it
  with pytest.raises(ValueError, match="hugepages needs glibc >= 2.35 and transparent huge pages"):
    cpu_memory.choose({**cpu, cpu_memory.ENV: "hugepages"}, available=False)
  exe, argv, env = cpu_memory.restart_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"})
  assert exe == sys.executable and argv[0] == sys.executable
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.tcache_count=0:glibc.malloc.hugetlb=1"
  if cpu_memory.huge_pages_available():
    assert _huge_mb("glibc.malloc.hugetlb=1") >= 32
    assert _huge_mb("") < 32  # THP "madvise": nothing without the tunable (THP "always": most of it)
  else:
    assert cpu_memory.choose({**cpu, cpu_memory.ENV: "auto"}) == "kept"


def test_main_restarts_itself_once_with_the_tunable_and_says_so(tmp_path):
  """python -m deft_jax.main re-executes itself with glibc's hugetlb tunable (a tunable is read at process
  start) and logs which malloc it runs with; a bad config value then still stops it with exit status 2."""
  env = {k: v for k, v in main_env().items() if k not in ("GLIBC_TUNABLES", cpu_memory.ENV)}
  proc = subprocess.run([sys.executable, "-m", "deft_jax.main", "--config=configs/demo.py",
                         f"--workdir={tmp_path / 'run'}", "--config.detect.epochs=-1"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  want = ("glibc's, with transparent huge pages" if cpu_memory.huge_pages_available()
          else "one heap, never trimmed")
  assert f"host malloc: {want} (DEFT_JAX_CPU_MALLOC=auto)" in proc.stderr
  assert proc.stderr.count("host malloc:") == 1
