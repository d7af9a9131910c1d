"""Host memory for XLA's CPU backend: large blocks without a page fault per 4 KB page, in bounded memory.

XLA:CPU mallocs the temporaries of every call of a compiled step and frees them when it returns. glibc serves
blocks that large with fresh ``mmap``s, so every step page-faults its whole working set anew, 4 KB at a time:
the demo CLIP's train step at batch 256 took 234k page faults and 0.45 s of system CPU per step (BENCHMARKS.md,
"CPU host memory"). Two remedies, both measured there:

- "hugepages": glibc's own malloc with transparent huge pages for its mmapped blocks and heap
  (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, glibc >= 2.35, THP "always" or "madvise"): one fault per 2 MB.
  The step ran as fast as with the kept heap (0.37 s against 0.55 s), and the peak resident size stayed that of
  the default malloc (the demo's pretraining: 2.7 GB). A tunable is read when a process starts, so
  ``python -m deft_jax.main`` re-executes itself once with it set (same PID, same arguments).
- "kept": one heap that is never trimmed and no ``mmap`` for large blocks: the same speed, but the heap
  fragments as the input pipeline's threads allocate between XLA's blocks, and the peak resident size of the
  demo's pretraining rose from 2.7 to 4.6 GB (whole demo: 6.5 GB). It needs no restart, so it is what a
  notebook (``keep_freed_memory()`` in its first cell, before importing JAX) or a test process can use.

``$DEFT_JAX_CPU_MALLOC``: "auto" (the default: "hugepages" where glibc and the kernel offer it, else "kept", on
CPU-only hosts; hosts with an accelerator plugin are left alone, their host only feeds the input pipeline),
"hugepages", "kept" ("on" is the same), or "off". It only applies to glibc (Linux); elsewhere it is a no-op.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import pkgutil
import sys

from deft_jax.errors import ConfigError

ENV = "DEFT_JAX_CPU_MALLOC"  # "auto" (default), "hugepages", "kept" ("on"), or "off"
MODES = ("auto", "hugepages", "kept", "on", "off")
HUGETLB = "glibc.malloc.hugetlb=1"
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"

# mallopt(3) parameters (glibc malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
_INT_MAX = 2**31 - 1

_ACCELERATOR_MODULES = ("libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                        "jax_rocm7_plugin")


def accelerator_plugins() -> list[str]:
  """JAX accelerator plugins importable here (``jax_plugins.*`` PJRT plugins, libtpu, CUDA/ROCm kernels)."""
  found = []
  try:
    import jax_plugins  # namespace package of the PJRT plugins  # pylint: disable=g-import-not-at-top
    found += [f"jax_plugins.{m.name}" for m in pkgutil.iter_modules(jax_plugins.__path__)]
  except ImportError:
    pass
  return found + [m for m in _ACCELERATOR_MODULES if importlib.util.find_spec(m) is not None]


def cpu_only_host(environ=None) -> bool:
  """Whether JAX will run on the CPU: ``JAX_PLATFORMS`` names only "cpu", or it is unset and no
  accelerator plugin is installed. Decided without starting a backend."""
  environ = os.environ if environ is None else environ
  platforms = [p.strip() for p in environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
  if platforms:
    return set(platforms) == {"cpu"}
  return not accelerator_plugins()


def keep_freed_memory() -> bool:
  """One malloc arena, no ``mmap`` for large blocks, no trimming of the heap. Returns whether glibc took
  every setting (False off glibc)."""
  if not sys.platform.startswith("linux"):
    return False
  try:
    mallopt = ctypes.CDLL("libc.so.6").mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  results = [mallopt(M_ARENA_MAX, 1), mallopt(M_MMAP_MAX, 0), mallopt(M_TRIM_THRESHOLD, _INT_MAX)]
  return all(r == 1 for r in results)


def mode(environ=None) -> str:
  """``$DEFT_JAX_CPU_MALLOC``: "auto" (default), "hugepages", "kept" ("on"), or "off"."""
  value = (os.environ if environ is None else environ).get(ENV, "auto").strip().lower() or "auto"
  if value not in MODES:
    raise ConfigError(f"{ENV} must be 'auto', 'hugepages', 'kept' (or 'on') or 'off', got {value!r}")
  return "kept" if value == "on" else value


def huge_pages_available(thp_file: str = THP_ENABLED) -> bool:
  """glibc >= 2.35 (the hugetlb tunable) and transparent huge pages set to "always" or "madvise"."""
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    major, minor = (int(x) for x in version.split(".")[:2])
    with open(thp_file, encoding="ascii") as f:
      thp = f.read()
  except (AttributeError, ValueError, OSError):
    return False
  return name == "glibc" and (major, minor) >= (2, 35) and ("[always]" in thp or "[madvise]" in thp)


def huge_pages_on(environ=None) -> bool:
  """Whether this process started with glibc's hugetlb tunable."""
  return HUGETLB in (os.environ if environ is None else environ).get("GLIBC_TUNABLES", "")


def choose(environ=None, *, available: bool | None = None) -> str:
  """What ``$DEFT_JAX_CPU_MALLOC`` asks for on this host: "hugepages", "kept" or "" (nothing)."""
  m = mode(environ)
  if m == "off" or (m == "auto" and not cpu_only_host(environ)):
    return ""
  if m == "kept":
    return "kept"
  if huge_pages_on(environ):
    return "hugepages"
  available = huge_pages_available() if available is None else available
  if m == "hugepages" and not available:
    raise ConfigError(f"{ENV}=hugepages needs glibc >= 2.35 and transparent huge pages ({THP_ENABLED}: "
                      "'always' or 'madvise'); use 'kept' or 'off'")
  return "hugepages" if available else "kept"


def restart_with_huge_pages(environ=None) -> tuple[str, list[str], dict]:
  """(executable, argv, environment) that re-executes this process with glibc's hugetlb tunable added."""
  env = dict(os.environ if environ is None else environ)
  env["GLIBC_TUNABLES"] = ":".join(t for t in (env.get("GLIBC_TUNABLES", ""), HUGETLB) if t)
  return sys.executable, [sys.executable, *sys.orig_argv[1:]], env


def configure(environ=None, *, restart: bool = False) -> str:
  """Applies ``$DEFT_JAX_CPU_MALLOC`` and returns what is now in effect: "hugepages", "kept" or "".

  "hugepages" needs the tunable from the process's start: with ``restart`` (``python -m deft_jax.main``, before
  anything else is imported) the process re-executes itself with it; without, the kept heap stands in."""
  chosen = choose(environ)
  if chosen == "hugepages" and not huge_pages_on(environ):
    if restart:
      exe, argv, env = restart_with_huge_pages(environ)
      os.execve(exe, argv, env)  # does not return
    chosen = "kept"
  if chosen == "kept":
    return "kept" if keep_freed_memory() else ""
  return chosen
