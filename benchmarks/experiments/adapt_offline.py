"""Phase-2 variants on the offline real-noise data: test accuracy of FFT by label set, head init, rules, loss.

The packaged demo (configs/demo.py): 4,000 CIFAR-10 train images with CIFAR-10N ``worse_label`` (41.6 % noise),
1,000 test images, and a tiny CLIP pretrained on the demo's 5,000 clean "pretrain" images. ``--run`` is a workdir
where the demo's pretrain and detect stages have finished (its CLIP and DEFT's mask are used as they are):

  python -m deft_jax.main --config configs/demo.py --workdir /tmp/rn "--config.stages=('pretrain','detect')"
  PYTHONPATH=. python benchmarks/experiments/adapt_offline.py --run /tmp/rn --out /tmp/adapt_offline
  PYTHONPATH=. python benchmarks/experiments/adapt_offline.py --run /tmp/rn --out /tmp/adapt_offline \
      --variants deft,all --lr 5e-3 --seed 1

``--clip DIR`` instead of ``--run`` takes any pretrained CLIP and runs the detector here (cached in --out).
Every variant trains for the same number of optimiser steps (``--steps``) and is evaluated on the test split.
Variants: deft / all / oracle (FFT reference rules, random head, CE on DEFT's subset / every noisy label / the
truly clean subset), *_text (head from the zero-shot classifier), *_all (every visual parameter trains),
gce / sce / elr (those losses on every noisy label), zeroshot (no training).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

import numpy as np
from absl import logging as absl_logging
from clu import metric_writers

from deft_jax import config_lib, parallel, run
from deft_jax.adapt import train as adapt_train
from deft_jax.classify.run_clip import RunCLIP
from deft_jax.data import datasets
from deft_jax.detect import train as detect_train
from deft_jax.report import metrics as report_metrics

VARIANTS = {
    "deft": dict(train_on="deft"),
    "all": dict(train_on="all"),
    "oracle": dict(train_on="clean_oracle"),
    "deft_text": dict(train_on="deft", head_init="text"),
    "all_text": dict(train_on="all", head_init="text"),
    "deft_all": dict(train_on="deft", trainable="all"),
    "all_all": dict(train_on="all", trainable="all"),
    "gce": dict(train_on="all", loss="gce"),
    "sce": dict(train_on="all", loss="sce"),
    "elr": dict(train_on="all", loss="elr"),
    "zeroshot": dict(method="zeroshot"),
}


def demo_config():
  c = config_lib.from_file(REPO / "configs" / "demo.py")
  c.log_every_steps = 100
  c.checkpoint_every_steps = 10_000
  return c


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--run", help="workdir of a finished demo pretrain + detect run")
  src.add_argument("--clip", help="a pretrained CLIP directory; DEFT then runs here")
  p.add_argument("--out", required=True, help="where the variants' workdirs go")
  p.add_argument("--variants", default="deft,all,oracle,deft_text,all_text,deft_all,all_all,gce,sce,elr,zeroshot")
  p.add_argument("--steps", type=int, default=630, help="optimiser steps of every variant (10 epochs of all)")
  p.add_argument("--lr", type=float, default=5e-4)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--backbone", default="clip",
                 help="a deft_jax.models.backbones name (e.g. resnet_tiny) trained from random init with SGD at "
                      "--lr instead of the CLIP image encoder")
  args = p.parse_args(argv)
  absl_logging.set_verbosity(absl_logging.INFO)
  out = Path(args.out)
  mesh = parallel.make_mesh([("data", -1)])
  writer = metric_writers.LoggingWriter()
  config = demo_config()
  splits = {k: v for k, v in datasets.get_dataset(config.data).items() if k in ("train", "test")}
  train = splits["train"]
  if args.run:
    clip = str(Path(args.run) / "pretrain" / "clip")
    detection = dict(np.load(Path(args.run) / "detect" / "detection.npz"))
  else:
    clip = args.clip
    detection = detect_train.run(config, out / "detect", train_split=train, mesh=mesh, writer=writer, checkpoint=clip)
  m = report_metrics.detection_metrics(detection["is_clean"], train.labels, train.clean_labels)
  print(json.dumps({"clip": clip, "detection": {k: round(float(m[k]), 4) for k in ("precision", "recall", "f1")},
                    "selected": int(detection["is_clean"].sum())}), flush=True)
  rows = []
  for name in args.variants.split(","):
    c = demo_config()
    c.seed = args.seed
    c.adapt.update(dict(steps=args.steps, **VARIANTS[name]))
    c.adapt.schedule.lr = args.lr
    if args.backbone != "clip":
      c.adapt.update(dict(backbone=args.backbone, backbone_checkpoint="none", backbone_optimizer=False))
    t0 = time.time()
    tag = "" if args.backbone == "clip" else f"{args.backbone}_"
    run_clip = RunCLIP(c, None if args.backbone != "clip" else clip)
    mask = run.train_mask(c, train, detection, mesh=mesh, clip=run_clip)
    res = adapt_train.run(c, out / f"{tag}{name}_s{args.steps}_lr{args.lr:g}_seed{args.seed}", splits=splits,
                          mesh=mesh, writer=writer, clip=run_clip, mask=mask)
    row = {"variant": name, "backbone": args.backbone, "lr": args.lr, "seed": args.seed,
           "test_top1": res["test"]["top1"],
           "mean_per_class": round(res["test"]["mean_per_class_accuracy"], 4),
           "num_selected": res.get("num_selected"), "selection_precision": res.get("selection_precision"),
           "steps": res["steps"], "epochs": round(res.get("epochs_equivalent", 0.0), 2),
           "seconds": round(time.time() - t0)}
    rows.append(row)
    print(json.dumps(row), flush=True)
  print("\n| variant | test top-1 | selected | precision | steps (epochs) |\n|---|---|---|---|---|")
  for r in rows:
    prec = "" if r["selection_precision"] is None else f"{r['selection_precision']:.3f}"
    print(f"| {r['variant']} | {r['test_top1']:.3f} | {r['num_selected'] or ''} | {prec} | "
          f"{r['steps']} ({r['epochs']}) |")


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  main()
