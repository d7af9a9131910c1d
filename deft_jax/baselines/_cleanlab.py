"""cleanlab itself, for the baselines that are cleanlab's own recipes (an optional extra)."""

from deft_jax.errors import DeftError

INSTALL = 'pip install "deft_jax[cleanlab]"  (or: pip install "cleanlab[datalab]==2.9.0" scikit-learn==1.9.1)'


class MissingExtraError(DeftError, ImportError):
  """An optional dependency a configured baseline needs is not installed."""


def require(what: str):
  """The cleanlab module, or an error that names the pip command."""
  try:
    import cleanlab  # pylint: disable=g-import-not-at-top
    import sklearn  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise MissingExtraError(f"the {what} baseline needs cleanlab and scikit-learn ({e.name} is missing): "
                            f"{INSTALL}") from e
  return cleanlab
