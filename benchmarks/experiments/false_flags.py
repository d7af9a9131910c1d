r"""What DEFT flags on correct labels: the share of its false flags (flagged images whose given label is right) that
its own positive-prompt classifier, or CLIP zero-shot (label-match), gets wrong.

Reads a finished sweep workdir of benchmarks/experiments/strong_vlm_sweep.py (detect/detection.npz,
detect/pred_probs.npy, baselines/label_match/detection.npz) and prints one JSON line. On the clean labels every
flag is a false flag, so this says whether the flags there come from the VLM's errors (which no prompt threshold
can tell from label noise) or from the detector.

  PYTHONPATH=. python benchmarks/experiments/false_flags.py --workdir O/clip/sym0 --label_set sym0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.experiments.strong_vlm_sweep import given_and_true_labels


def false_flags(workdir: Path, label_set: str) -> dict:
  given, truth = given_and_true_labels(workdir, label_set)
  det = np.load(workdir / "detect" / "detection.npz")
  own_wrong = np.load(workdir / "detect" / "pred_probs.npy").argmax(-1) != given
  zero_shot_wrong = ~np.load(workdir / "baselines" / "label_match" / "detection.npz")["is_clean"]
  correct = given == truth
  out = {"label_set": label_set, "classifier_wrong_on_correct": float(own_wrong[correct].mean()),
         "zero_shot_wrong_on_correct": float(zero_shot_wrong[correct].mean())}
  for name, key in (("online", "is_clean"), ("scoring_pass", "pass_is_clean")):
    false = ~det[key] & correct
    out[name] = {"false_flags_share_of_correct": float(false.sum() / correct.sum()),
                 "classifier_wrong": float(own_wrong[false].mean()) if false.any() else None,
                 "zero_shot_wrong": float(zero_shot_wrong[false].mean()) if false.any() else None}
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", type=Path, required=True)
  p.add_argument("--label_set", required=True, help="the sweep's cell (a CIFAR-10N label set or symR)")
  args = p.parse_args()
  print(json.dumps(false_flags(args.workdir, args.label_set)))


if __name__ == "__main__":
  main()
