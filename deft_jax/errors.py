"""Errors that mean the input (config, data, checkpoint, workdir) is wrong, not the code.

``python -m deft_jax.main`` reports these as one clear message and exits with status 2; anything else is a bug
and keeps its traceback. Every message names the offending thing (a path, a key, a label value, a count).
"""

from deft_jax.checkpoint import CorruptCheckpointError, WorkdirConflictError

# DataError, MissingDataError, CheckpointMismatchError, ReportInputError, config errors and the like are
# ValueError / FileNotFoundError subclasses.
USER_ERRORS = (ValueError, FileNotFoundError, WorkdirConflictError, CorruptCheckpointError)
