"""Acceptance on real human label noise: everything that uses the shared real-noise run of tests/conftest.py.

The run (``real_noise_workdir``): the README's first command as it is, the packaged demo (4,000 CIFAR-10 train
images with CIFAR-10N ``worse_label``, 41.6 % human noise; 1,000 clean test images), the tiny CLIP of
configs/demo.py pretrained on the demo's 5,000 clean held-out images, DEFT's clean mask, the label-match and
small-loss selectors, and phase 2. One module, so that
pytest-xdist's ``--dist loadfile`` keeps these tests (and the run they share) on one worker.

Detection: DEFT against the other selectors, and bf16 against fp32.

Phase 2: training on DEFT's clean subset beats training on every noisy label, at equal steps. Both runs use
the reference recipe of configs/demo.py (FFT of the blocks, new random head, CE, SGD momentum 0.9, lr 5e-4,
wd 5e-4, cosine per epoch, batch 64) for the same number of optimiser steps: the demo's 5 epochs of the full
noisy set (315 steps), so about 9 epochs of DEFT's smaller subset.
"""

import json
import shutil

import jax
import numpy as np
from clu import metric_writers

from conftest import REAL_NOISE_ADAPT_STEPS, REPO, run_main
from deft_jax import config_lib, parallel, run
from deft_jax.adapt import train as adapt_train
from deft_jax.classify.run_clip import RunCLIP
from deft_jax.data import datasets
from deft_jax.report import detection_metrics

# ---------------------------------------------------------------------------------------------- detection

# DEFT against each comparison on this run, measured at seeds 0, 1, 2 (seed moves both the pretraining and the
# detection streams) by `PYTHONPATH=. python benchmarks/experiments/real_noise_seeds.py --out DIR --seeds 0 1 2`:
# {comparison: (lowest, highest) over the three seeds}. The suite runs seed 0.
MEASURED = {
    "deft_minus_label_match_f1": (0.1234, 0.1461),
    "deft_minus_small_loss_f1": (-0.0024, 0.0426),
    "keep_all_minus_deft_f1": (0.0320, 0.0470),
    "label_match_minus_deft_auroc": (0.0156, 0.0173),
    "deft_minus_small_loss_auroc": (0.0369, 0.1071),
}
PAD = 0.01  # each band is the measured range widened by this much on each side


def test_deft_against_every_comparison_stays_in_the_band_of_three_seeds(real_noise_workdir):
  """What is true in this setting (the demo's tiny CLIP at 43 % zero-shot, CIFAR-10N worse_label, 41.6 % noise),
  each comparison in the direction it was measured, within the band of three seeds (MEASURED, widened by PAD):

  - DEFT's F1 beats CLIP label-match's by 12-15 points;
  - DEFT ties or beats small-loss, which is told the true noise rate: F1 -0.2 to +4.3 points; its ranking (the
    report's default, p+ of the given label) beats small-loss's by 0.037-0.107 AUROC (small-loss varies more over
    the seeds than DEFT);
  - DEFT loses to keeping every label on F1 (by 3.2-4.7 points) and to label-match on AUROC (by 0.016-0.017; by
    its margin s+ - s- it lost by 0.056-0.060).

  A regression: DEFT's lead over label-match or its tie with small-loss falling below its band, or its deficit to
  keep-all or label-match growing beyond it. A result past the other end of a band (DEFT closing a gap it has
  today) fails too: then re-measure with the command above and move the band and the README with it."""
  from benchmarks.experiments.real_noise_seeds import comparisons

  got = comparisons(real_noise_workdir)
  print("seed 0:", got)
  assert got["zero_shot_accuracy"] > 0.35  # the tiny CLIP really learned something
  outside = {k: (got[k], (lo - PAD, hi + PAD)) for k, (lo, hi) in MEASURED.items()
             if not lo - PAD <= got[k] <= hi + PAD}
  assert not outside, outside
  # The directions the bands assert: DEFT ahead of label-match on F1, behind keep-all (F1) and label-match (AUROC).
  assert min(MEASURED["deft_minus_label_match_f1"]) - PAD > 0
  assert min(MEASURED["keep_all_minus_deft_f1"]) - PAD > 0 and min(MEASURED["label_match_minus_deft_auroc"]) - PAD > 0


def test_cleanlab_on_the_exported_pred_probs_and_features_agrees_with_deft(real_noise_workdir):
  """detect/pred_probs.npy and features.npy (also copied to report/) go to cleanlab as they are: its confident
  learning and Datalab find mostly the examples DEFT flags, and truly mislabelled ones above the base rate.
  Measured on this run: DEFT flags 1,726 of 4,000, cleanlab 2,229; overlap 1,354 (962 expected by chance,
  hypergeometric tail 4e-146); 56 % of cleanlab's findings are truly mislabelled (41.6 % of all)."""
  import cleanlab
  from cleanlab import filter as cleanlab_filter
  from scipy import stats

  from deft_jax.data import cifar_offline
  det = dict(np.load(real_noise_workdir / "detect" / "detection.npz"))
  train = cifar_offline.load_demo(label_set="worse_label")["train"]
  probs = np.load(real_noise_workdir / "detect" / "pred_probs.npy", mmap_mode="r")
  feats = np.load(real_noise_workdir / "detect" / "features.npy", mmap_mode="r")
  n, ours = train.num_examples, ~det["is_clean"]
  truly_noisy = train.labels != train.clean_labels
  by_cl = cleanlab_filter.find_label_issues(train.labels, np.asarray(probs))
  lab = cleanlab.Datalab({"label": train.labels}, label_name="label", verbosity=0)
  lab.find_issues(pred_probs=np.asarray(probs), features=np.asarray(feats), issue_types={"label": {}})
  by_datalab = lab.get_issues("label")["is_label_issue"].to_numpy()
  for theirs in (by_cl, by_datalab):
    k, chance = int((ours & theirs).sum()), ours.sum() * theirs.sum() / n
    assert k > 1.2 * chance and stats.hypergeom.sf(k - 1, n, int(ours.sum()), int(theirs.sum())) < 1e-20
    assert truly_noisy[theirs].mean() > truly_noisy.mean() + 0.05


def test_bf16_and_fp32_detection_select_the_same_samples(real_noise_workdir, tmp_path):
  """bf16 compute (fp32 parameters) against fp32 on a 640-image slice: selections agree on >= 97 % of the
  samples and the F1 against the truth differs by <= 0.01."""
  results = {}
  for dtype in ("float32", "bfloat16"):
    wd = tmp_path / dtype
    wd.mkdir()
    shutil.copytree(real_noise_workdir / "pretrain", wd / "pretrain")
    run_main(wd, "--config.stages=('pretrain','detect')", "--config.detect.epochs=2",
             "--config.data.train_indices=0:640",
             "--config.baselines.methods=()", "--config.report.write_images=False",
             "--config.report.review=False", "--config.report.export_arrays=False",
             f"--config.model.dtype={dtype}")
    results[dtype] = dict(np.load(wd / "detect" / "detection.npz"))
  a, b = results["float32"]["is_clean"], results["bfloat16"]["is_clean"]
  from deft_jax.data import cifar_offline
  train = cifar_offline.load_demo(label_set="worse_label", train_indices="0:640")["train"]
  f1 = {k: detection_metrics(v["is_clean"], train.labels, train.clean_labels)["f1"] for k, v in results.items()}
  print(f"agreement {np.mean(a == b):.4f}, F1 fp32 {f1['float32']:.4f} bf16 {f1['bfloat16']:.4f}")
  assert np.mean(a == b) >= 0.97
  assert abs(f1["float32"] - f1["bfloat16"]) <= 0.01


# ---------------------------------------------------------------------------------------------- phase 2

STEPS = REAL_NOISE_ADAPT_STEPS  # the demo's phase 2: 5 epochs of the 4,000 noisy labels at batch 64


def demo_config():
  return config_lib.from_file(REPO / "configs" / "demo.py")


def test_fft_on_deft_subset_beats_fft_on_all_noisy_labels_at_equal_steps(real_noise_workdir, tmp_path):
  """The run's own phase 2 (FFT on DEFT's subset, the demo's recipe, STEPS steps) against the same training on
  every noisy label, for the same number of steps. Measured at seeds 0, 1, 2 (test top-1, DEFT's subset against
  every label): 37.4 / 33.2, 36.5 / 31.9, 34.6 / 31.1 % (`PYTHONPATH=. python benchmarks/experiments/
  adapt_offline.py --run W --out O --variants deft,all --steps 315 --seed S` on each real_noise_seeds.py run W)."""
  clip = str(real_noise_workdir / "pretrain" / "clip")
  detection = dict(np.load(real_noise_workdir / "detect" / "detection.npz"))
  config = demo_config()
  splits = {k: v for k, v in datasets.get_dataset(config.data).items() if k in ("train", "test")}
  train = splits["train"]
  precision = (train.labels == train.clean_labels)[detection["is_clean"]].mean()
  assert precision > 1 - train.noise_rate() + 0.05  # DEFT's subset is really cleaner than the whole set
  deft = json.loads((real_noise_workdir / "adapt" / "results.json").read_text())
  assert deft["train_on"] == "deft" and deft["method"] == "fft" and deft["steps"] == STEPS
  c = demo_config()
  c.adapt.update(dict(method="fft", train_on="all", steps=STEPS))
  mesh = parallel.make_mesh([("data", 1)], jax.devices()[:1])
  every = adapt_train.run(c, tmp_path / "all", splits=splits, mesh=mesh, writer=metric_writers.LoggingWriter(),
                          clip=RunCLIP(c, clip), mask=np.ones(train.num_examples, bool))
  assert every["steps"] == STEPS
  top1 = {"deft": deft["test"]["top1"], "all": every["test"]["top1"]}
  print(f"FFT test top-1 at {STEPS} steps: DEFT subset {top1['deft']:.3f}, all noisy labels {top1['all']:.3f} "
        f"(subset precision {precision:.3f})")
  assert top1["deft"] > top1["all"], top1


def test_backbone_from_random_init_on_deft_subset_beats_all_noisy_labels(real_noise_workdir, tmp_path):
  """A phase-2 backbone other than CLIP (a small ResNet of the backbone registry; random init, since no
  pretrained weights exist offline), SGD lr 0.05, STEPS steps on DEFT's subset against every noisy label.
  Measured at seeds 0, 1, 2: 25.2 / 16.5, 22.6 / 15.4, 26.6 / 17.3 % (the command above with
  `--backbone resnet_tiny --lr 0.05`)."""
  detection = dict(np.load(real_noise_workdir / "detect" / "detection.npz"))
  config = demo_config()
  splits = {k: v for k, v in datasets.get_dataset(config.data).items() if k in ("train", "test")}
  mesh = parallel.make_mesh([("data", 1)], jax.devices()[:1])
  top1 = {}
  for selection in ("deft", "all"):
    c = demo_config()
    c.adapt.update(dict(method="fft", train_on=selection, steps=STEPS, backbone="resnet_tiny",
                        backbone_checkpoint="none", backbone_optimizer=False))
    c.adapt.schedule.lr = 0.05
    mask = run.train_mask(c, splits["train"], detection, mesh=mesh, clip=RunCLIP(c, None))
    res = adapt_train.run(c, tmp_path / selection, splits=splits, mesh=mesh, writer=metric_writers.LoggingWriter(),
                          clip=RunCLIP(c, None), mask=mask)
    assert res["backbone"] == "resnet_tiny" and res["steps"] == STEPS
    top1[selection] = res["test"]["top1"]
  print(f"resnet_tiny (random init) test top-1 at {STEPS} steps: DEFT subset {top1['deft']:.3f}, "
        f"all noisy labels {top1['all']:.3f}")
  assert top1["deft"] > top1["all"] + 0.03, top1


def _report_lines(text: str) -> list[str]:
  """The printed health report: from its first line to the line before the run's closing lines."""
  lines = text.splitlines()
  start = next(i for i, l in enumerate(lines) if l.startswith("Label health report"))
  end = next(i for i, l in enumerate(lines) if l.startswith("deft_jax finished in"))
  return lines[start:end]


def test_the_readme_quotes_exactly_the_report_the_demo_prints(real_noise_workdir):
  """README.md's first block is what `python -m deft_jax.main --config configs/demo.py` prints. This run is that
  command, so its report must equal the README's line for line: every count, rate and row. (Was: the README kept
  1,723 flagged and a small-loss row that the demo no longer printed.)"""
  readme = (REPO / "README.md").read_text()
  block = readme.split("It prints", 1)[1].split("```", 2)[1]
  printed = (real_noise_workdir / "stdout.txt").read_text()
  assert _report_lines(block) == _report_lines(printed)
