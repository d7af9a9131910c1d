"""The project's error types: the input (config, data, checkpoint, workdir) or the run's state is wrong, not
the code.

``python -m deft_jax.main`` reports a :class:`DeftError` as one clear message and exits with status 2;
anything else is a bug and keeps its traceback. Every message names the offending thing (a path, a key, a
label value, a count, a stage and step). This module imports nothing heavy, so that every layer may use it.
"""

import contextlib
import errno


class DeftError(Exception):
  """Base class of every error that is the user's input or the run's state, not a bug."""


class ConfigError(DeftError, ValueError):
  """A configuration field or argument is unknown or has a bad value (or a value the run cannot use)."""


class MissingFileError(DeftError, FileNotFoundError):
  """A file or directory the run needs (a checkpoint, a config, an earlier stage's output) does not exist."""


class WorkdirConflictError(DeftError, RuntimeError):
  """The workdir holds a run with another configuration."""


class CorruptCheckpointError(DeftError, RuntimeError):
  """A checkpoint exists but cannot be restored."""


class DivergedError(DeftError, RuntimeError):
  """Training produced a non-finite loss (or a model non-finite outputs): nothing is written from that state."""


class DiskFullError(DeftError, OSError):
  """The file system of the workdir filled up while a file was written: the write was abandoned whole (earlier
  files, the previous checkpoint and report, are as they were)."""


def is_disk_full(error: BaseException) -> bool:
  """Whether ``error``, or an exception it was raised from, is a full disk (ENOSPC). Writers outside Python
  (safetensors, TensorStore under Orbax) say it in their message only."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return True
    if any(s in str(error) for s in _ENOSPC_WORDS):
      return True
    error = error.__cause__ or error.__context__
  return False


_ENOSPC_WORDS = ("No space left on device", "os error 28", "ENOSPC")


@contextlib.contextmanager
def writing(path, what: str = ""):
  """Turns a full disk while the block writes ``path`` into a DiskFullError naming it; anything else passes."""
  try:
    yield
  except DeftError:
    raise
  except Exception as e:  # noqa: BLE001 -- only a full disk is converted; the rest is re-raised as it was
    if not is_disk_full(e):
      raise
    raise DiskFullError(f"no space left on device while writing {what + ' ' if what else ''}{path}: free some "
                        "space and rerun the same command (it resumes; the files written before are unchanged)"
                        ) from e


# What main.py reports as one line and exit status 2: the project's own error kinds (data/errors.py,
# models/weights.py, report/ add theirs); any other exception is a bug and keeps its traceback.
USER_ERRORS = (DeftError,)
