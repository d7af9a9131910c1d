"""TURN (Ahn et al., 2023; the paper's Table 4): a linear probe on the noisy labels, then full fine-tuning on
the samples it keeps.

Step 1 here: CLIP's frozen image encoder with a new linear head on ln_post(CLS), trained with CE on every
given label (the ``baselines`` optimiser, schedule and epochs). Step 2 keeps the samples that a two-component
GMM on the probe's per-sample CE (un-augmented images, as the GMM baseline) assigns to the low-loss
component; p_clean = that posterior, the ranking score its log-odds, and the probe's accuracy on the
evaluation splits is kept (``test_top1``). The full fine-tuning is phase 2 with ``adapt.train_on = "turn"``
(the ``turn`` variant of the paper configs).
"""

from deft_jax.adapt import build
from deft_jax.adapt import trainer as trainer_lib
from deft_jax.baselines import _common
from deft_jax.baselines.gmm import loss_posterior
from deft_jax.models.peft import PEFTConfig

NAME = "TURN (linear probe + GMM)"
STREAM = 104


def detect(config, train_split, *, mesh, clip_checkpoint, out_dir, writer, eval_splits):
  b = config.baselines
  probe = build.clip_head_classifier(config, train_split.class_names, mesh=mesh, checkpoint=clip_checkpoint,
                                     rng=build.rng_for(config, STREAM), peft=PEFTConfig(), trainable="head",
                                     head_init="random")
  budget = trainer_lib.TrainBudget(epochs=int(b.epochs), batch_size=int(b.batch_size))
  tr, state = _common.train(config, train_split, probe, mesh=mesh, stage="baselines/turn", stream=STREAM,
                            out_dir=out_dir, writer=writer, budget=budget, optim_cfg=b.optim, schedule_cfg=b.schedule)
  o = loss_posterior(tr, state, train_split, config)
  return _common.contract(p_clean=o["posterior"], is_clean=o["posterior"] > 0.5, suggested=o["suggested"],
                          margin=o["margin"], score=o["log_odds"],
                          **_common.test_accuracy(tr, state, eval_splits, config, "baselines/turn"))
