"""VLPT's own verdict: CLIP with visual prompts (``baselines.peft``, VPT-deep) and learned CoOp text prompts,
trained with CE on every given label (the paper's Fig. 1 classifier; the ``baselines`` optimiser, phase 1's
lr); a label is clean iff the trained classifier predicts it. p_clean = its probability of the given label,
the ranking score the log of it; its accuracy on the evaluation splits is kept (``test_top1``).
"""

from deft_jax.adapt import build
from deft_jax.adapt import trainer as trainer_lib
from deft_jax.baselines import _common
from deft_jax.models.peft import PEFTConfig

NAME = "VLPT (prompts trained with CE)"
STREAM = 105


def detect(config, train_split, *, mesh, clip_checkpoint, out_dir, writer, eval_splits):
  b = config.baselines
  classifier = build.vlpt_classifier(config, train_split.class_names, mesh=mesh, checkpoint=clip_checkpoint,
                                     rng=build.rng_for(config, STREAM), peft=PEFTConfig.from_dict(b.peft))
  budget = trainer_lib.TrainBudget(epochs=int(b.epochs), batch_size=int(b.batch_size))
  tr, state = _common.train(config, train_split, classifier, mesh=mesh, stage="baselines/vlpt", stream=STREAM,
                            out_dir=out_dir, writer=writer, budget=budget, optim_cfg=b.optim, schedule_cfg=b.schedule)
  return _common.from_predictions(_common.predict(tr, state, train_split, config), train_split.labels,
                                  **_common.test_accuracy(tr, state, eval_splits, config, "baselines/vlpt"))
