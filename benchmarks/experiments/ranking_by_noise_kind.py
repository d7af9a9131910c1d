r"""How well each detector ranks the two kinds of human label noise: confusions between look-alike classes,
and the rest.

Human annotators mostly swap look-alike classes (CIFAR-10: truck/automobile, cat/dog, deer/horse). For a
finished run (a workdir of benchmarks/experiments/strong_vlm_sweep.py, or any run on cifar10n_offline) this
splits the mislabelled examples into "confusable" (their (true, given) pair is one of the ``--pairs`` most
frequent pairs among the mislabelled examples) and "other", and prints each ranking score's AUROC for clean
against all noisy, against confusable noise only and against other noise only: DEFT's margin, its strict-rule
margin, DEFT's positive-prompt probability of the given label, and every baseline the run has.

  PYTHONPATH=. python benchmarks/experiments/ranking_by_noise_kind.py --workdir W --label_set worse_label
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import numpy as np

from benchmarks.experiments import strong_vlm_sweep
from deft_jax.detect.train import label_probability
from deft_jax.report import auroc


def noise_kinds(given, truth, pairs: int):
  """(confusable, other): boolean masks over the examples, the mislabelled ones split by their pair."""
  noisy = given != truth
  common = {p for p, _ in collections.Counter(zip(truth[noisy].tolist(), given[noisy].tolist())).most_common(pairs)}
  confusable = noisy & np.array([(t, g) in common for t, g in zip(truth.tolist(), given.tolist())])
  return confusable, noisy & ~confusable


def split_auroc(score, given, truth, pairs: int) -> dict:
  clean = given == truth
  confusable, other = noise_kinds(given, truth, pairs)
  out = {"all": auroc(score, clean)}
  for name, kind in (("confusable", confusable), ("other", other)):
    keep = clean | kind
    out[name] = auroc(score[keep], clean[keep])
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True)
  p.add_argument("--label_set", required=True)
  p.add_argument("--pairs", type=int, default=10, help="how many of the most frequent (true, given) pairs")
  args = p.parse_args()
  w = Path(args.workdir)
  given, truth = strong_vlm_sweep.given_and_true_labels(w, args.label_set)
  confusable, other = noise_kinds(given, truth, args.pairs)
  print(f"{len(given)} examples: {int(confusable.sum())} confusable-pair noisy, {int(other.sum())} other noisy")
  scores = {}
  det = dict(np.load(w / "detect" / "detection.npz"))
  scores["DEFT margin (scoring pass)"] = det["pass_margin"]
  if "pass_strict_margin" in det:
    scores["DEFT strict margin"] = det["pass_strict_margin"]
  if (w / "detect" / "pred_probs.npy").exists():
    scores["DEFT p+(given label)"] = label_probability(np.load(w / "detect" / "pred_probs.npy"), given)[1]
  for f in sorted((w / "baselines").glob("*/detection.npz")):
    scores[f.parent.name] = np.asarray(np.load(f)["score"])
  print(f"{'score':<28} {'all':>6} {'confusable':>11} {'other':>6}")
  for name, s in scores.items():
    a = split_auroc(np.asarray(s, np.float64), given, truth, args.pairs)
    print(f"{name:<28} {a['all']:6.3f} {a['confusable']:11.3f} {a['other']:6.3f}")


if __name__ == "__main__":
  main()
