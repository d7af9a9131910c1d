"""The project's error types: the input (config, data, checkpoint, workdir) or the run's state is wrong, not
the code.

``python -m deft_jax.main`` reports a :class:`DeftError` as one clear message and exits with status 2;
anything else is a bug and keeps its traceback. Every message names the offending thing (a path, a key, a
label value, a count, a stage and step). This module imports nothing heavy, so that every layer may use it.
"""


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


# What main.py reports as one line and exit status 2: the project's own error kinds (data/errors.py,
# models/weights.py, report/ add theirs); any other exception is a bug and keeps its traceback.
USER_ERRORS = (DeftError,)
