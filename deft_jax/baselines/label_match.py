"""CLIP zero-shot label-match: clean iff the zero-shot prediction (un-augmented image) equals the given label.

p_clean = the zero-shot probability of the given label; the ranking score is its logarithm. No training.
"""

from deft_jax.adapt import build, evaluate
from deft_jax.baselines import _common

NAME = "CLIP label-match"
STREAM = 101


def detect(config, train_split, *, mesh, clip_checkpoint, out_dir, writer, eval_splits):
  del out_dir, writer, eval_splits
  c = build.zeroshot_classifier(config, train_split.class_names, mesh=mesh, checkpoint=clip_checkpoint,
                                rng=build.rng_for(config, STREAM))
  logits = evaluate.predict(c, c.variables, train_split, mesh=mesh, batch_size=config.baselines.eval_batch_size,
                            sharding_rules=config.sharding_rules)
  return _common.from_predictions(logits, train_split.labels)
