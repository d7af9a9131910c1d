"""TensorFlow for input pipelines only: on the CPU, hidden from accelerators.

Every module of deft_jax.data imports TensorFlow through here, so that TF never
claims GPU memory that JAX needs (TF would otherwise grab most of it at start).
"""

from __future__ import annotations

import logging

import tensorflow as tf

from deft_jax import native_stderr


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


# What native code (libjpeg's "Improper call to JPEG library in state 201", "Corrupt JPEG data: ...") writes to the
# process's stderr during a synchronous decoding pass, collected instead of reaching the terminal as bare lines.
native_stderr_captured = native_stderr.captured

__all__ = ["tf", "AUTOTUNE", "native_stderr_captured"]
