"""TensorFlow for input pipelines only: on the CPU, hidden from accelerators.

Every module of deft_jax.data imports TensorFlow through here, so that TF never
claims GPU memory that JAX needs (TF would otherwise grab most of it at start).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile

import tensorflow as tf


def _hide_accelerators() -> None:
  for kind in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], kind)
    except (RuntimeError, ValueError) as e:
      # RuntimeError: TF was already initialised by someone else; nothing to do
      # but say so. ValueError: this TF build knows no such device type.
      if isinstance(e, RuntimeError):
        logging.warning("could not hide %s devices from TensorFlow: %s", kind, e)


_hide_accelerators()

AUTOTUNE = tf.data.AUTOTUNE


@contextlib.contextmanager
def native_stderr_captured():
  """Collects what native code (libjpeg's "Improper call to JPEG library in state 201", "Corrupt JPEG data: ...")
  writes to the process's stderr while the block runs, instead of letting it reach the terminal as bare lines;
  yields a list that holds those lines afterwards. For synchronous decoding passes only: everything written to
  file descriptor 2 meanwhile is captured, our own logging included."""
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


__all__ = ["tf", "AUTOTUNE", "native_stderr_captured"]
