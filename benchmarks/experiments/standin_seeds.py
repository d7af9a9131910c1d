r"""The shipped stand-in's quality test of the suite (tests/test_standin.py) at several seeds: the spread of each
comparison it asserts.

Each seed runs DEFT (phase 1 and its scoring pass) and CLIP label-match with the shipped stand-in
(``model.checkpoint=`` ``STANDIN`` or ``--checkpoint``, configs/cifar10n_strong_vlm.py otherwise) on the first 2,000
of the 10,000 held-out CIFAR-10 training images, with their CIFAR-10N ``worse_label`` labels (the stand-in never
saw them), and ``--config.seed=S`` (the detection stream). A workdir that already holds a finished seed is read,
not rerun. Prints one JSON line per seed and the min / max of every comparison over the seeds.

  PYTHONPATH=. python benchmarks/experiments/standin_seeds.py --root ../shared/assets --out /tmp/standin_seeds \
      --seeds 0 1 2 [--recipe real_noise] [-- --config.detect.negatives=hard ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.experiments import seeds

LABEL_SET = "worse_label"
TRAIN_INDICES = "0:2000"


STANDIN = "standin:cifar10_tiny32"  # the stand-in the suite's quality test runs


def overrides(recipe: str = "", checkpoint: str = STANDIN) -> tuple[str, ...]:
  """The suite's command line after the config (a recipe of "" keeps the config's)."""
  return ("--config.stages=('detect',)", f"--config.model.checkpoint={checkpoint}",
          f"--config.data.train_indices={TRAIN_INDICES}", "--config.baselines.methods=('label_match',)",
          *((f"--config.detect.recipe={recipe}",) if recipe else ()))


def config_arg(root) -> str:
  return f"--config=configs/cifar10n_strong_vlm.py:root={root},label_set={LABEL_SET}"


def comparisons(workdir: Path) -> dict:
  """F1 (of the clean selection) and AUROC (of the ranking) of DEFT, label-match and keep-all, and the
  differences tests/test_standin.py asserts, from a finished run."""
  import numpy as np

  from deft_jax.data import cifar_offline
  from deft_jax.report import auroc, detection_metrics

  data = json.loads((workdir / "config.json").read_text())["data"]
  train = cifar_offline.load_cifar10n_offline(data["root"], label_set=LABEL_SET, train_indices=TRAIN_INDICES,
                                              test_size=1)["train"]
  clean = train.labels == train.clean_labels
  out = {}
  for name, d in {"deft": workdir / "detect", "label_match": workdir / "baselines" / "label_match"}.items():
    det = np.load(d / "detection.npz")
    out[f"{name}_f1"] = detection_metrics(det["is_clean"], train.labels, train.clean_labels)["f1"]
    out[f"{name}_auroc"] = auroc(seeds.deft_score(det) if name == "deft" else det["score"], clean)
    out[f"{name}_flagged"] = 1.0 - float(np.mean(det["is_clean"]))
  det = np.load(workdir / "detect" / "detection.npz")
  out["deft_pass_f1"] = detection_metrics(det["pass_is_clean"], train.labels, train.clean_labels)["f1"]
  out["keep_all_f1"] = detection_metrics(np.ones_like(clean), train.labels, train.clean_labels)["f1"]
  out["noise_rate"] = 1.0 - float(clean.mean())
  out["deft_minus_keep_all_f1"] = out["deft_f1"] - out["keep_all_f1"]
  out["deft_minus_label_match_f1"] = out["deft_f1"] - out["label_match_f1"]
  out["deft_minus_label_match_auroc"] = out["deft_auroc"] - out["label_match_auroc"]
  return {k: round(float(v), 4) for k, v in out.items()}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--root", required=True, help="the folder holding cifar10-jpeg/ and cifar-n-labels/")
  p.add_argument("--out", type=Path, required=True)
  p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  p.add_argument("--recipe", default="", help="detect.recipe (default: the config's)")
  p.add_argument("--checkpoint", default=STANDIN, help=f"the CLIP (default: the suite's, {STANDIN})")
  p.add_argument("extra", nargs="*", help="more --config.* overrides (after --)")
  args = p.parse_args()
  seeds.run(args.seeds, args.out, "baselines/label_match/detection.npz",
            lambda seed, wd: [config_arg(args.root), f"--workdir={wd}", f"--config.seed={seed}",
                              *overrides(args.recipe, args.checkpoint), *args.extra], comparisons)


if __name__ == "__main__":
  main()
