"""TURN (Ahn et al., 2023; the paper's Table 4): a linear probe on the noisy labels, then full fine-tuning on
the samples it keeps.

Step 1 here: CLIP's frozen image encoder with a new linear head on ln_post(CLS), trained with CE on every
given label (the ``baselines`` optimiser, schedule and epochs). Step 2 keeps the samples that a two-component
GMM on the probe's per-sample CE (un-augmented images, as the GMM baseline) assigns to the low-loss
component; p_clean = that posterior, the ranking score its log-odds, and the probe's accuracy on the
evaluation splits is kept (``test_top1``). The full fine-tuning is phase 2 with ``adapt.train_on = "turn"``
(the ``turn`` variant of the paper configs).
"""

from deft_jax.baselines import _common
from deft_jax.classify import classifier as clf_lib
from deft_jax.baselines.gmm import loss_posterior_contract
from deft_jax.models.peft import PEFTConfig

NAME = "TURN (linear probe + GMM)"
STREAM = 104


def detect(ctx):
  probe = clf_lib.clip_classifier(ctx.clip, num_classes=ctx.split.num_classes, **ctx.where, peft=PEFTConfig(),
                              trainable="head", head_init="random")
  tr, state = _common.train(ctx, probe)
  return loss_posterior_contract(ctx, tr, state)
