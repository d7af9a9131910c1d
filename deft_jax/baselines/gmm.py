"""GMM selection on per-sample losses (DivideMix's criterion), as the reference runs it: one model that both
selects and classifies.

By default (``baselines.gmm.model = "phase2"``) the model is phase 2's own classifier, trained with phase 2's
recipe (``adapt``: FFT of the visual blocks + a new head, its optimiser, schedule, epochs and batch size;
``baselines.gmm.epochs`` replaces the epochs when set). After each of the warm-up epochs
(``baselines.gmm.warmup_epochs``, else ``baselines.warmup_epochs``), which train on every label, the
per-sample CE on un-augmented images is min-max normalised and fitted with a two-component Gaussian mixture
(max_iter 10, tol 1e-2); the next epoch trains on the samples whose posterior under the low-loss component exceeds 0.5.
The final mask is that rule applied to the trained model; p_clean = the posterior, the ranking score its
log-odds. The model's accuracy on the evaluation splits is kept too (``test_top1``): in the reference this
one model is the GMM method's classifier. ``model = "selector"`` trains the small-loss baseline's model
instead (CLIP with ``baselines.peft`` and a linear head, ``baselines`` optimiser and epochs).
"""

import logging

import jax
import numpy as np

from deft_jax.baselines import _common, _gmm_fit
from deft_jax.classify import classifier as clf_lib
from deft_jax.classify import evaluate
from deft_jax.classify import trainer as trainer_lib
from deft_jax.errors import ConfigError
from deft_jax.models.peft import PEFTConfig

NAME = "GMM"
STREAM = 103
MODELS = ("phase2", "selector")


def reads(config) -> tuple:
  """The phase-2 model trains with phase 2's recipe: its result depends on the adapt section."""
  return ("adapt",) if config.baselines.gmm.model == "phase2" else ()


def epochs_and_warmup(config) -> tuple:
  """(epochs or None for the model's recipe's, warm-up epochs) of the GMM baseline: baselines.gmm's when set."""
  g, b = config.baselines.gmm, config.baselines
  warmup = g.get("warmup_epochs")
  return g.get("epochs"), int(b.warmup_epochs if warmup is None else warmup)


def model_and_recipe(ctx, *, model: str):
  """(classifier, budget, optim, schedule) of the GMM baseline: phase 2's FFT classifier and recipe, or the
  selectors' VPT + head model with the baselines' recipe (None: _common.train's defaults)."""
  if model not in MODELS:
    raise ConfigError(f"baselines.gmm.model must be one of {MODELS}, got {model!r}")
  names = ctx.split.class_names
  epochs, _ = epochs_and_warmup(ctx.config)
  if model == "selector":
    b = ctx.config.baselines
    budget = None if epochs is None else trainer_lib.TrainBudget(epochs=int(epochs), batch_size=int(b.batch_size))
    return _common.selector_classifier(ctx), budget, None, None
  a = ctx.config.adapt
  c = clf_lib.clip_classifier(ctx.clip, num_classes=len(names), **ctx.where, peft=PEFTConfig(), trainable=a.trainable,
                          head_init=a.head_init, class_features=ctx.clip.class_features(names, a.zeroshot_templates),
                          calibration_images=clf_lib.calibration_images(ctx.split))
  epochs = a.epochs if epochs is None else epochs
  return c, trainer_lib.TrainBudget(epochs=int(epochs), batch_size=int(a.batch_size)), a.optim, a.schedule


def loss_posterior(ctx, tr, state) -> dict:
  """The GMM on the model's per-sample CE over the split (un-augmented): posterior, log-odds, predictions."""
  logits = _common.predict(ctx, tr, state)
  post, log_odds, model = _gmm_fit.clean_posterior(evaluate.per_example_ce(logits, ctx.split.labels))
  if model is not None:
    logging.info("[%s] GMM on losses: means %s, weights %s, %d iterations", ctx.stage, np.round(model.means, 4),
                 np.round(model.weights, 4), model.iterations)
  return {"posterior": post, "log_odds": log_odds, **_common.outputs_from_logits(logits, ctx.split.labels)}


def loss_posterior_contract(ctx, tr, state) -> dict:
  """The contract of "clean iff the GMM's low-loss posterior > 0.5", with the model's test accuracy."""
  o = loss_posterior(ctx, tr, state)
  return _common.contract(p_clean=o["posterior"], is_clean=o["posterior"] > 0.5, suggested=o["suggested"],
                          margin=o["margin"], score=o["log_odds"], **_common.test_accuracy(ctx, tr, state))


def detect(ctx):
  _, warmup = epochs_and_warmup(ctx.config)
  classifier, budget, optim_cfg, schedule_cfg = model_and_recipe(ctx, model=ctx.config.baselines.gmm.model)

  def factory(tr):
    def before_epoch(state, epoch):
      # A resumed epoch keeps the mask it started with (mask_epoch says which epoch it belongs to).
      if epoch < warmup or int(jax.device_get(state["mask_epoch"])) == epoch:
        return state
      mask = loss_posterior(ctx, tr, state)["posterior"] > 0.5
      logging.info("[baselines/gmm] epoch %d trains on %d of %d samples", epoch + 1, mask.sum(), len(mask))
      return {**state, "sample_mask": jax.device_put(mask, state["sample_mask"].sharding),
              "mask_epoch": jax.device_put(np.int32(epoch), state["mask_epoch"].sharding)}
    return before_epoch

  tr, state = _common.train(ctx, classifier, budget=budget, optim_cfg=optim_cfg, schedule_cfg=schedule_cfg,
                            settings_kw=dict(loss_mask="sample_mask"), before_epoch_factory=factory)
  return loss_posterior_contract(ctx, tr, state)
