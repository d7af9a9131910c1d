"""GMM selection on per-sample losses (DivideMix's criterion), as the reference runs it: one model that both
selects and classifies.

By default (``baselines.gmm.model = "phase2"``) the model is phase 2's own classifier, trained with phase 2's
recipe (``adapt``: FFT of the visual blocks + a new head, its optimiser, schedule, epochs and batch size). After
each of the ``baselines.warmup_epochs`` warm-up epochs, which train on every label, the per-sample CE on
un-augmented images is min-max normalised and fitted with a two-component Gaussian mixture (max_iter 10,
tol 1e-2); the next epoch trains on the samples whose posterior under the low-loss component exceeds 0.5.
The final mask is that rule applied to the trained model; p_clean = the posterior, the ranking score its
log-odds. The model's accuracy on the evaluation splits is kept too (``test_top1``): in the reference this
one model is the GMM method's classifier. ``model = "selector"`` trains the small-loss baseline's model
instead (CLIP with ``baselines.peft`` and a linear head, ``baselines`` optimiser and epochs).
"""

import logging

import jax
import numpy as np

from deft_jax.adapt import build, evaluate
from deft_jax.adapt import trainer as trainer_lib
from deft_jax.adapt.train import calibration_images
from deft_jax.baselines import _common, _gmm_fit
from deft_jax.errors import ConfigError
from deft_jax.models.peft import PEFTConfig

NAME = "GMM"
STREAM = 103
MODELS = ("phase2", "selector")


def model_and_recipe(config, split, *, mesh, clip_checkpoint, stream: int, model: str):
  """(classifier, budget, optim, schedule) of a loss-based baseline: phase 2's FFT classifier and recipe, or the
  selectors' VPT + head model with the baselines' recipe."""
  if model not in MODELS:
    raise ConfigError(f"baselines.gmm.model must be one of {MODELS}, got {model!r}")
  rng = build.rng_for(config, stream)
  if model == "selector":
    b = config.baselines
    c = build.selector_classifier(config, split.class_names, mesh=mesh, checkpoint=clip_checkpoint, rng=rng)
    return c, trainer_lib.TrainBudget(epochs=int(b.epochs), batch_size=int(b.batch_size)), b.optim, b.schedule
  a = config.adapt
  c = build.clip_head_classifier(config, split.class_names, mesh=mesh, checkpoint=clip_checkpoint, rng=rng,
                                 peft=PEFTConfig(), trainable=a.trainable, head_init=a.head_init,
                                 calibration_images=calibration_images(split))
  return c, trainer_lib.TrainBudget(epochs=int(a.epochs), batch_size=int(a.batch_size)), a.optim, a.schedule


def loss_posterior(tr, state, split, config) -> dict:
  """The GMM on the model's per-sample CE over ``split`` (un-augmented): posterior, log-odds, predictions."""
  logits = _common.predict(tr, state, split, config)
  post, log_odds, model = _gmm_fit.clean_posterior(evaluate.per_example_ce(logits, split.labels))
  if model is not None:
    logging.info("[baselines] GMM on losses: means %s, weights %s, %d iterations", np.round(model.means, 4),
                 np.round(model.weights, 4), model.iterations)
  return {"posterior": post, "log_odds": log_odds, **_common.outputs_from_logits(logits, split.labels)}


def detect(config, train_split, *, mesh, clip_checkpoint, out_dir, writer, eval_splits):
  warmup = int(config.baselines.warmup_epochs)
  classifier, budget, optim_cfg, schedule_cfg = model_and_recipe(
      config, train_split, mesh=mesh, clip_checkpoint=clip_checkpoint, stream=STREAM,
      model=config.baselines.gmm.model)

  def factory(tr):
    def before_epoch(state, epoch):
      # A resumed epoch keeps the mask it started with (mask_epoch says which epoch it belongs to).
      if epoch < warmup or int(jax.device_get(state["mask_epoch"])) == epoch:
        return state
      mask = loss_posterior(tr, state, train_split, config)["posterior"] > 0.5
      logging.info("[baselines/gmm] epoch %d trains on %d of %d samples", epoch + 1, mask.sum(), len(mask))
      return {**state, "sample_mask": jax.device_put(mask, state["sample_mask"].sharding),
              "mask_epoch": jax.device_put(np.int32(epoch), state["mask_epoch"].sharding)}
    return before_epoch

  tr, state = _common.train(config, train_split, classifier, mesh=mesh, stage="baselines/gmm", stream=STREAM,
                            out_dir=out_dir, writer=writer, budget=budget, optim_cfg=optim_cfg,
                            schedule_cfg=schedule_cfg, settings_kw=dict(loss_mask="sample_mask"),
                            before_epoch_factory=factory)
  o = loss_posterior(tr, state, train_split, config)
  return _common.contract(p_clean=o["posterior"], is_clean=o["posterior"] > 0.5, suggested=o["suggested"],
                          margin=o["margin"], score=o["log_odds"],
                          **_common.test_accuracy(tr, state, eval_splits, config, "baselines/gmm"))
