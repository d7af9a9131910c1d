"""The command line's failure mode: a bad flag, config file, config argument or override is one line naming the
problem and exit status 2, never a traceback.

absl and ml_collections report these in several shapes (an ``UnrecognizedFlagError`` for an override of a
field that does not exist, an ``IllegalFlagValueError`` wrapping the traceback of a config file that raised,
an ``AttributeError`` from deep inside ``ConfigDict`` for a misspelt nested field); :func:`explain` turns each
into the sentence a user needs, checking the overrides against the config file itself.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from absl import flags

PREFIX = "deft_jax: error: "


def fail(message: str, code: int = 2):
  """Prints ``deft_jax: error: <message>`` (one line) to stderr and exits with ``code``."""
  print(PREFIX + " ".join(str(message).split()), file=sys.stderr, flush=True)
  sys.exit(code)


def parse_flags(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """absl's flag parsing (app.run's ``flags_parser``), with every failure reported by :func:`fail`. The config file
  is loaded here too (config_flags loads it lazily), so that its errors are flag errors."""
  try:
    rest = flag_values(list(argv))
    if _config_flag(argv):
      flag_values.config.keys()  # config_flags loads the file on first use: let it fail here
    return rest
  except SystemExit:
    raise
  except Exception as e:  # noqa: BLE001 -- whatever flag parsing raises is the command line's problem
    fail(explain(e, argv))


def explain(error: BaseException, argv: Sequence[str]) -> str:
  """The one sentence that says what is wrong with the command line."""
  import pathlib  # pylint: disable=g-import-not-at-top

  where = _config_flag(argv)
  if where and not pathlib.Path(where.partition(":")[0]).is_file():
    return f"no config file {where.partition(':')[0]} (--config={where})"
  bad = _bad_override(argv)
  if bad:
    return bad
  root = _innermost(error)
  first = str(error).splitlines()[0] if str(error) else ""
  if isinstance(error, flags.Error) and (root is error or "parsing config file" not in first):
    return first
  text = str(root).strip().strip('"').strip("'")
  if where and "config file" not in text:
    return f"{text} (in --config={where})"
  return text


def _innermost(error: BaseException) -> BaseException:
  """The exception that started it (absl wraps a config file's error in its own)."""
  seen = error
  while True:
    nxt = seen.__cause__ or seen.__context__
    if nxt is None or nxt is seen:
      return seen
    seen = nxt


def _config_flag(argv: Sequence[str]) -> Optional[str]:
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      return a.split("=", 1)[1]
    if a == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _overrides(argv: Sequence[str]) -> list[tuple[str, str]]:
  out = []
  for i, a in enumerate(argv):
    if a.startswith("--config."):
      name, eq, value = a[len("--config."):].partition("=")
      if not eq and i + 1 < len(argv):
        value = argv[i + 1]
      out.append((name, value))
  return out


def _bad_override(argv: Sequence[str]) -> Optional[str]:
  """The first ``--config.<path>`` whose path is not a field of the config file (None: all are, or the config
  itself cannot be loaded, which the caller reports)."""
  where, overrides = _config_flag(argv), _overrides(argv)
  if not where or not overrides:
    return None
  from deft_jax import config_lib  # pylint: disable=g-import-not-at-top
  path, _, arg = where.partition(":")
  try:
    config = config_lib.from_file(path, arg or None)
  except Exception:  # noqa: BLE001 -- the config's own error is reported instead
    return None
  for name, value in overrides:
    missing = config_lib.missing_field(config, name)
    if missing is not None:
      parent, fields = missing
      return (f"unknown config field {name!r} (--config.{name}={value}): {parent or 'the config'} has "
              f"{', '.join(fields)}")
  return None
