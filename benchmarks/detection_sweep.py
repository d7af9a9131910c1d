r"""How DEFT's margin over the baselines moves with the strength of the vision-language model.

Each point pretrains the tiny CLIP for a different budget on a clean slice of real CIFAR-10 images, then runs
DEFT, CLIP label-match and small-loss (told the true noise rate) on CIFAR-10 images with CIFAR-10N human labels,
and prints one Markdown row: zero-shot accuracy of the pretrained CLIP, then F1 and AUROC of each selector.

  # the packaged demo data (4,000 noisy images, 5,000 clean for pretraining)
  python benchmarks/detection_sweep.py --out /tmp/sweep --pretrain_epochs 5,10,20,40
  # the full CIFAR-10N files (e.g. ../shared/assets): 10,000 noisy images, 20,000 clean for pretraining
  python benchmarks/detection_sweep.py --out /tmp/sweep_big --root ../shared/assets \
      --train_indices 0:10000 --pretrain_indices 30000:50000 --pretrain_epochs 10,30

Each point is a normal deft_jax run in <out>/<name>; rerunning the command reuses finished points.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def run_point(workdir: Path, args, pretrain_epochs: int) -> None:
  over = [
      "--config.stages=('pretrain','detect')", f"--config.pretrain.epochs={pretrain_epochs}",
      f"--config.detect.epochs={args.detect_epochs}", "--config.baselines.methods=('label_match','small_loss')",
      f"--config.data.label_set={args.label_set}",
  ]
  if args.root:
    over += ["--config.data.source=cifar10n_offline", f"--config.data.root={args.root}",
             f"--config.data.train_indices={args.train_indices}",
             f"--config.data.pretrain_indices={args.pretrain_indices}", f"--config.data.test_size={args.test_size}"]
  env = dict(os.environ, PYTHONPATH=str(REPO))
  cmd = [sys.executable, "-m", "deft_jax.main", "--config=configs/demo.py", f"--workdir={workdir}", *over]
  print("$", " ".join(cmd), flush=True)
  subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)


def row(workdir: Path) -> dict:
  from deft_jax.report import auroc, detection_metrics

  summary = json.loads((workdir / "summary.json").read_text())
  det = np.load(workdir / "detect" / "detection.npz")
  table = pd.read_csv(workdir / "report" / "label_issues.csv").sort_values("index")
  given, truth = table["given_label"].to_numpy(), table["true_label"].to_numpy()
  clean = given == truth
  out = {"zero_shot": summary["pretrain"]["zero_shot_accuracy_ensemble"], "noise": float(1 - clean.mean())}
  sel = {"DEFT": (det["is_clean"], det["score"]), "DEFT pass": (det["pass_is_clean"], det["pass_score"])}
  for name in ("label_match", "small_loss"):
    b = np.load(workdir / "baselines" / name / "detection.npz")
    sel[name] = (b["is_clean"], b["score"])
  for name, (is_clean, score) in sel.items():
    out[name] = (detection_metrics(is_clean, given, truth)["f1"], auroc(score, clean))
  out["keep all"] = detection_metrics(np.ones_like(clean), given, truth)["f1"]
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", required=True)
  p.add_argument("--pretrain_epochs", default="5,10,20,40")
  p.add_argument("--detect_epochs", type=int, default=5)
  p.add_argument("--label_set", default="worse_label")
  p.add_argument("--root", default="", help="CIFAR-10N assets folder (default: the packaged demo data)")
  p.add_argument("--train_indices", default="0:10000")
  p.add_argument("--pretrain_indices", default="30000:50000")
  p.add_argument("--test_size", type=int, default=2000)
  args = p.parse_args()
  out = Path(args.out)
  rows = []
  for e in [int(x) for x in args.pretrain_epochs.split(",")]:
    wd = out / f"pretrain{e}"
    if not (wd / "summary.json").exists():
      run_point(wd, args, e)
    rows.append((e, row(wd)))
  print("\n| pretrain epochs | zero-shot acc | DEFT F1 / AUROC | DEFT (pass) F1 / AUROC | label-match F1 / AUROC "
        "| small-loss F1 / AUROC | keep all F1 | DEFT - best baseline F1 |")
  print("|---|---|---|---|---|---|---|---|")
  for e, r in rows:
    fmt = lambda k: f"{r[k][0]:.3f} / {r[k][1]:.3f}"  # noqa: E731
    margin = r["DEFT"][0] - max(r["label_match"][0], r["small_loss"][0])
    print(f"| {e} | {r['zero_shot']:.3f} | {fmt('DEFT')} | {fmt('DEFT pass')} | {fmt('label_match')} | "
          f"{fmt('small_loss')} | {r['keep all']:.3f} | {margin:+.3f} |")


if __name__ == "__main__":
  main()
