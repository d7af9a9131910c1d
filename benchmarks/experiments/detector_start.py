r"""Where phase 1 starts and where it ends: the detector's own classifier before and after training.

DEFT classifies with its positive prompts (argmax_k s+_k) and ranks labels by the margin s+_y - s-_y. Before
the first step those prompts hold random context vectors (the paper's N(0, 0.02) init) or the word
embeddings of ``detect.ctx_init``, and deep VPT adds random tokens to every block. This script scores the
untrained detector (step 0, the run's own seed) over the train split without augmentation, and, for each
finished detect workdir given, the trained one (its scoring pass in detect/detection.npz). For each it prints
the share of examples whose predicted class is the true one, the share where it is the given one, and the
AUROC of the margin for "the given label is right"; the same for CLIP's zero-shot classifier (the
label-match baseline of a run with the same CLIP, its log-probability of the given label) as the reference.

  PYTHONPATH=. python benchmarks/experiments/detector_start.py \
      --config configs/cifar10n_strong_vlm.py:root=../shared/assets,label_set=aggre_label \
      --checkpoint W/pretrain/clip --variants "random:,words:detect.ctx_init=a photo of a,novpt:detect.peft.vpt=none" \
      --trained random=D1,words=D2 --zeroshot D1 --out start.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

import jax
import numpy as np

from deft_jax import config_lib, parallel
from deft_jax.data import datasets
from deft_jax.data.config import image_spec
from deft_jax.detect import detector as detector_lib
from deft_jax.models import prompts as prompts_lib
from deft_jax.detect import train as detect_train
from deft_jax.models import zeroshot
from deft_jax.report import auroc


def _override(config, assignment: str):
  """``a.b.c=value`` onto the ConfigDict, the value parsed as --config.a.b.c would be (a literal, else text)."""
  import ast  # pylint: disable=g-import-not-at-top
  key, value = assignment.split("=", 1)
  *path, last = key.split(".")
  node = config
  for p in path:
    node = node[p]
  try:
    node[last] = ast.literal_eval(value)
  except (ValueError, SyntaxError):
    node[last] = value


def quality(suggested, margin, given, truth) -> dict:
  clean = given == truth
  return {"predicted_is_true": float(np.mean(suggested == truth)),
          "predicted_is_given": float(np.mean(suggested == given)),
          "auroc_margin": auroc(np.asarray(margin, np.float64), clean)}


def text_geometry(det, clip_params, prompts, class_names) -> dict:
  """How the prompts place the class text features: mean over classes of cos(t+_k, t-_k), cos(t+_k, z_k) with
  z_k the zero-shot feature ("a photo of a {k}."), and the mean cos(t+_k, t+_j), j != k (class separation;
  the zero-shot features' own value is ``zero_shot_between_classes``)."""
  pos, neg = prompts_lib.text_features(det.model, clip_params, prompts, det.template)
  z = zeroshot.class_text_features(det.model, clip_params, class_names, det.tokenizer, ("a photo of a {}.",))
  pos, neg, z = (np.asarray(a, np.float64) for a in (pos, neg, z))
  off = ~np.eye(len(pos), dtype=bool)
  return {"cos_pos_neg": float(np.mean(np.sum(pos * neg, -1))),
          "cos_pos_zero_shot": float(np.mean(np.sum(pos * z, -1))),
          "cos_between_classes": float(np.mean((pos @ pos.T)[off])),
          "zero_shot_between_classes": float(np.mean((z @ z.T)[off]))}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True, help="configs/<name>.py[:args]")
  p.add_argument("--checkpoint", required=True, help="the CLIP (a pretrain/clip or snapshot directory)")
  p.add_argument("--variants", default="random:", help="name:override[;override...],... (overrides a.b=v)")
  p.add_argument("--trained", default="", help="name=detect workdir,...: finished runs of those variants")
  p.add_argument("--zeroshot", default="", help="a workdir whose baselines/label_match used this CLIP")
  p.add_argument("--out", default="", help="write the figures here as JSON")
  args = p.parse_args()
  path, _, arg = args.config.partition(":")
  base = config_lib.from_file(path, arg or None)
  base.model.checkpoint = args.checkpoint
  splits = datasets.get_dataset(base.data)
  split = splits["train"]
  given, truth = np.asarray(split.labels), np.asarray(split.clean_labels)
  mesh = parallel.make_mesh([("data", jax.device_count())])
  dets = {}
  results = {"num_examples": int(split.num_examples), "noise_rate": float(np.mean(given != truth))}

  if args.zeroshot:  # the label-match baseline of a run with this CLIP: the zero-shot classifier's outputs
    lm = dict(np.load(Path(args.zeroshot) / "baselines" / "label_match" / "detection.npz"))
    results["zero_shot"] = quality(lm["suggested"], lm["score"], given, truth)
    print("zero-shot:", results["zero_shot"], flush=True)
  for spec in filter(None, args.variants.split(",")):
    name, _, overrides = spec.partition(":")
    config = config_lib.from_file(path, arg or None)
    config.model.checkpoint = args.checkpoint
    for o in filter(None, overrides.split(";")):
      _override(config, o)
    det = detector_lib.Detector(config, class_names=split.class_names, num_examples=split.num_examples, mesh=mesh,
                                checkpoint=args.checkpoint, steps_per_epoch=1)
    state = det.init_state(jax.random.key(config.seed))
    data_kw = image_spec(config.data, det.model.config.vision.image_size).pipeline_kw()
    scored = detect_train.score_split(det, state["params"], split, batch_size=config.detect.eval_batch_size,
                                      data_kw=data_kw)
    results[f"{name}/step0"] = quality(scored["suggested"], scored["margin"], given, truth)
    results[f"{name}/step0"].update(text_geometry(det, state["params"]["clip"], state["params"]["prompts"],
                                                  split.class_names))
    dets[name] = (det, state["params"])
    print(name, "step 0:", results[f"{name}/step0"], flush=True)
  for spec in filter(None, args.trained.split(",")):
    name, _, workdir = spec.partition("=")
    det = dict(np.load(Path(workdir) / "detect" / "detection.npz"))
    results[f"{name}/trained"] = quality(det["pass_suggested"], det["pass_margin"], given, truth)
    if name in dets:  # the learned prompts (and PEFT parameters) in place of the step-0 ones
      detector, params = dets[name]
      learned = dict(np.load(Path(workdir) / "detect" / "learned_params.npz"))
      trained = detect_train.with_learned_params(params, learned)
      clip_params, prompts = trained["clip"], trained["prompts"]
      results[f"{name}/trained"].update(text_geometry(detector, clip_params, prompts, split.class_names))
    results[f"{name}/trained_online"] = quality(det["online_suggested"], det["online_margin"], given, truth)
    print(name, "trained:", results[f"{name}/trained"], flush=True)
  if args.out:
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
  main()
