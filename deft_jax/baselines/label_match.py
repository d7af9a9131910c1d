"""CLIP zero-shot label-match: clean iff the zero-shot prediction (un-augmented image) equals the given label.

p_clean = the zero-shot probability of the given label; the ranking score is its logarithm. No training.
"""

from deft_jax.baselines import _common
from deft_jax.classify import classifier as clf_lib
from deft_jax.classify import evaluate

NAME = "CLIP label-match"
STREAM = 101


def detect(ctx):
  c = clf_lib.zeroshot_classifier(ctx.clip, ctx.split.class_names, ctx.config.adapt.zeroshot_templates, **ctx.where)
  logits = evaluate.predict(c, c.variables, ctx.split, mesh=ctx.mesh,
                            batch_size=ctx.config.baselines.eval_batch_size, sharding_rules=ctx.config.sharding_rules)
  return _common.from_predictions(logits, ctx.split.labels)
