"""cleanlab's Datalab label issues from the same VLM's frozen image embeddings alone (its kNN route: predicted
probabilities from the ``baselines.cleanlab.knn`` nearest neighbours, then confident learning).

p_clean = label_score = Datalab's label quality score (also the ranking score); suggested = its predicted label.
Datalab gives no logits, so the margin is the label score minus 0.5. Needs the ``cleanlab`` extra.
"""

import numpy as np

from deft_jax.baselines import _cleanlab, _common

NAME = "cleanlab Datalab (kNN)"
STREAM = 107


def detect(ctx):
  _cleanlab.require("cleanlab_datalab")
  from cleanlab import Datalab  # pylint: disable=g-import-not-at-top

  labels = np.asarray(ctx.split.labels, np.int64)
  features = _common.clip_image_embeddings(ctx)
  lab = Datalab(data={"label": labels}, label_name="label", verbosity=0)
  # n_jobs=1: cleanlab's worker processes would fork a process that runs JAX's threads.
  options = {"k": int(ctx.config.baselines.cleanlab.knn),
             "clean_learning_kwargs": {"find_label_issues_kwargs": {"n_jobs": 1}}}
  lab.find_issues(features=features, issue_types={"label": options})
  issues = lab.get_issues("label")
  score = issues["label_score"].to_numpy(np.float64)
  return _common.contract(p_clean=score, is_clean=~issues["is_label_issue"].to_numpy(bool),
                          suggested=issues["predicted_label"].to_numpy(np.int64), margin=score - 0.5, score=score)
