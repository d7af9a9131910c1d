"""Evaluation of a classifier: logits over a split by example index, and accuracy metrics.

Accuracy is exact under padding: the eval pipeline pads the last global batch with ``mask=False`` rows, the
logits are gathered by example index (each index exactly once, or an error), and only then are metrics taken,
so neither the batch size nor the device count can change a number. Top-1 / top-5 and per-class accuracy
come from ``report.metrics.classification_metrics``; WebVision-style runs evaluate a second split
("test2", ImageNet val of the same classes) the same way.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from deft_jax import parallel
from deft_jax.classify.classifier import Classifier
from deft_jax.data import pipeline
from deft_jax.report import metrics as report_metrics

EVAL_SPLITS = ("test", "test2")


def jit_logits(classifier: Classifier, variables, mesh, sharding_rules: Sequence = ()):
  """jitted ``(variables, batch) -> {"logits", "index", "valid"}`` (replicated outputs), cached per classifier."""
  key = (mesh, tuple(tuple(r) for r in sharding_rules), jax.tree_util.tree_structure(variables))
  if key in classifier.jit_cache:
    return classifier.jit_cache[key]

  def fn(v, batch):
    logits, _ = classifier.apply(v, batch["image"], train=False, rng=None)
    return {"logits": logits.astype(jnp.float32), "index": batch["index"], "valid": batch["mask"]}

  jitted = jax.jit(fn, in_shardings=(parallel.shardings_for(variables, mesh, sharding_rules),
                                     parallel.batch_sharding(mesh)),
                   out_shardings=parallel.replicated(mesh))
  classifier.jit_cache[key] = jitted
  return jitted


def prepare(classifier: Classifier, variables, mesh, sharding_rules: Sequence = ()):
  """``variables`` with what stays fixed during an evaluation computed once (``Classifier.eval_prepare``: VLPT's
  class text features), for :func:`jit_logits`; unchanged for classifiers without it."""
  if classifier.eval_prepare is None:
    return variables
  key = ("prepare", mesh, tuple(tuple(r) for r in sharding_rules), jax.tree_util.tree_structure(variables))
  if key not in classifier.jit_cache:
    out = jax.eval_shape(classifier.eval_prepare, variables)
    classifier.jit_cache[key] = jax.jit(
        classifier.eval_prepare, in_shardings=(parallel.shardings_for(variables, mesh, sharding_rules),),
        out_shardings=parallel.shardings_for(out, mesh, sharding_rules))
  return classifier.jit_cache[key](variables)


def predict(classifier: Classifier, variables, split, *, mesh, batch_size: int,
            sharding_rules: Sequence = (), fn=None) -> np.ndarray:
  """float32 logits [N, C] for every example of ``split`` in index order (un-augmented images). Without ``fn``
  the variables are prepared here (:func:`prepare`); with it, they are the prepared ones ``fn`` was made for."""
  if fn is None:
    variables = prepare(classifier, variables, mesh, sharding_rules)
    fn = jit_logits(classifier, variables, mesh, sharding_rules)
  chunks = []
  for local in pipeline.eval_batches(split, global_batch_size=batch_size, **classifier.inputs.pipeline_kw()):
    chunks.append(fn(variables, parallel.shard_batch(local, mesh)))
  return parallel.gather_by_index(chunks, split.num_examples)["logits"]


def eval_labels(split) -> tuple[np.ndarray, np.ndarray]:
  """(labels, known mask): the ground truth where the split knows it, else the given labels."""
  if split.clean_labels is None:
    return split.labels, np.ones(split.num_examples, bool)
  known = split.clean_labels >= 0
  return np.where(known, split.clean_labels, 0), known


def accuracy(logits: np.ndarray, labels: np.ndarray, *, num_classes: int, mask=None,
             topk: Sequence[int] = (1, 5), stage: str = "") -> dict:
  """JSON-ready top-k, per-class and mean per-class accuracy (None where undefined); non-finite logits raise
  DivergedError naming ``stage``."""
  topk = tuple(k for k in topk if k <= num_classes) or (1,)
  m = report_metrics.classification_metrics(labels, num_classes=num_classes, logits=logits, mask=mask,
                                            topk=topk, stage=stage)
  clean = lambda x: None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)  # noqa: E731
  out = {f"top{k}": clean(m[f"top{k}"]) for k in topk}
  out["mean_per_class_accuracy"] = clean(m["mean_per_class_accuracy"])
  out["per_class_accuracy"] = [clean(float(v)) for v in m["per_class_accuracy"]]
  out["count"] = int(m["count"])
  return out


def evaluate(classifier: Classifier, variables, splits: dict, *, mesh, batch_size: int,
             sharding_rules: Sequence = (), names: Sequence[str] = EVAL_SPLITS,
             keep_logits: bool = False, stage: str = "adapt") -> dict:
  """``{split_name: accuracy dict}`` for each of ``names`` present in ``splits``.

  With ``keep_logits`` each entry also holds "logits" (NumPy [N, C]; not JSON).
  """
  variables = prepare(classifier, variables, mesh, sharding_rules)  # once for every split
  fn = jit_logits(classifier, variables, mesh, sharding_rules)
  out = {}
  for name in names:
    split = splits.get(name)
    if split is None:
      continue
    logits = predict(classifier, variables, split, mesh=mesh, batch_size=batch_size, fn=fn)
    labels, known = eval_labels(split)
    out[name] = accuracy(logits, labels, num_classes=split.num_classes, mask=known,
                         stage=f"{stage}, {name} split")
    if keep_logits:
      out[name]["logits"] = logits
  return out


def per_example_ce(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """float64 cross-entropy per example, on the host (for loss-based selectors)."""
  z = np.asarray(logits, np.float64)
  z = z - z.max(-1, keepdims=True)
  logz = np.log(np.exp(z).sum(-1))
  return logz - z[np.arange(len(z)), np.asarray(labels)]
