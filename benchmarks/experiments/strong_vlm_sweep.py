r"""Detection quality by VLM strength: DEFT and every baseline on CIFAR-10N label sets, for each pretrained VLM.

For every (VLM checkpoint, label set) it runs the detect stage of configs/cifar10n_strong_vlm.py (DEFT, its
scoring pass, and the baselines) on the 10,000 held-out CIFAR-10 training images, then appends one JSON line
per method to --results with the detector's quality against the true labels. The checkpoints are the
snapshots a run of that config writes (pretrain/snapshots/epoch_NNN and pretrain/clip); their zero-shot
accuracy on the 10,000 test images comes from their pretrain_info.json.

  PYTHONPATH=. python benchmarks/experiments/strong_vlm_sweep.py --pretrain /tmp/strong/pretrain \
      --root ../shared/assets --out /tmp/sweep --snapshots epoch_002,epoch_008,clip \
      --label_sets worse_label,aggre_label,random_label1 --results benchmarks/results/detection_strong_vlm.jsonl

Each row: zero_shot_acc, checkpoint, label_set, method (deft, deft_scoring_pass, label_match, small_loss, gmm,
cleanlab_cl, cleanlab_datalab, keep_all; and two rankings only, with null precision, recall, f1 and
flagged_fraction: deft_label_probability, DEFT's scoring-pass softmax over its positive prompts read at the
given label, and deft_strict_margin, min(m_y, m_y - max_{k != y} m_k) of the scoring pass), recipe (phase 1's,
config_lib.recipe_name: "synthetic" or "real_noise"; rows written before it existed ran "synthetic"), precision,
recall, f1, auroc (null for keep_all), flagged_fraction,
noise_rate, num_examples, fnr_at_noise_budget (the share of the truly noisy examples a method misses when it
flags exactly round(noise_rate * N) examples, its lowest-ranked ones; null for keep_all), test_top1 (where the
method's own model classifies), auroc_swaps and auroc_other_noise (CIFAR-10N label sets: the AUROC against the
10 most frequent (true, given) pairs of the noise, swaps between look-alike classes, and against the rest),
variant (a tag for a non-default phase 1), command. ``--rows_only`` scores workdirs a sweep left, without running
anything.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
BASELINES = ("label_match", "small_loss", "gmm", "cleanlab_cl", "cleanlab_datalab")


def cell(label_set: str) -> tuple[str, list[str]]:
  """A label set of the sweep -> (the config's label_set, extra overrides): a CIFAR-10N label set as it is, or
  "symR" (e.g. sym0.2): symmetric noise at rate R on the clean labels (R = 0: the clean labels themselves),
  phase 1's synthetic recipe."""
  if not label_set.startswith("sym"):
    return label_set, []
  rate = float(label_set[3:])
  noise = [] if rate == 0 else ["--config.data.noise.type=sym", f"--config.data.noise.ratio={rate}"]
  return "clean_label", [*noise, "--config.detect.recipe=synthetic"]


def command(args, checkpoint, label_set: str, workdir: Path) -> list[str]:
  config_label_set, overrides = cell(label_set)
  return [sys.executable, "-m", "deft_jax.main",
          f"--config=configs/cifar10n_strong_vlm.py:root={args.root},label_set={config_label_set}",
          f"--workdir={workdir}", "--config.stages=('detect',)", f"--config.model.checkpoint={checkpoint}",
          f"--config.baselines.methods={tuple(m for m in args.methods.split(',') if m)!r}".replace(" ", ""),
          *overrides, *args.extra]


def fnr_at_budget(score: np.ndarray, truly_noisy: np.ndarray) -> "float | None":
  """Flag the round(noise_rate * N) lowest-scored examples; the share of truly noisy ones left unflagged (None on
  clean labels, where there is nothing to miss)."""
  if not np.any(truly_noisy):
    return None
  k = int(round(truly_noisy.mean() * len(score)))
  flagged = np.zeros(len(score), bool)
  flagged[np.argsort(score, kind="stable")[:k]] = True
  return float(1.0 - (flagged & truly_noisy).sum() / max(truly_noisy.sum(), 1))


def given_and_true_labels(workdir: Path, label_set: str) -> tuple[np.ndarray, np.ndarray]:
  """The detection split's given (``label_set``) and true labels of a sweep workdir, from its config.json."""
  from deft_jax.data import cifar_offline  # pylint: disable=g-import-not-at-top

  noisy = workdir / "noisy_labels.npz"
  if noisy.exists():  # synthetic noise the run drew on the clean labels
    with np.load(noisy) as f:
      return np.asarray(f["noisy_labels"]), np.asarray(f["clean_labels"])
  data = json.loads((workdir / "config.json").read_text())["data"]
  split = cifar_offline.load_cifar10n_offline(data["root"], label_set=cell(label_set)[0],
                                              train_indices=data["train_indices"],
                                              pretrain_indices=data["pretrain_indices"], test_size=1)["train"]
  return np.asarray(split.labels), np.asarray(split.clean_labels)


def swap_split(score, given, truth) -> dict:
  """AUROC against the human noise's swaps between look-alike classes (its 10 most frequent (true, given) pairs)
  and against the rest of the noise (benchmarks/experiments/ranking_by_noise_kind.py)."""
  from benchmarks.experiments import ranking_by_noise_kind  # pylint: disable=g-import-not-at-top
  a = ranking_by_noise_kind.split_auroc(np.asarray(score, np.float64), given, truth, 10)
  return {"auroc_swaps": a["confusable"], "auroc_other_noise": a["other"]}


def recipe_of(workdir: Path) -> str:
  """The phase-1 recipe a sweep workdir ran (config_lib.recipe_name of its config.json)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from deft_jax.config_lib import recipe_name  # pylint: disable=g-import-not-at-top
  return recipe_name(ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text())))


def rows(workdir: Path, *, zero_shot: float, checkpoint: str, label_set: str, cmd: str,
         variant: str = "") -> list[dict]:
  from deft_jax.detect.train import label_probability  # pylint: disable=g-import-not-at-top
  from deft_jax.report import auroc, detection_metrics  # pylint: disable=g-import-not-at-top

  det = dict(np.load(workdir / "detect" / "detection.npz"))
  given, truth = given_and_true_labels(workdir, label_set)
  clean = given == truth
  # "deft" / "deft_scoring_pass": each mask with its margin (whatever detect.ranking made the report's score)
  methods = {"deft": (det["is_clean"], det["margin"], None),
             "deft_scoring_pass": (det["pass_is_clean"], det["pass_margin"], None)}
  for name in BASELINES:
    f = workdir / "baselines" / name / "detection.npz"
    if f.exists():
      b = dict(np.load(f))
      methods[name] = (b["is_clean"], b["score"], float(b["test_top1"]) if "test_top1" in b else None)
  methods["keep_all"] = (np.ones(len(given), bool), None, None)
  probs = workdir / "detect" / "pred_probs.npy"
  if probs.exists():  # a ranking only: DEFT's positive-prompt softmax probability of the given label
    methods["deft_label_probability"] = (None, label_probability(np.load(probs), given)[1], None)
  if "pass_strict_margin" in det:  # a ranking only: min(m_y, m_y - max_{k != y} m_k) of the scoring pass
    methods["deft_strict_margin"] = (None, det["pass_strict_margin"], None)
  recipe = recipe_of(workdir)
  swaps = None if label_set.startswith("sym") else swap_split
  out = []
  for name, (is_clean, score, test_top1) in methods.items():
    m = (dict(precision=None, recall=None, f1=None) if is_clean is None
         else detection_metrics(is_clean, given, truth))
    out.append({
        "zero_shot_acc": zero_shot, "checkpoint": checkpoint, "label_set": label_set, "method": name,
        "recipe": recipe, **({"variant": variant} if variant else {}),
        "precision": m["precision"], "recall": m["recall"], "f1": m["f1"],
        "auroc": None if score is None or clean.all() else auroc(score, clean),  # undefined on clean labels
        "flagged_fraction": None if is_clean is None else float(1 - is_clean.mean()),
        "noise_rate": float(1 - clean.mean()),
        "num_examples": int(len(given)),
        "fnr_at_noise_budget": None if score is None else fnr_at_budget(score, ~clean),
        **({} if swaps is None or score is None else swaps(score, given, truth)),
        "test_top1": test_top1, "command": cmd})
  return out


def checkpoints(args):
  """(name, checkpoint, pretrain_info) of every VLM the sweep runs: --checkpoint, or --pretrain's --snapshots."""
  if args.checkpoint:
    from deft_jax.models import clip_weights  # pylint: disable=g-import-not-at-top
    ckpt = clip_weights.resolve_checkpoint(args.checkpoint)
    info = json.loads(((ckpt if ckpt.is_dir() else ckpt.parent) / "pretrain_info.json").read_text())
    return [(args.checkpoint.replace(":", "_"), args.checkpoint, info)]
  if not args.pretrain:
    raise SystemExit("give --pretrain (with --snapshots) or --checkpoint")
  out = []
  for snap in args.snapshots.split(","):
    ckpt = Path(args.pretrain) / ("clip" if snap == "clip" else f"snapshots/{snap}")
    out.append((snap, ckpt, json.loads((ckpt / "pretrain_info.json").read_text())))
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--pretrain", default="", help="the pretrain/ folder of a configs/cifar10n_strong_vlm.py run")
  p.add_argument("--root", required=True, help="the CIFAR-10N assets folder")
  p.add_argument("--out", required=True, help="a folder for the detection workdirs")
  p.add_argument("--snapshots", default="epoch_002,epoch_008,clip")
  p.add_argument("--checkpoint", default="", help="instead of --pretrain's snapshots: one CLIP (e.g. "
                 "standin:cifar10_tiny32_v2; its zero-shot accuracy from its pretrain_info.json)")
  p.add_argument("--variant", default="", help="a tag for rows of a non-default phase 1 (e.g. negatives=hard; "
                 "the overrides themselves go in extra)")
  p.add_argument("--label_sets", default="worse_label,aggre_label,random_label1")
  p.add_argument("--methods", default=",".join(BASELINES))
  p.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "detection_strong_vlm.jsonl"))
  p.add_argument("--rows_only", action="store_true", help="only score the existing workdirs (nothing runs)")
  p.add_argument("extra", nargs="*", help="more --config.* overrides")
  args = p.parse_args()
  env = dict(os.environ, PYTHONPATH=str(REPO))
  for snap, ckpt, info in checkpoints(args):
    for label_set in args.label_sets.split(","):
      workdir = Path(args.out) / snap / label_set
      cmd = command(args, ckpt, label_set, workdir)
      shown = " ".join(shlex.quote(c) for c in cmd[1:])
      print("$ python", shown, flush=True)
      if not args.rows_only:
        subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
      new = rows(workdir, zero_shot=info["zero_shot_accuracy_ensemble"], checkpoint=f"{snap} ({info['epochs']} epochs)",
                 label_set=label_set, cmd="python " + shown, variant=args.variant)
      with open(args.results, "a") as f:
        for r in new:
          f.write(json.dumps(r) + "\n")
      for r in new:
        f1, auroc, flagged = ("-" if r[k] is None else f"{r[k]:.3f}" for k in ("f1", "auroc", "flagged_fraction"))
        print(f"  {r['method']:<22} F1 {f1}  AUROC {auroc}  flagged {flagged} (noise {r['noise_rate']:.3f})",
              flush=True)


if __name__ == "__main__":
  main()
