"""Confident learning (cleanlab.filter.find_label_issues) on out-of-sample predicted probabilities from a K-fold
logistic-regression probe on the same VLM's frozen image embeddings: the recipe cleanlab recommends for
foundation-model features, and the peer a user would pick instead of DEFT.

``baselines.cleanlab.folds`` (K = 5) stratified folds; ``baselines.cleanlab.C`` the inverse L2 strength of the
probe. p_clean = the out-of-sample probability of the given label; label_score = cleanlab's label quality
score (self-confidence); the ranking score is log p. Needs the ``cleanlab`` extra.
"""

import logging

import numpy as np

from deft_jax.baselines import _cleanlab, _common
from deft_jax.errors import DeftError

NAME = "cleanlab (confident learning)"
STREAM = 106


def out_of_sample_probs(features: np.ndarray, labels: np.ndarray, *, folds: int, C: float, seed: int) -> np.ndarray:
  """[N, num_classes] predicted probabilities, each row from the probe fitted on the other folds."""
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  from sklearn.model_selection import StratifiedKFold, cross_val_predict  # pylint: disable=g-import-not-at-top

  smallest = int(np.bincount(labels).min()) if labels.size else 0
  k = min(int(folds), smallest)
  if k < 2:
    raise DeftError(f"cleanlab's K-fold probe needs at least 2 examples of every class; the smallest class has "
                    f"{smallest}")
  if k < folds:
    logging.warning("[baselines/cleanlab_cl] %d folds instead of %d: the smallest class has %d examples", k,
                    folds, smallest)
  probe = LogisticRegression(C=float(C), max_iter=1000)
  return cross_val_predict(probe, features, labels, method="predict_proba",
                           cv=StratifiedKFold(k, shuffle=True, random_state=seed))


def detect(ctx):
  config, train_split = ctx.config, ctx.split
  cleanlab = _cleanlab.require("cleanlab_cl")
  import cleanlab.filter  # noqa: F401  pylint: disable=g-import-not-at-top,redefined-outer-name
  import cleanlab.rank  # noqa: F401  pylint: disable=g-import-not-at-top
  labels = np.asarray(train_split.labels, np.int64)
  num_classes = train_split.num_classes
  if np.unique(labels).size < num_classes:
    raise DeftError(f"cleanlab needs every one of the {num_classes} classes among the given labels of "
                    f"{train_split.name}; {num_classes - np.unique(labels).size} class(es) have none")
  cfg = config.baselines.cleanlab
  features = _common.clip_image_embeddings(ctx)
  probs = out_of_sample_probs(features, labels, folds=cfg.folds, C=cfg.C, seed=int(config.seed) + STREAM)
  # n_jobs=1: cleanlab's worker processes would fork a process that runs JAX's threads.
  issues = cleanlab.filter.find_label_issues(labels=labels, pred_probs=probs, n_jobs=1)
  quality = cleanlab.rank.get_label_quality_scores(labels, probs)
  o = _common.outputs_from_logits(np.log(np.maximum(probs, 1e-300)), labels)
  return _common.contract(p_clean=o["p_label"], is_clean=~issues, suggested=o["suggested"], margin=o["margin"],
                          label_score=quality, score=o["log_p_label"])
