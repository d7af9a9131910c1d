"""Comparison detectors ("baselines"): each is one module of this package, registered by name in :data:`BASELINES`.

Adding a baseline is one file here, its line in :data:`BASELINES` and, if it has options, a config line
(``config.baselines.<name>``). A baseline module defines

- ``NAME``: its display name in the report ("small-loss");
- ``STREAM``: an integer, its independent stream of the run seed (initialisation, data order);
- optionally ``reads(config) -> tuple``: config sections beyond ``baselines`` (and data, model, seed) its
  result depends on, e.g. the GMM baseline's ("adapt",); recorded beside the result so that a workdir with a
  changed section refuses to reuse it (deft_jax/stages.py);
- ``detect(ctx) -> dict``: the detector output contract over the N training examples (docs/ARCHITECTURE.md):
  ``p_clean``, ``is_clean``, ``suggested``, ``margin``, ``label_score`` and ``score`` (the ranking score), plus
  optional 0-d entries such as ``test_top1``. ``ctx`` (``_common.Context``) holds the config, the train split,
  the mesh, the run's CLIP (classify.run_clip.RunCLIP), ``out_dir`` for its training checkpoints (None without a
  workdir), the writer, the evaluation splits, and its seed stream (``ctx.rng``); ``_common`` has the shared
  pieces (training with the baselines' recipe, predictions, scores from logits, the frozen CLIP's embeddings).

``config.baselines.methods`` lists the ones the report compares with DEFT; ``adapt.train_on`` may name any of
them. :func:`run` keeps each result in ``workdir/baselines/<name>/detection.npz`` and reuses it on a rerun.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from deft_jax import registry

OUTPUT_FILE = "detection.npz"
# The registry (deft_jax/registry.py): a baseline's name -> its module, imported when it runs.
BASELINES = {
    "cleanlab_cl": "deft_jax.baselines.cleanlab_cl",
    "cleanlab_datalab": "deft_jax.baselines.cleanlab_datalab",
    "gmm": "deft_jax.baselines.gmm",
    "label_match": "deft_jax.baselines.label_match",
    "small_loss": "deft_jax.baselines.small_loss",
    "turn": "deft_jax.baselines.turn",
    "vlpt": "deft_jax.baselines.vlpt",
}


def available() -> list[str]:
  """The baseline names (without importing any of them)."""
  return sorted(BASELINES)


def get(name: str):
  """The module of baseline ``name``; an unknown name is an error listing the known ones."""
  if name not in BASELINES:
    from deft_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
    raise ConfigError(f"unknown baseline {name!r}; known: {available()} (deft_jax/baselines/)")
  return registry.load(BASELINES[name])


def display_name(name: str) -> str:
  return get(name).NAME


def outputs(workdir, name: str) -> Path:
  """Where baseline ``name`` keeps its result (and its checkpoints) in ``workdir``."""
  from deft_jax import stages  # pylint: disable=g-import-not-at-top
  return stages.directory(workdir, "baselines") / name


def run(name: str, config, train_split, *, mesh, clip, workdir=None, writer=None, eval_splits=None) -> dict:
  """Baseline ``name`` on ``train_split`` with the run's CLIP ``clip`` (classify.run_clip.RunCLIP): its cached
  result when ``workdir`` holds one, else computed (and kept)."""
  from deft_jax import stages  # pylint: disable=g-import-not-at-top
  from deft_jax.baselines import _common  # pylint: disable=g-import-not-at-top
  from deft_jax.checkpoint import load_npz, save_npz, write_json  # pylint: disable=g-import-not-at-top

  module = get(name)
  out_dir: Optional[Path] = None if workdir is None else outputs(workdir, name)
  if out_dir is not None and (out_dir / OUTPUT_FILE).exists():
    logging.info("[baselines/%s] reusing %s", name, out_dir / OUTPUT_FILE)
    return load_npz(out_dir / OUTPUT_FILE)
  if out_dir is not None and hasattr(module, "reads"):
    write_json(out_dir / stages.READS_FILE, list(module.reads(config)))  # before any checkpoint is written
  result = module.detect(_common.Context(config, train_split, mesh, clip, name, module.STREAM, out_dir, writer,
                                         dict(eval_splits or {})))
  _common.check_contract(result, train_split.num_examples, name)
  from deft_jax.report.inputs import check_finite_outputs  # pylint: disable=g-import-not-at-top
  check_finite_outputs(result, "baselines")
  _common.log_quality(name, result, train_split)
  if out_dir is not None:
    save_npz(out_dir / OUTPUT_FILE, result)
  return result


def run_configured(config, train_split, **kw) -> dict[str, dict]:
  """Every baseline of ``config.baselines.methods``, in that order."""
  return {name: run(name, config, train_split, **kw) for name in config.baselines.methods}
