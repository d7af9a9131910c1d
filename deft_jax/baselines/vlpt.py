"""VLPT's own verdict: CLIP with visual prompts (``baselines.peft``, VPT-deep) and learned CoOp text prompts,
trained with CE on every given label (the paper's Fig. 1 classifier; the ``baselines`` optimiser, phase 1's
lr); a label is clean iff the trained classifier predicts it. p_clean = its probability of the given label,
the ranking score the log of it; its accuracy on the evaluation splits is kept (``test_top1``).
"""

from deft_jax.baselines import _common
from deft_jax.classify import classifier as clf_lib
from deft_jax.models.peft import PEFTConfig
from deft_jax.models.prompts import PromptLayout

NAME = "VLPT (prompts trained with CE)"
STREAM = 105


def detect(ctx):
  classifier = clf_lib.vlpt_classifier(ctx.clip, class_names=ctx.split.class_names, **ctx.where,
                                   peft=PEFTConfig.from_dict(ctx.config.baselines.peft),
                                   layout=PromptLayout.from_config(ctx.config.detect))
  tr, state = _common.train(ctx, classifier)
  return _common.from_predictions(_common.predict(ctx, tr, state), ctx.split.labels,
                                  **_common.test_accuracy(ctx, tr, state))
