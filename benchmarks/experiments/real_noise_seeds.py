r"""The real-noise acceptance run of the suite (tests/conftest.py ``real_noise_workdir``) at several seeds: the
spread of each comparison that tests/test_real_noise.py asserts.

Each seed is the suite's own command up to detection (configs/demo.py: the tiny CLIP pretrained on the demo's
5,000 clean images, DEFT for 5 epochs on the 4,000 CIFAR-10N ``worse_label`` images, label-match and small-loss) with
``--config.seed=S``, which moves both the pretraining (seed + 1) and detection (seed) streams. A workdir that
already holds a finished seed is read, not rerun. Prints one JSON line per seed and the min / max of every
comparison over the seeds.

  PYTHONPATH=. python benchmarks/experiments/real_noise_seeds.py --out /tmp/real_noise_seeds --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.experiments import seeds

# The suite's acceptance run (tests/conftest.py: the demo command itself) up to detection (its phase 2 comes after
# and changes nothing here).
OVERRIDES = ("--config.stages=('pretrain','detect')",)


def comparisons(workdir: Path) -> dict:
  """F1 (of the clean selection) and AUROC (of the ranking) of DEFT and each comparison, and the differences
  tests/test_real_noise.py asserts, from a finished run of the demo's worse_label data."""
  import numpy as np

  from deft_jax.data import cifar_offline
  from deft_jax.report import auroc, detection_metrics

  train = cifar_offline.load_demo(label_set="worse_label")["train"]
  clean = train.labels == train.clean_labels
  runs = {"deft": workdir / "detect", **{n: workdir / "baselines" / n for n in ("label_match", "small_loss")}}
  out = {}
  for name, d in runs.items():
    det = np.load(d / "detection.npz")
    out[f"{name}_f1"] = detection_metrics(det["is_clean"], train.labels, train.clean_labels)["f1"]
    out[f"{name}_auroc"] = auroc(seeds.deft_score(det) if name == "deft" else det["score"], clean)
  out["keep_all_f1"] = detection_metrics(np.ones_like(clean), train.labels, train.clean_labels)["f1"]
  out["deft_minus_label_match_f1"] = out["deft_f1"] - out["label_match_f1"]
  out["deft_minus_small_loss_f1"] = out["deft_f1"] - out["small_loss_f1"]
  out["keep_all_minus_deft_f1"] = out["keep_all_f1"] - out["deft_f1"]
  out["label_match_minus_deft_auroc"] = out["label_match_auroc"] - out["deft_auroc"]
  out["deft_minus_small_loss_auroc"] = out["deft_auroc"] - out["small_loss_auroc"]
  info = json.loads((workdir / "pretrain" / "clip" / "pretrain_info.json").read_text())
  out["zero_shot_accuracy"] = info["zero_shot_accuracy_ensemble"]
  return {k: round(float(v), 4) for k, v in out.items()}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", type=Path, required=True)
  p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  args = p.parse_args()
  seeds.run(args.seeds, args.out, "baselines/small_loss/detection.npz",
            lambda seed, wd: ["--config=configs/demo.py", f"--workdir={wd}", f"--config.seed={seed}", *OVERRIDES],
            comparisons)


if __name__ == "__main__":
  main()
