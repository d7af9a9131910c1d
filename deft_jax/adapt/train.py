"""Phase 2 driver: selects the training subset, trains the configured classifier resumably, evaluates it.

Config section ``adapt`` (defaults in config_lib.base_config):

- ``method``: "fft" | "peft" | "none" | "zeroshot" (see adapt/build.py); ``backbone``: "clip" or a
  ``models.backbones`` name (``backbone_checkpoint``, ``backbone_optimizer``).
- ``selection``: which labels train. "deft" (the detector's ``is_clean``), "all" (every given label),
  "label_match" / "small_loss" / "gmm" (those selectors' masks, adapt/selectors.py), "clean_oracle" (the
  examples whose given label equals the known clean label; examples without a known clean label are left out).
- ``epochs`` / ``steps``: ``steps > 0`` fixes the number of optimiser steps whatever the subset size (equal-step
  comparisons); ``steps = 0`` trains ``epochs`` epochs of the subset (the reference). ``batch_size``,
  ``optim``, ``schedule`` as in deft_jax.optim; ``augment`` ("" = ``data.train_augment``).
- ``trainable`` ("blocks" | "all" | rules), ``head_init`` ("random" | "text"), ``peft`` (for "peft"),
  ``loss`` ("ce" | "gce" | "sce" | "elr") with ``loss_params``, ``zeroshot_templates``.
- ``eval_batch_size``, ``eval_every_epochs`` (0 = only at the end).

Outputs in ``workdir/adapt``: ``results.json`` (written last and atomically; its presence marks the stage
complete and it is reused on a rerun), ``predictions.npz`` (test logits), ``checkpoints/`` (the train state).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Optional

import jax
import numpy as np

from deft_jax.adapt import build, evaluate, selectors
from deft_jax.adapt import trainer as trainer_lib
from deft_jax.checkpoint import StageCheckpointer, save_npz, write_json
from deft_jax.report import metrics as report_metrics

SELECTIONS = ("deft", "all", "label_match", "small_loss", "gmm", "clean_oracle")
RESULTS_FILE = "results.json"
PREDICTIONS_FILE = "predictions.npz"
_STREAM = 7  # of the run seed, for phase 2
CALIBRATION_IMAGES = 256


def selection_mask(config, train_split, detection: Optional[dict], *, mesh, clip_checkpoint, workdir=None,
                   writer=None) -> np.ndarray:
  """bool [N]: the training examples phase 2 uses under ``config.adapt.selection``."""
  sel = config.adapt.selection
  n = train_split.num_examples
  if sel == "deft":
    if detection is None or "is_clean" not in detection:
      raise ValueError("adapt.selection='deft' needs the detector's output (run the detect stage first)")
    mask = np.asarray(detection["is_clean"], bool)
  elif sel == "all":
    mask = np.ones(n, bool)
  elif sel == "clean_oracle":
    if train_split.clean_labels is None:
      raise ValueError(f"adapt.selection='clean_oracle' needs clean labels; {train_split.name} has none")
    mask = (train_split.clean_labels >= 0) & (train_split.labels == train_split.clean_labels)
  elif sel in selectors.SELECTORS:
    out = selectors.SELECTORS[sel](config, train_split, mesh=mesh, clip_checkpoint=clip_checkpoint,
                                   workdir=workdir, writer=writer)
    mask = np.asarray(out["is_clean"], bool)
  else:
    raise ValueError(f"unknown adapt.selection {sel!r}; choose one of {SELECTIONS}")
  if mask.shape != (n,):
    raise ValueError(f"the {sel!r} selection has shape {mask.shape}, the train split has {n} examples")
  if not mask.any():
    raise ValueError(f"the {sel!r} selection is empty: nothing to fine-tune on")
  return mask


def calibration_images(split, limit: int = CALIBRATION_IMAGES):
  """The first ``limit`` images of ``split``, resized and normalised on the host (identical on every process)."""

  def fn(image_size, mean, std):
    idx = np.arange(min(limit, split.num_examples))
    x = split.load_images(idx, image_size).astype(np.float32) / 255.0
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)

  return fn


def _selection_info(mask: np.ndarray, train_split) -> dict:
  info = {"num_train": int(train_split.num_examples), "num_selected": int(mask.sum())}
  if train_split.clean_labels is not None:
    m = report_metrics.detection_metrics(mask, train_split.labels, train_split.clean_labels)
    info.update({f"selection_{k}": _num(m[k]) for k in ("precision", "recall", "f1")})
  return info


def _num(x) -> Optional[float]:
  x = float(x)
  return None if math.isnan(x) else x


def _pct(x) -> str:
  return "-" if x is None else f"{100 * float(x):.2f}%"


def train_classifier(config, classifier, subset, *, mesh, writer, out_dir: Path, eval_splits=None):
  """Trains ``classifier`` on ``subset`` as ``config.adapt`` says; returns (trainer, final state)."""
  a = config.adapt
  budget = trainer_lib.TrainBudget(epochs=int(a.epochs), steps=int(a.steps), batch_size=int(a.batch_size))
  spe = trainer_lib.steps_per_epoch(subset, budget.batch_size)
  total = budget.total_steps(spe)
  settings = trainer_lib.make_settings(a.loss, a.loss_params, steps_per_epoch=spe)
  tr = trainer_lib.Trainer(classifier, optim_cfg=a.optim, schedule_cfg=a.schedule, settings=settings,
                           total_steps=total, steps_per_epoch=spe, mesh=mesh, sharding_rules=config.sharding_rules)
  ckpt = StageCheckpointer(out_dir / "checkpoints", every_steps=config.checkpoint_every_steps)
  state = trainer_lib.restore_or_init(tr, jax.random.fold_in(build.rng_for(config, _STREAM), 1), ckpt,
                                      num_examples=subset.num_examples, num_classes=subset.num_classes)
  trainer_lib.log_budget("adapt", subset, budget, spe, total)
  every = int(a.eval_every_epochs or 0)

  def on_epoch_end(st, epoch):
    if not every or not eval_splits or (epoch + 1) % every:
      return None
    ev = evaluate.evaluate(classifier, tr.variables(st), eval_splits, mesh=mesh, batch_size=a.eval_batch_size,
                           sharding_rules=config.sharding_rules)
    return {f"{name}_top1": m["top1"] for name, m in ev.items() if m["top1"] is not None}

  state = trainer_lib.fit(tr, state, subset, stage="adapt", budget=budget, seed=int(config.seed) + _STREAM,
                          augment=a.augment or config.data.train_augment, mesh=mesh, writer=writer,
                          checkpointer=ckpt, log_every_steps=config.log_every_steps,
                          checkpoint_every_steps=config.checkpoint_every_steps, on_epoch_end=on_epoch_end)
  ckpt.close()
  return tr, state


def run(config, workdir: str | Path, *, splits, mesh, writer, clip_checkpoint: Optional[str],
        detection: Optional[dict]) -> dict:
  """Phase 2 (resuming if possible); returns the results also written to ``workdir/adapt/results.json``."""
  out_dir = Path(workdir) / "adapt"
  results_path = out_dir / RESULTS_FILE
  if results_path.exists():
    logging.info("[adapt] complete: reusing %s", results_path)
    return json.loads(results_path.read_text())
  a = config.adapt
  train = splits["train"]
  info = {"method": a.method, "backbone": a.backbone if a.method in ("fft", "peft") else "clip"}
  eval_splits = {k: splits[k] for k in evaluate.EVAL_SPLITS if k in splits}
  if a.method in ("fft", "peft"):
    mask = selection_mask(config, train, detection, mesh=mesh, clip_checkpoint=clip_checkpoint, workdir=workdir,
                          writer=writer)
    subset = train.subset(np.flatnonzero(mask), name=f"{train.name}[{a.selection}]")
    info.update(selection=a.selection, loss=a.loss, trainable=a.trainable if a.method == "fft" else "peft",
                head_init=a.head_init, **_selection_info(mask, train))
    logging.info("[adapt] %s on %d of %d examples (selection %s)", a.method, subset.num_examples,
                 train.num_examples, a.selection)
    classifier = build.phase2_classifier(config, train.class_names, mesh=mesh, checkpoint=clip_checkpoint,
                                         rng=build.rng_for(config, _STREAM), workdir=workdir,
                                         calibration_images=calibration_images(subset))
    tr, state = train_classifier(config, classifier, subset, mesh=mesh, writer=writer, out_dir=out_dir,
                                 eval_splits=eval_splits)
    variables = tr.variables(state)
    info["steps"] = int(jax.device_get(state["step"]))
    info["epochs_equivalent"] = info["steps"] / tr.steps_per_epoch
  else:
    classifier = build.phase2_classifier(config, train.class_names, mesh=mesh, checkpoint=clip_checkpoint,
                                         rng=build.rng_for(config, _STREAM), workdir=workdir)
    variables = classifier.variables
    info["steps"] = 0
  ev = evaluate.evaluate(classifier, variables, eval_splits, mesh=mesh, batch_size=a.eval_batch_size,
                         sharding_rules=config.sharding_rules, keep_logits=True)
  logits = {f"{k}_logits": v.pop("logits") for k, v in ev.items()}
  if logits:
    save_npz(out_dir / PREDICTIONS_FILE, logits)
  results = {**info, **ev}
  for name, m in ev.items():
    logging.info("[adapt] %s: top-1 %s, top-5 %s, mean per-class %s (%d examples)", name, _pct(m.get("top1")),
                 _pct(m.get("top5")), _pct(m.get("mean_per_class_accuracy")), m["count"])
    writer.write_scalars(info["steps"], {f"adapt/{name}_top1": m["top1"] or 0.0})
  write_json(results_path, results, sort_keys=True)
  return results
