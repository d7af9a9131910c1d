"""What the baselines share: the output contract, scores from logits, and training a classifier on all labels."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import numpy as np
from clu import metric_writers

from deft_jax.checkpoint import StageCheckpointer
from deft_jax.classify import classifier as clf_lib
from deft_jax.classify import evaluate
from deft_jax.classify import fit as fit_lib
from deft_jax.classify import trainer as trainer_lib
from deft_jax.classify.run_clip import RunCLIP
from deft_jax.errors import DeftError
from deft_jax.models.peft import PEFTConfig

CONTRACT = ("p_clean", "is_clean", "suggested", "margin", "label_score", "score")


@dataclasses.dataclass
class Context:
  """What a baseline's ``detect(ctx)`` works with: the run's config and train split, where to run (mesh),
  the run's CLIP, where to keep checkpoints (``out_dir``, None without a workdir), the TensorBoard writer, the
  evaluation splits, and its own name and seed stream."""

  config: Any
  split: Any
  mesh: Any
  clip: RunCLIP
  name: str
  stream: int
  out_dir: Optional[Path] = None
  writer: Any = None
  eval_splits: dict = dataclasses.field(default_factory=dict)

  @property
  def rng(self):
    return trainer_lib.rng_for(self.config, self.stream)

  @property
  def where(self) -> dict:
    """The keyword arguments of the kit's classifier builders: this baseline's mesh, key and sharding rules."""
    return dict(mesh=self.mesh, rng=self.rng, sharding_rules=self.config.sharding_rules)

  @property
  def stage(self) -> str:
    return f"baselines/{self.name}"


def selector_classifier(ctx: Context) -> clf_lib.Classifier:
  """The training baselines' model: CLIP with ``baselines.peft`` (VPT-deep by default) and a linear head."""
  return clf_lib.clip_classifier(ctx.clip, num_classes=ctx.split.num_classes, **ctx.where,
                             peft=PEFTConfig.from_dict(ctx.config.baselines.peft), trainable="peft", head_init="random")


def contract(*, p_clean, is_clean, suggested, margin, score, label_score=None, **extra) -> dict[str, np.ndarray]:
  """The detector output contract; ``label_score`` defaults to ``p_clean``; ``extra`` entries (e.g. a test
  accuracy) are kept as arrays."""
  out = {"p_clean": np.asarray(p_clean, np.float32), "is_clean": np.asarray(is_clean, bool),
         "suggested": np.asarray(suggested, np.int32), "margin": np.asarray(margin, np.float32),
         "label_score": np.asarray(p_clean if label_score is None else label_score, np.float32),
         "score": np.asarray(score, np.float32)}
  out.update({k: np.asarray(v) for k, v in extra.items()})
  return out


def check_contract(result: dict, n: int, name: str) -> None:
  missing = [k for k in CONTRACT if k not in result]
  bad = [k for k in CONTRACT if k in result and np.shape(result[k]) != (n,)]
  if missing or bad:
    raise RuntimeError(f"baseline {name!r} broke the output contract: missing {missing}, wrong shape {bad} "
                       f"(want ({n},))")


def outputs_from_logits(logits: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
  """From logits [N, C] (C >= 2): p_label (softmax probability of the given label), log_p_label (its log in
  float64, computed so that it does not round to 0 for confident examples: it ranks them apart), suggested
  (argmax) and margin (logit of the given label minus the largest other)."""
  z = np.asarray(logits, np.float64)
  rows = np.arange(len(z))
  others = z - z[rows, labels][:, None]
  others[rows, labels] = -np.inf
  top = others.max(-1)
  lse = top + np.log(np.exp(others - top[:, None]).sum(-1))  # log sum_{k != y} exp(z_k - z_y)
  log_p = -np.logaddexp(0.0, lse)  # log p_y = -log(1 + that), exact where p_y rounds to 1
  return {"p_label": np.exp(log_p).astype(np.float32), "log_p_label": log_p,
          "suggested": z.argmax(-1).astype(np.int32), "margin": (-top).astype(np.float32)}


def from_predictions(logits: np.ndarray, labels: np.ndarray, **extra) -> dict[str, np.ndarray]:
  """The contract of a classifier's own verdict: clean iff its prediction equals the given label."""
  o = outputs_from_logits(logits, labels)
  return contract(p_clean=o["p_label"], is_clean=o["suggested"] == labels, suggested=o["suggested"],
                  margin=o["margin"], score=o["log_p_label"], **extra)


def log_quality(name: str, result: dict, split) -> None:
  if split.clean_labels is None:
    return
  from deft_jax.report import metrics as report_metrics  # pylint: disable=g-import-not-at-top
  m = report_metrics.detection_metrics(result["is_clean"], split.labels, split.clean_labels)
  logging.info("[baselines/%s] selected %d of %d; precision %.4f recall %.4f f1 %.4f", name,
               int(result["is_clean"].sum()), len(result["is_clean"]), m["precision"], m["recall"], m["f1"])


def nominal_noise_rate(config, split, what: str, override=None) -> float:
  """The noise rate a baseline that must be told one uses: ``override`` if set, else the nominal rate of the
  synthetic noise (``data.noise.ratio``; not the realised rate), else the split's known rate (real noise with
  ground truth)."""
  if override is not None:
    return float(override)
  noise = config.data.noise
  if noise.type not in ("none", "human", "", None):
    return float(noise.ratio)
  rate = split.noise_rate()
  if rate is None:
    raise DeftError(f"{what} needs a noise rate: the data has no synthetic noise and {split.name} has no clean "
                    "labels to measure one; set it in the config")
  return float(rate)


def train(ctx: Context, classifier, *, budget: Optional[trainer_lib.TrainBudget] = None, optim_cfg=None,
          schedule_cfg=None, settings_kw: Optional[dict] = None, before_epoch_factory: Optional[Callable] = None):
  """Trains ``classifier`` on every given label of the split (resumably under ``ctx.out_dir``), by default with the
  ``baselines`` recipe (epochs, batch, optimiser, schedule); returns (trainer, final state)."""
  config, split, b = ctx.config, ctx.split, ctx.config.baselines
  budget = budget or trainer_lib.TrainBudget(epochs=int(b.epochs), batch_size=int(b.batch_size))
  spe = fit_lib.steps_per_epoch(split, budget.batch_size)
  total = budget.total_steps(spe)
  settings = trainer_lib.make_settings("ce", {}, steps_per_epoch=spe, **(settings_kw or {}))
  tr = trainer_lib.Trainer(classifier, optim_cfg=b.optim if optim_cfg is None else optim_cfg,
                           schedule_cfg=b.schedule if schedule_cfg is None else schedule_cfg, settings=settings,
                           total_steps=total, steps_per_epoch=spe, mesh=ctx.mesh, sharding_rules=config.sharding_rules)
  ckpt = None if ctx.out_dir is None else StageCheckpointer(ctx.out_dir / "checkpoints",
                                                             every_steps=config.checkpoint_every_steps)
  with ckpt or contextlib.nullcontext():
    state = tr.init_state(jax.random.fold_in(ctx.rng, 1), num_examples=split.num_examples,
                          num_classes=split.num_classes, checkpointer=ckpt)
    fit_lib.log_budget(ctx.stage, split, budget, spe, total)
    state = fit_lib.fit(tr, state, split, stage=ctx.stage, budget=budget, seed=int(config.seed) + ctx.stream,
                        augment=config.data.train_augment, mesh=ctx.mesh,
                        writer=ctx.writer or metric_writers.LoggingWriter(), checkpointer=ckpt,
                        log_every_steps=config.log_every_steps, checkpoint_every_steps=config.checkpoint_every_steps,
                        before_epoch=before_epoch_factory(tr) if before_epoch_factory else None)
  return tr, state


def predict(ctx: Context, tr: trainer_lib.Trainer, state) -> np.ndarray:
  """Logits of the trained classifier on every example of the split (un-augmented)."""
  return evaluate.predict(tr.classifier, tr.variables(state), ctx.split, mesh=ctx.mesh,
                          batch_size=int(ctx.config.baselines.eval_batch_size),
                          sharding_rules=ctx.config.sharding_rules)


def clip_image_embeddings(ctx: Context) -> np.ndarray:
  """float32 [N, D]: the frozen CLIP's L2-normalised image embeddings of every example (un-augmented), in index
  order: the features that cleanlab's recipes for foundation models start from."""
  from deft_jax import parallel, train_state  # pylint: disable=g-import-not-at-top
  from deft_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from deft_jax.models import clip as clip_lib  # pylint: disable=g-import-not-at-top

  config, mesh = ctx.config, ctx.mesh
  model = ctx.clip.model()
  params, _ = train_state.create(lambda: clip_lib.init_params(model, ctx.rng), mesh=mesh,
                                 sharding_rules=config.sharding_rules, load=lambda p: ctx.clip.load(model, p),
                                 loaded=ctx.clip.pretrained_leaves(""))

  def fn(p, batch):
    emb = clip_lib.normalize(model.apply({"params": p}, batch["image"], method=clip_lib.CLIP.encode_image))
    return {"embedding": emb, "index": batch["index"], "valid": batch["mask"]}

  jitted = jax.jit(fn, out_shardings=parallel.replicated(mesh))
  batches = pipeline.eval_batches(ctx.split, global_batch_size=int(config.baselines.eval_batch_size),
                                  **ctx.clip.inputs.pipeline_kw())
  chunks = [jitted(params, parallel.shard_batch(local, mesh)) for local in batches]
  return parallel.gather_by_index(chunks, ctx.split.num_examples)["embedding"].astype(np.float32)


def test_accuracy(ctx: Context, tr: trainer_lib.Trainer, state) -> dict:
  """{"<split>_top1": 0-d array} of the trained classifier on the evaluation splits (empty without them)."""
  if not ctx.eval_splits:
    return {}
  ev = evaluate.evaluate(tr.classifier, tr.variables(state), ctx.eval_splits, mesh=ctx.mesh,
                         batch_size=int(ctx.config.baselines.eval_batch_size),
                         sharding_rules=ctx.config.sharding_rules, stage=ctx.stage)
  return {f"{name}_top1": np.float32(m["top1"]) for name, m in ev.items() if m.get("top1") is not None}
