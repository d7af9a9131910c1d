"""Phase 2 driver: trains the configured classifier resumably on the selected examples, evaluates it.

Config section ``adapt`` (defaults in config_lib.base_config):

- ``method``: a phase-2 method of the registry adapt.METHODS ("fft" | "peft" | "vlpt" | "none" | "zeroshot", see
  adapt/methods.py); ``backbone``: "clip" or a ``models.backbones`` name (``backbone_checkpoint``,
  ``backbone_optimizer``).
- ``train_on``: which labels train. "deft" (the detector's ``is_clean``), "all" (every given label), the name of
  any baseline (its mask, deft_jax/baselines/), "clean_oracle" (the examples whose given label equals the
  known clean label; examples without a known clean label are left out). run.py computes this selection
  (run.train_mask) and hands it to :func:`run`.
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

from deft_jax import adapt, stages
from deft_jax.adapt import methods
from deft_jax.checkpoint import StageCheckpointer, save_npz, write_json
from deft_jax.classify import classifier as clf_lib
from deft_jax.classify import evaluate
from deft_jax.classify import fit as fit_lib
from deft_jax.classify import trainer as trainer_lib
from deft_jax.report import metrics as report_metrics
from deft_jax.report.summary import format_pct
from deft_jax.errors import ConfigError

RESULTS_FILE = "results.json"
HISTORY_FILE = "eval_history.json"  # top-1 per evaluated epoch (adapt.eval_every_epochs > 0)
PREDICTIONS_FILE = "predictions.npz"
_STREAM = 7  # of the run seed, for phase 2


def outputs(workdir) -> dict[str, Path]:
  """Where phase 2 keeps its outputs: ``results`` (written last; its presence marks the stage complete),
  ``predictions`` (test logits), ``history`` (top-1 per evaluated epoch), ``checkpoints``."""
  d = stages.directory(workdir, "adapt")
  return {"dir": d, "results": d / RESULTS_FILE, "predictions": d / PREDICTIONS_FILE, "history": d / HISTORY_FILE,
          "checkpoints": d / "checkpoints"}


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
    state = tr.init_state(jax.random.fold_in(trainer_lib.rng_for(config, _STREAM), 1), num_examples=data.num_examples,
                          num_classes=data.num_classes, sample_mask=sample_mask, checkpointer=ckpt)
    fit_lib.log_budget("adapt", data, budget, spe, total)
    state = fit_lib.fit(tr, state, data, stage="adapt", budget=budget, seed=int(config.seed) + _STREAM,
                        augment=a.augment or config.data.train_augment, mesh=mesh, writer=writer, checkpointer=ckpt,
                        log_every_steps=config.log_every_steps, checkpoint_every_steps=config.checkpoint_every_steps,
                        on_epoch_end=on_epoch_end)
  return tr, state


def run(config, workdir: str | Path, *, splits, mesh, writer, clip, mask: Optional[np.ndarray],
        phase1_params: Optional[Path] = None) -> dict:
  """Phase 2 (resuming if possible) with the run's CLIP ``clip`` (classify.run_clip.RunCLIP); returns the results
  also written to ``workdir/adapt/results.json``. ``mask`` (bool [N]): the selected training examples
  (``adapt.train_on``, run.train_mask), for the methods that train; ``phase1_params``: phase 1's learned
  parameters file, for method "none"."""
  out = outputs(workdir)
  out_dir, results_path = out["dir"], out["results"]
  if results_path.exists():
    logging.info("[adapt] complete: reusing %s", results_path)
    return json.loads(results_path.read_text())
  a = config.adapt
  train = splits["train"]
  trains = adapt.trains(config)
  info = {"method": a.method, "backbone": a.backbone if trains else "clip"}
  eval_splits = {k: splits[k] for k in evaluate.EVAL_SPLITS if k in splits}
  ctx = methods.Context(config, train.class_names, clip, mesh, trainer_lib.rng_for(config, _STREAM),
                        phase1_params=phase1_params)
  if trains:
    if mask is None:
      raise ConfigError(f"adapt.method={a.method!r} trains on a selection (adapt.train_on), and none was given")
    subset = train.subset(np.flatnonzero(mask), name=f"{train.name}[{a.train_on}]")
    info.update(train_on=a.train_on, loss=a.loss, trainable=a.trainable if a.method == "fft" else a.method,
                head_init=a.head_init, epoch_over=a.epoch_over, **_selection_info(mask, train))
    logging.info("[adapt] %s on %d of %d examples (train_on %s)", a.method, subset.num_examples,
                 train.num_examples, a.train_on)
    ctx.calibration_images = clf_lib.calibration_images(subset)
    classifier = adapt.build(a.method, ctx)
    tr, state = train_classifier(config, classifier, train, mask, mesh=mesh, writer=writer, out_dir=out_dir,
                                 eval_splits=eval_splits)
    variables = tr.variables(state)
    info["steps"] = int(jax.device_get(state["step"]))
    info["epochs_equivalent"] = info["steps"] / tr.steps_per_epoch
  else:
    classifier = adapt.build(a.method, ctx)
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
