"""Small-loss selection (co-teaching's criterion, one network), as the reference runs it.

CLIP with ``baselines.peft`` (VPT-deep) and a linear head trains with CE; in each batch only the (1 - r)
fraction with the smallest CE trains, where r is the *nominal* noise rate (``baselines.small_loss.rate``, else
``data.noise.ratio``, else the split's known rate) ramped as co-teaching does: epoch e < W of the W =
``baselines.warmup_epochs`` warm-up epochs uses linspace(0, r, W)[e], later epochs r. Like DEFT's, the final
mask is the online selection of the last epoch; p_clean = the model's probability of the given label on that
visit, the ranking score its logarithm.
"""

import logging

from deft_jax import parallel
from deft_jax.baselines import _common

NAME = "small-loss"
STREAM = 102


def detect(ctx):
  b = ctx.config.baselines
  rate = _common.nominal_noise_rate(ctx.config, ctx.split, "the small-loss baseline", b.small_loss.rate)
  logging.info("[baselines/small_loss] forget rate r = %.4f, ramped over %d warm-up epoch(s)", rate,
               int(b.warmup_epochs))
  classifier = _common.selector_classifier(ctx)
  _, state = _common.train(ctx, classifier, settings_kw=dict(
      loss_mask="small_loss", small_loss_rate=float(rate), warmup_epochs=int(b.warmup_epochs), record_online=True))
  online = parallel.to_host(state["online"])
  return _common.contract(p_clean=online["p_label"], is_clean=online["selected"], suggested=online["suggested"],
                          margin=online["margin"], score=online["log_p_label"])
