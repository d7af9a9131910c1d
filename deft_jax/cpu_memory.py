"""Host memory for XLA's CPU backend: keep freed blocks instead of handing them back to the kernel.

XLA:CPU mallocs the temporaries of every call of a compiled step and frees them when it returns. glibc
serves blocks that large with fresh ``mmap``s, or from per-thread heaps that it shrinks again, so every
step page-faults its whole working set anew. Measured on the 2-core development machine (BENCHMARKS.md,
"CPU host memory"): the demo CLIP's train step at batch 256 took 234k page faults and 0.45 s of system CPU per
step; with one heap that is never trimmed and no ``mmap`` for large blocks, 3.6k faults and 0.016 s, and the
step ran 1.36x faster (ViT-B/16 at batch 4: 1.15x). The price can be a larger resident size, since the heap
stays at its high-water mark.

The setting must be made before the backend starts its threads (a thread keeps the malloc arena it first
used), and libraries start threads on import (TensorFlow does), so ``python -m deft_jax.main`` makes it
first thing, as :func:`configure` reads the environment variable ``DEFT_JAX_CPU_MALLOC``: "auto" (the
default), "on" or "off". In a notebook, call ``deft_jax.cpu_memory.keep_freed_memory()`` in the first cell,
before importing JAX or TensorFlow. It only applies to glibc (Linux); elsewhere it is a no-op. "auto" leaves
hosts with an accelerator plugin alone: there the host only feeds the input pipeline, whose many threads
should keep their own malloc arenas.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import pkgutil
import sys

from deft_jax.errors import ConfigError

ENV = "DEFT_JAX_CPU_MALLOC"  # "auto" (default), "on" or "off"

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
  """``$DEFT_JAX_CPU_MALLOC``: "auto" (default), "on" or "off"."""
  value = (os.environ if environ is None else environ).get(ENV, "auto").strip().lower() or "auto"
  if value not in ("auto", "on", "off"):
    raise ConfigError(f"{ENV} must be 'auto', 'on' or 'off', got {value!r}")
  return value


def configure(environ=None) -> bool:
  """Applies :func:`keep_freed_memory` as ``$DEFT_JAX_CPU_MALLOC`` says ("auto": when
  :func:`cpu_only_host`). Returns whether it is now on."""
  m = mode(environ)
  if m == "off" or (m == "auto" and not cpu_only_host(environ)):
    return False
  return keep_freed_memory()
