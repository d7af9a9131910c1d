"""Phase 2 driver: selects the training subset, trains the configured classifier resumably, evaluates it.

Config section ``adapt`` (defaults in config_lib.base_config):

- ``method``: "fft" | "peft" | "vlpt" | "none" | "zeroshot" (see adapt/build.py); ``backbone``: "clip" or a
  ``models.backbones`` name (``backbone_checkpoint``, ``backbone_optimizer``).
- ``train_on``: which labels train. "deft" (the detector's ``is_clean``), "all" (every given label), the name of
  any baseline (its mask, deft_jax/baselines/), "clean_oracle" (the examples whose given label equals the
  known clean label; examples without a known clean label are left out).
- ``epoch_over``: "all" (the reference: every epoch visits all N training examples, ceil(N / batch) steps, and
  each batch's loss is the mean over its selected examples; a batch without one contributes a zero loss) or
  "selected" (every epoch visits only the selected subset, ceil(|S| / batch) steps).
- ``epochs`` / ``steps``: ``steps > 0`` fixes the number of optimiser steps whatever the subset size (equal-step
  comparisons); ``steps = 0`` trains ``epochs`` epochs (the reference). ``batch_size``,
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

from deft_jax import baselines, stages
from deft_jax.adapt import build, evaluate
from deft_jax.adapt import fit as fit_lib
from deft_jax.adapt import trainer as trainer_lib
from deft_jax.checkpoint import StageCheckpointer, save_npz, write_json
from deft_jax.report import metrics as report_metrics
from deft_jax.report.summary import format_pct
from deft_jax.errors import ConfigError

TRAIN_ON = ("deft", "all", "clean_oracle")  # and any baseline of deft_jax/baselines/
RESULTS_FILE = "results.json"
HISTORY_FILE = "eval_history.json"  # top-1 per evaluated epoch (adapt.eval_every_epochs > 0)
PREDICTIONS_FILE = "predictions.npz"
_STREAM = 7  # of the run seed, for phase 2
CALIBRATION_IMAGES = 256


def outputs(workdir) -> dict[str, Path]:
  """Where phase 2 keeps its outputs: ``results`` (written last; its presence marks the stage complete),
  ``predictions`` (test logits), ``history`` (top-1 per evaluated epoch), ``checkpoints``."""
  d = stages.directory(workdir, "adapt")
  return {"dir": d, "results": d / RESULTS_FILE, "predictions": d / PREDICTIONS_FILE, "history": d / HISTORY_FILE,
          "checkpoints": d / "checkpoints"}


def train_mask(config, train_split, detection: Optional[dict], *, mesh, clip_checkpoint, workdir=None,
               writer=None, eval_splits=None) -> np.ndarray:
  """bool [N]: the training examples phase 2 uses under ``config.adapt.train_on``."""
  on = config.adapt.train_on
  n = train_split.num_examples
  if on == "deft":
    if detection is None or "is_clean" not in detection:
      raise ConfigError("adapt.train_on='deft' needs the detector's output (run the detect stage first)")
    mask = np.asarray(detection["is_clean"], bool)
  elif on == "all":
    mask = np.ones(n, bool)
  elif on == "clean_oracle":
    if train_split.clean_labels is None:
      raise ConfigError(f"adapt.train_on='clean_oracle' needs clean labels; {train_split.name} has none")
    mask = (train_split.clean_labels >= 0) & (train_split.labels == train_split.clean_labels)
  elif on in baselines.available():
    out = baselines.run(on, config, train_split, mesh=mesh, clip_checkpoint=clip_checkpoint, workdir=workdir,
                        writer=writer, eval_splits=eval_splits)
    mask = np.asarray(out["is_clean"], bool)
  else:
    raise ConfigError(f"unknown adapt.train_on {on!r}; choose one of {list(TRAIN_ON) + baselines.available()}")
  if mask.shape != (n,):
    raise ConfigError(f"the {on!r} selection has shape {mask.shape}, the train split has {n} examples")
  if not mask.any():
    raise ConfigError(f"the {on!r} selection is empty: nothing to fine-tune on")
  return mask


def calibration_images(split, limit: int = CALIBRATION_IMAGES):
  """``inputs -> images``: the first ``limit`` images of ``split``, resized and normalised on the host (identical
  on every process)."""

  def fn(inputs):
    idx = np.arange(min(limit, split.num_examples))
    x = split.load_images(idx, inputs.image_size).astype(np.float32) / 255.0
    return (x - np.asarray(inputs.mean, np.float32)) / np.asarray(inputs.std, np.float32)

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


def read_history(path: Path) -> list[dict]:
  return json.loads(path.read_text()) if path.exists() else []


def best_over_epochs(history: list[dict], final: dict, last_epoch: float) -> dict:
  """{split: {"best_top1", "best_epoch"}} over the evaluated epochs and the final evaluation (the reference
  prints the best accuracy beside the last)."""
  out = {}
  for name, m in final.items():
    points = [(h[name], h["epoch"]) for h in history if h.get(name) is not None]
    if m.get("top1") is not None:
      points.append((m["top1"], last_epoch))
    if points:
      best = max(points, key=lambda p: (p[0], -p[1]))  # the earliest epoch among equals
      out[name] = {"best_top1": best[0], "best_epoch": best[1]}
  return out


EPOCH_OVER = ("all", "selected")
TRAINED = ("fft", "peft", "vlpt")  # the methods that train on the selected labels


def train_classifier(config, classifier, train, mask, *, mesh, writer, out_dir: Path, eval_splits=None):
  """Trains ``classifier`` on the examples of ``train`` that ``mask`` selects, as ``config.adapt`` says
  (``epoch_over``: all N examples per epoch with the loss masked, or the selected subset alone); returns
  (trainer, final state)."""
  a = config.adapt
  over = a.epoch_over
  if over not in EPOCH_OVER:
    raise ConfigError(f"adapt.epoch_over must be one of {EPOCH_OVER}, got {over!r}")
  if over == "all":
    data, sample_mask, loss_mask = train, mask, "sample_mask"
  else:
    data = train.subset(np.flatnonzero(mask), name=f"{train.name}[{a.train_on}]")
    sample_mask, loss_mask = None, "none"
  budget = trainer_lib.TrainBudget(epochs=int(a.epochs), steps=int(a.steps), batch_size=int(a.batch_size))
  spe = fit_lib.steps_per_epoch(data, budget.batch_size)
  total = budget.total_steps(spe)
  settings = trainer_lib.make_settings(a.loss, a.loss_params, steps_per_epoch=spe, loss_mask=loss_mask)
  tr = trainer_lib.Trainer(classifier, optim_cfg=a.optim, schedule_cfg=a.schedule, settings=settings,
                           total_steps=total, steps_per_epoch=spe, mesh=mesh, sharding_rules=config.sharding_rules)
  every = int(a.eval_every_epochs or 0)
  history_path = out_dir / HISTORY_FILE

  def on_epoch_end(st, epoch):
    if not every or not eval_splits or (epoch + 1) % every:
      return None
    ev = evaluate.evaluate(classifier, tr.variables(st), eval_splits, mesh=mesh, batch_size=a.eval_batch_size,
                           sharding_rules=config.sharding_rules)
    top1 = {name: m["top1"] for name, m in ev.items() if m["top1"] is not None}
    # Kept on disk, so that a resumed run still knows the accuracy of the epochs before the interruption.
    history = {h["epoch"]: h for h in read_history(history_path)}
    history[epoch + 1] = {"epoch": epoch + 1, "step": int(jax.device_get(st["step"])), **top1}
    write_json(history_path, [history[e] for e in sorted(history)])
    return {f"{name}_top1": v for name, v in top1.items()}

  with StageCheckpointer(out_dir / "checkpoints", every_steps=config.checkpoint_every_steps) as ckpt:
    state = tr.init_state(jax.random.fold_in(build.rng_for(config, _STREAM), 1), num_examples=data.num_examples,
                          num_classes=data.num_classes, sample_mask=sample_mask, checkpointer=ckpt)
    fit_lib.log_budget("adapt", data, budget, spe, total)
    state = fit_lib.fit(tr, state, data, stage="adapt", budget=budget, seed=int(config.seed) + _STREAM,
                        augment=a.augment or config.data.train_augment, mesh=mesh, writer=writer, checkpointer=ckpt,
                        log_every_steps=config.log_every_steps, checkpoint_every_steps=config.checkpoint_every_steps,
                        on_epoch_end=on_epoch_end)
  return tr, state


def run(config, workdir: str | Path, *, splits, mesh, writer, clip_checkpoint: Optional[str],
        detection: Optional[dict]) -> dict:
  """Phase 2 (resuming if possible); returns the results also written to ``workdir/adapt/results.json``."""
  out = outputs(workdir)
  out_dir, results_path = out["dir"], out["results"]
  if results_path.exists():
    logging.info("[adapt] complete: reusing %s", results_path)
    return json.loads(results_path.read_text())
  a = config.adapt
  train = splits["train"]
  info = {"method": a.method, "backbone": a.backbone if a.method in TRAINED else "clip"}
  eval_splits = {k: splits[k] for k in evaluate.EVAL_SPLITS if k in splits}
  if a.method in TRAINED:
    mask = train_mask(config, train, detection, mesh=mesh, clip_checkpoint=clip_checkpoint, workdir=workdir,
                      writer=writer, eval_splits=eval_splits)
    subset = train.subset(np.flatnonzero(mask), name=f"{train.name}[{a.train_on}]")
    info.update(train_on=a.train_on, loss=a.loss, trainable=a.trainable if a.method == "fft" else a.method,
                head_init=a.head_init, epoch_over=a.epoch_over, **_selection_info(mask, train))
    logging.info("[adapt] %s on %d of %d examples (train_on %s)", a.method, subset.num_examples,
                 train.num_examples, a.train_on)
    classifier = build.phase2_classifier(config, train.class_names, mesh=mesh, checkpoint=clip_checkpoint,
                                         rng=build.rng_for(config, _STREAM), workdir=workdir,
                                         calibration_images=calibration_images(subset))
    tr, state = train_classifier(config, classifier, train, mask, mesh=mesh, writer=writer, out_dir=out_dir,
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
    save_npz(out["predictions"], logits)
  history = read_history(out["history"])
  if history:
    for name, best in best_over_epochs(history, ev, info.get("epochs_equivalent", 0)).items():
      ev[name].update(best)
  results = {**info, **ev}
  for name, m in ev.items():
    best = f", best top-1 {format_pct(m['best_top1'], 2)} (epoch {m['best_epoch']:g})" if "best_top1" in m else ""
    logging.info("[adapt] %s: top-1 %s%s, top-5 %s, mean per-class %s (%d examples)", name,
                 format_pct(m.get("top1"), 2), best, format_pct(m.get("top5"), 2),
                 format_pct(m.get("mean_per_class_accuracy"), 2), m["count"])
    writer.write_scalars(info["steps"], {f"adapt/{name}_top1": m["top1"] or 0.0})
  write_json(results_path, results, sort_keys=True)
  return results
