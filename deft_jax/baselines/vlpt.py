"""VLPT's own verdict: CLIP with visual prompts (``baselines.peft``, VPT-deep) and learned CoOp text prompts,
trained with CE on every given label (the paper's Fig. 1 classifier; the ``baselines`` optimiser, phase 1's
lr); a label is clean iff the trained classifier predicts it. p_clean = its probability of the given label,
the ranking score the log of it; its accuracy on the evaluation splits is kept (``test_top1``).
"""

from deft_jax.adapt import build
from deft_jax.baselines import _common
from deft_jax.models.peft import PEFTConfig

NAME = "VLPT (prompts trained with CE)"
STREAM = 105


def detect(ctx):
  classifier = build.vlpt_classifier(ctx.config, ctx.split.class_names, **ctx.clip,
                                     peft=PEFTConfig.from_dict(ctx.config.baselines.peft))
  tr, state = _common.train(ctx, classifier)
  return _common.from_predictions(_common.predict(ctx, tr, state), ctx.split.labels,
                                  **_common.test_accuracy(ctx, tr, state))
