"""Clean-sample selectors the paper compares DEFT with; each returns the detector output contract.

Every selector returns a dict of NumPy arrays over the N training examples, in index order: ``p_clean``
float32 (its clean score in [0, 1]), ``is_clean`` bool, ``suggested`` int32 (the model's prediction),
``margin`` float32 (logit of the given label minus the largest other logit).

- ``label_match``: zero-shot CLIP; clean iff the zero-shot prediction equals the given label;
  p_clean = the zero-shot probability of the given label. No training.
- ``small_loss``: trains CLIP with ``baselines.peft`` (VPT-deep) and a linear head with CE; in each batch only
  the (1 - r) fraction with the smallest CE trains, r = ``baselines.small_loss_rate`` (default: the split's
  true noise rate) ramped up from 0 over ``baselines.warmup_epochs``. Like DEFT's, its mask is the online
  selection of the last epoch; p_clean = the model's probability of the given label on that visit.
- ``gmm`` (DivideMix style): the same model; after each warm-up epoch the per-sample CE on un-augmented
  images is min-max normalised and fitted with a two-component Gaussian mixture; the next epoch trains on the
  samples whose posterior under the low-loss component exceeds 0.5. The final mask is that rule applied to
  the trained model; p_clean = the posterior.

With ``workdir`` the result is kept in ``workdir/baselines/<name>/selection.npz`` and reused, and training
checkpoints there (resumable like every stage).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import jax
import numpy as np
from clu import metric_writers

from deft_jax.adapt import build, evaluate, gmm as gmm_lib
from deft_jax.adapt import trainer as trainer_lib
from deft_jax.checkpoint import StageCheckpointer, load_npz, save_npz

OUTPUT_FILE = "selection.npz"
# Streams of the run seed: independent initialisations and data orders per selector.
_STREAMS = {"label_match": 101, "small_loss": 102, "gmm": 103}


def outputs_from_logits(logits: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
  """p_label (softmax probability of the given label), suggested and margin from logits [N, C]."""
  z = np.asarray(logits, np.float64)
  p = np.exp(z - z.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  rows = np.arange(len(z))
  others = z.copy()
  others[rows, labels] = -np.inf
  return {"p_label": p[rows, labels].astype(np.float32), "suggested": z.argmax(-1).astype(np.int32),
          "margin": (z[rows, labels] - others.max(-1)).astype(np.float32)}


def _contract(p_clean, is_clean, suggested, margin) -> dict[str, np.ndarray]:
  return {"p_clean": np.asarray(p_clean, np.float32), "is_clean": np.asarray(is_clean, bool),
          "suggested": np.asarray(suggested, np.int32), "margin": np.asarray(margin, np.float32)}


def _out_dir(workdir, name) -> Optional[Path]:
  return None if workdir is None else Path(workdir) / "baselines" / name


def _load(out_dir: Optional[Path]) -> Optional[dict]:
  if out_dir is None or not (out_dir / OUTPUT_FILE).exists():
    return None
  logging.info("[baselines] reusing %s", out_dir / OUTPUT_FILE)
  return load_npz(out_dir / OUTPUT_FILE)


def _finish(out_dir: Optional[Path], result: dict, train_split, name: str) -> dict:
  if train_split.clean_labels is not None:
    from deft_jax.report import metrics as report_metrics  # pylint: disable=g-import-not-at-top
    m = report_metrics.detection_metrics(result["is_clean"], train_split.labels, train_split.clean_labels)
    logging.info("[baselines/%s] selected %d of %d; precision %.4f recall %.4f f1 %.4f", name,
                 int(result["is_clean"].sum()), len(result["is_clean"]), m["precision"], m["recall"], m["f1"])
  if out_dir is not None:
    save_npz(out_dir / OUTPUT_FILE, result)
  return result


def label_match(config, train_split, *, mesh, clip_checkpoint, workdir=None, writer=None) -> dict:
  """Clean iff CLIP's zero-shot prediction (un-augmented image) equals the given label."""
  del writer
  out_dir = _out_dir(workdir, "label_match")
  cached = _load(out_dir)
  if cached is not None:
    return cached
  c = build.zeroshot_classifier(config, train_split.class_names, mesh=mesh, checkpoint=clip_checkpoint,
                                rng=build.rng_for(config, _STREAMS["label_match"]))
  logits = evaluate.predict(c, c.variables, train_split, mesh=mesh, batch_size=config.baselines.eval_batch_size,
                            sharding_rules=config.sharding_rules)
  o = outputs_from_logits(logits, train_split.labels)
  result = _contract(o["p_label"], o["suggested"] == train_split.labels, o["suggested"], o["margin"])
  return _finish(out_dir, result, train_split, "label_match")


def _train(config, split, name: str, *, mesh, clip_checkpoint, workdir, writer, settings_kw: dict,
           before_epoch_factory=None):
  """Trains the selectors' model on all of ``split``; returns (trainer, final state)."""
  b = config.baselines
  writer = writer or metric_writers.LoggingWriter()
  out_dir = _out_dir(workdir, name)
  c = build.selector_classifier(config, split.class_names, mesh=mesh, checkpoint=clip_checkpoint,
                                rng=build.rng_for(config, _STREAMS[name]))
  budget = trainer_lib.TrainBudget(epochs=int(b.epochs), steps=0, batch_size=int(b.batch_size))
  spe = trainer_lib.steps_per_epoch(split, budget.batch_size)
  total = budget.total_steps(spe)
  settings = trainer_lib.make_settings("ce", {}, steps_per_epoch=spe, **settings_kw)
  tr = trainer_lib.Trainer(c, optim_cfg=b.optim, schedule_cfg=b.schedule, settings=settings, total_steps=total,
                           steps_per_epoch=spe, mesh=mesh, sharding_rules=config.sharding_rules)
  k_train = jax.random.fold_in(build.rng_for(config, _STREAMS[name]), 1)
  shape = dict(num_examples=split.num_examples, num_classes=split.num_classes)
  ckpt = None
  if out_dir is not None:
    ckpt = StageCheckpointer(out_dir / "checkpoints", every_steps=config.checkpoint_every_steps)
    state = trainer_lib.restore_or_init(tr, k_train, ckpt, **shape)
  else:
    state = tr.init_state(k_train, **shape)
  trainer_lib.log_budget(f"baselines/{name}", split, budget, spe, total)
  before_epoch = before_epoch_factory(tr) if before_epoch_factory else None
  state = trainer_lib.fit(tr, state, split, stage=f"baselines/{name}", budget=budget,
                          seed=int(config.seed) + _STREAMS[name], augment=config.data.train_augment, mesh=mesh,
                          writer=writer, checkpointer=ckpt, log_every_steps=config.log_every_steps,
                          checkpoint_every_steps=config.checkpoint_every_steps, before_epoch=before_epoch)
  if ckpt is not None:
    ckpt.close()
  return tr, state


def small_loss(config, train_split, *, mesh, clip_checkpoint, workdir=None, writer=None) -> dict:
  """Co-teaching-style small-loss selection (single network), online mask of the last epoch."""
  out_dir = _out_dir(workdir, "small_loss")
  cached = _load(out_dir)
  if cached is not None:
    return cached
  b = config.baselines
  rate = b.small_loss_rate
  if rate is None:
    rate = train_split.noise_rate()
    if rate is None:
      raise ValueError("the small-loss selector needs baselines.small_loss_rate: the true noise rate of "
                       f"{train_split.name} is unknown (no clean labels)")
    logging.info("[baselines/small_loss] forget rate = the true noise rate %.4f", rate)
  _, state = _train(config, train_split, "small_loss", mesh=mesh, clip_checkpoint=clip_checkpoint,
                    workdir=workdir, writer=writer,
                    settings_kw=dict(selection="small_loss", small_loss_rate=float(rate),
                                     warmup_epochs=int(b.warmup_epochs), record_online=True))
  online = jax.device_get(state["online"])
  result = _contract(online["p_label"], online["selected"], online["suggested"], online["margin"])
  return _finish(out_dir, result, train_split, "small_loss")


def _gmm_outputs(tr: trainer_lib.Trainer, state, split, *, mesh, batch_size: int, sharding_rules) -> dict:
  logits = evaluate.predict(tr.classifier, tr.variables(state), split, mesh=mesh, batch_size=batch_size,
                            sharding_rules=sharding_rules)
  ce = evaluate.per_example_ce(logits, split.labels)
  post, model = gmm_lib.clean_posterior(ce)
  if model is not None:
    logging.info("[baselines/gmm] means %s, weights %s, %d iterations", np.round(model.means, 4),
                 np.round(model.weights, 4), model.iterations)
  return {"posterior": post, **outputs_from_logits(logits, split.labels)}


def gmm(config, train_split, *, mesh, clip_checkpoint, workdir=None, writer=None) -> dict:
  """DivideMix-style selection: a two-component GMM on normalised per-sample losses, refitted every epoch."""
  out_dir = _out_dir(workdir, "gmm")
  cached = _load(out_dir)
  if cached is not None:
    return cached
  b = config.baselines
  kw = dict(mesh=mesh, batch_size=int(b.eval_batch_size), sharding_rules=config.sharding_rules)
  warmup = int(b.warmup_epochs)

  def factory(tr):
    def before_epoch(state, epoch):
      # A resumed epoch keeps the mask it started with (mask_epoch says which epoch it belongs to).
      if epoch < warmup or int(jax.device_get(state["mask_epoch"])) == epoch:
        return state
      mask = _gmm_outputs(tr, state, train_split, **kw)["posterior"] > 0.5
      logging.info("[baselines/gmm] epoch %d trains on %d of %d samples", epoch + 1, mask.sum(), len(mask))
      return {**state, "sample_mask": jax.device_put(mask, state["sample_mask"].sharding),
              "mask_epoch": jax.device_put(np.int32(epoch), state["mask_epoch"].sharding)}
    return before_epoch

  tr, state = _train(config, train_split, "gmm", mesh=mesh, clip_checkpoint=clip_checkpoint, workdir=workdir,
                     writer=writer, settings_kw=dict(selection="sample_mask"), before_epoch_factory=factory)
  o = _gmm_outputs(tr, state, train_split, **kw)
  result = _contract(o["posterior"], o["posterior"] > 0.5, o["suggested"], o["margin"])
  return _finish(out_dir, result, train_split, "gmm")


SELECTORS = {"label_match": label_match, "small_loss": small_loss, "gmm": gmm}
