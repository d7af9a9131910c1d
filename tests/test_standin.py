"""The stand-in CLIP shipped with deft_jax (deft_jax/assets/standins/cifar10_tiny32/): its file, its zero-shot
accuracy, and DEFT's quality with it on held-out CIFAR-10N images it never saw.

The stand-in is the 76.4 % zero-shot CLIP of configs/cifar10n_strong_vlm.py (40 epochs of contrastive
pretraining on CIFAR-10 training images 10,000-49,999), stored as fp16 safetensors; its README gives the command
that made it, its sha256 and its zero-shot accuracy on the 10,000 test images.
"""

import json
import re
import shutil

import numpy as np
import pytest

from conftest import REPO, run_main
from deft_jax.errors import CorruptCheckpointError, MissingFileError
from deft_jax.models import clip_weights, standins

STANDIN = standins.STANDINS["cifar10_tiny32"]

# Zero-shot top-1 on the first 1,000 CIFAR-10 test images, measured with
# `python -m deft_jax.pretrain.standin zero_shot standin:cifar10_tiny32 --root ../shared/assets --test_size 1000`
# (templates ensembled / "a photo of a {}."). The computation is deterministic on one CPU; the tolerance
# allows another XLA build's float rounding to move a handful of the 1,000 argmaxes.
ZERO_SHOT_1000 = {"ensemble": 0.774, "single": 0.774}
ZERO_SHOT_TOL = 0.004


@pytest.mark.parametrize("name, epochs, captions", [("cifar10_tiny32", 40, None),
                                                     ("cifar10_tiny32_v2", 30, "varied")])
def test_the_shipped_file_is_the_one_its_readme_and_the_registry_name(name, epochs, captions):
  """The weights' sha256 equals the registry's and the README's; the README states the registry's zero-shot
  accuracy and the command that made it; the file fits the size the repository allows, and all stand-ins
  together fit 50 MB."""
  s = standins.STANDINS[name]
  weights = s.directory / standins.WEIGHTS
  assert weights.stat().st_size <= 20 * 2**20
  assert sum((t.directory / standins.WEIGHTS).stat().st_size for t in standins.STANDINS.values()) <= 50 * 2**20
  assert standins.sha256_of(weights) == s.sha256
  readme = (s.directory / "README.md").read_text()
  assert s.sha256 in readme
  assert f"{100 * s.zero_shot:.1f} %" in readme
  assert "python -m deft_jax.main --config configs/cifar10n_strong_vlm.py" in readme
  assert "python -m deft_jax.pretrain.standin export" in readme
  info = json.loads((s.directory / "pretrain_info.json").read_text())
  assert info["epochs"] == epochs and info["num_examples"] == 40000
  assert info.get("captions", {}).get("kind") == captions
  assert info["zero_shot_accuracy_ensemble"] == pytest.approx(s.zero_shot, abs=6e-4)  # fp32, before fp16
  from safetensors.numpy import load_file
  assert {v.dtype for v in load_file(str(weights)).values()} == {np.dtype(np.float16)}


def test_a_damaged_or_missing_standin_is_named_and_never_loaded(tmp_path, monkeypatch):
  copy = tmp_path / STANDIN.name
  shutil.copytree(STANDIN.directory, copy)
  monkeypatch.setattr(standins, "DIR", tmp_path)
  standins._verified.clear()
  assert clip_weights.resolve_checkpoint("standin:cifar10_tiny32") == copy
  raw = bytearray((copy / standins.WEIGHTS).read_bytes())
  raw[len(raw) // 2] ^= 0xFF  # one flipped byte in the middle of the tensors
  (copy / standins.WEIGHTS).write_bytes(bytes(raw))
  with pytest.raises(CorruptCheckpointError, match=f"has sha256 [0-9a-f]{{64}}, not the {STANDIN.sha256}"):
    clip_weights.config_from_checkpoint("standin:cifar10_tiny32")
  (copy / standins.WEIGHTS).write_text("version https://git-lfs.github.com/spec/v1\n")
  with pytest.raises(CorruptCheckpointError, match="git-lfs pointer"):
    clip_weights.resolve_checkpoint("standin:cifar10_tiny32")
  (copy / standins.WEIGHTS).unlink()
  with pytest.raises(MissingFileError, match="model.safetensors is missing"):
    clip_weights.resolve_checkpoint("standin:cifar10_tiny32")
  with pytest.raises(MissingFileError, match=re.escape("no stand-in CLIP named 'cifar10_huge'; the shipped ones "
                                                       "are standin:cifar10_tiny32, standin:cifar10_tiny32_v2")):
    clip_weights.resolve_checkpoint("standin:cifar10_huge")


def test_the_standin_classifies_1000_test_images_zero_shot_as_measured(assets_dir, mesh1):
  from deft_jax.pretrain import standin
  got = standin.zero_shot_accuracy("standin:cifar10_tiny32", str(assets_dir), test_size=1000, mesh=mesh1)
  print(got)
  for k, want in ZERO_SHOT_1000.items():
    assert got[k] == pytest.approx(want, abs=ZERO_SHOT_TOL), (k, got)
  # and it is the strong stand-in, not a weaker snapshot: within 3 points of its 10,000-image accuracy
  assert abs(got["ensemble"] - STANDIN.zero_shot) < 0.03


# DEFT against label-match and keep-all with the stand-in on 2,000 held-out CIFAR-10N worse_label images (41.4 %
# noise), measured at seeds 0-4 (the detection stream) by `PYTHONPATH=. python benchmarks/experiments/standin_seeds.py
# --root ../shared/assets --out DIR --seeds 0 1 2 3 4 --recipe synthetic`: {comparison: (lowest, highest) over the
# five seeds}. label-match (F1 0.872, AUROC 0.950) and keep-all (F1 0.739) do not depend on the seed; DEFT does,
# widely: F1 0.690-0.803, AUROC 0.726-0.932 by its default ranking, p+(given label) (by the margin 0.624-0.835: on
# 2,000 images phase 1 takes 320 steps, and the per-class offsets of the margin s+_k - s-_k stay far apart at some
# seeds: one class flagged at 64-82 %, another at 14-16 %).
# The suite runs seed 0.
MEASURED = {
    "deft_minus_label_match_f1": (-0.1822, -0.0691),
    "deft_minus_label_match_auroc": (-0.2247, -0.0184),
    "deft_minus_keep_all_f1": (-0.0492, 0.0639),
}
PAD = 0.01  # each band is the measured range widened by this much on each side


def test_deft_with_the_standin_on_2000_held_out_worse_label_images_stays_in_the_band_of_five_seeds(assets_dir,
                                                                                                    tmp_path):
  """DEFT with the shipped stand-in (configs/cifar10n_strong_vlm.py, its default phase-1 recipe) on CIFAR-10
  training images 0-1,999 with their CIFAR-10N worse_label labels, against CLIP label-match and keeping every
  label: each comparison within the band of five seeds (MEASURED, widened by PAD), whichever way it goes.

  What is true here: DEFT's clean selection trails CLIP label-match by 7-18 F1 points and its ranking (p+ of the
  given label) is worse (AUROC 0.02-0.22 lower); against keeping every label it goes either way (-4.9 to +6.4
  points). A result past either end of a band fails: a regression, or DEFT closing a gap it has today (then
  re-measure with the command above and move the band, the README and BENCHMARKS.md with it)."""
  from benchmarks.experiments import standin_seeds
  run_main(tmp_path / "w", "--config.seed=0", *standin_seeds.overrides(), config=standin_seeds.config_arg(
      assets_dir).split("=", 1)[1])
  got = standin_seeds.comparisons(tmp_path / "w")
  print("seed 0:", got)
  outside = {k: (got[k], (lo - PAD, hi + PAD)) for k, (lo, hi) in MEASURED.items()
             if not lo - PAD <= got[k] <= hi + PAD}
  assert not outside, outside
  assert got["label_match_f1"] == pytest.approx(0.8719, abs=2e-3)  # the zero-shot rule: no seed, no training
  assert got["keep_all_f1"] == pytest.approx(0.739, abs=1e-3)  # the data: 41.4 % of the labels are wrong
