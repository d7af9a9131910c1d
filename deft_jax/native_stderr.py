"""What native code writes to the process's stderr (file descriptor 2), which Python's logging never sees.

Two users: the data path collects libjpeg's lines while it decodes (data/splits.py), and ``python -m
deft_jax.main`` imports TensorFlow with file descriptor 2 captured, because on CPUs where TensorFlow turns oneDNN
on it prints "oneDNN custom operations are on ..." from native code before its logging is set up, where
TF_CPP_MIN_LOG_LEVEL does not reach. This module imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

# The start-up notes TensorFlow's native code prints at import whatever TF_CPP_MIN_LOG_LEVEL says.
STARTUP_NOTES = ("oneDNN custom operations are on", "All log messages before absl::InitializeLog() is called",
                 "cpu_feature_guard.cc", "To enable the following instructions:")


@contextlib.contextmanager
def captured():
  """Collects what is written to file descriptor 2 while the block runs, instead of letting it reach the terminal
  as bare lines; yields a list that holds those lines afterwards. For synchronous passes only: everything written
  to file descriptor 2 meanwhile is captured, our own logging included."""
  lines: list[str] = []
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode="w+b") as tmp:
    os.dup2(tmp.fileno(), 2)
    try:
      yield lines
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      tmp.seek(0)
      lines.extend(line for line in tmp.read().decode(errors="replace").splitlines() if line.strip())


@contextlib.contextmanager
def without_startup_notes():
  """Runs the block (an import) with file descriptor 2 captured, then passes on every line but TensorFlow's
  start-up notes."""
  with captured() as lines:
    yield
  for line in lines:
    if not any(note in line for note in STARTUP_NOTES):
      print(line, file=sys.stderr)
