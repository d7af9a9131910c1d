"""CLIP zero-shot label-match: clean iff the zero-shot prediction (un-augmented image) equals the given label.

p_clean = the zero-shot probability of the given label; the ranking score is its logarithm. No training.
"""

from deft_jax.adapt import build, evaluate
from deft_jax.baselines import _common

NAME = "CLIP label-match"
STREAM = 101


def detect(ctx):
  c = build.zeroshot_classifier(ctx.config, ctx.split.class_names, **ctx.clip)
  logits = evaluate.predict(c, c.variables, ctx.split, mesh=ctx.mesh,
                            batch_size=ctx.config.baselines.eval_batch_size, sharding_rules=ctx.config.sharding_rules)
  return _common.from_predictions(logits, ctx.split.labels)
