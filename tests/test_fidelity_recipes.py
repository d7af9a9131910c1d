"""Phase 1's two recipes and the last departures from the reference (docs/FIDELITY.md). Each test names, in its
docstring, the behaviour it replaced, and fails on it."""

import json
import types

import jax
import numpy as np
import pytest

from conftest import REPO, tiny_config
from deft_jax import config_check, config_lib, run
from deft_jax.detect.detector import Detector
from deft_jax.errors import ConfigError

N = 12


def _detector(config, mesh, spe=3):
  return Detector(config, class_names=[f"class {i}" for i in range(5)], num_examples=N, mesh=mesh, checkpoint=None,
                  steps_per_epoch=spe)


# ------------------------------------------------------------------------------------------------ recipes

def test_real_noise_recipe_is_the_reference_bundle_with_a_constant_lr(mesh1):
  """Was: config_lib.real_world() set the strict rule, 5 SCE warm-up epochs and pseudo-labels from epoch 2 but kept
  the cosine, so phase 1's lr decayed towards 0 over the epochs; main_real_phase1.py builds CosineAnnealingLR
  and never steps it: the lr stays at 0.03."""
  c = config_lib.real_world(tiny_config(detect=dict(epochs=10)))
  assert c.detect.recipe == "real_noise" and c.data.noise.type == "human"
  det = _detector(c, mesh1, spe=3)
  s = det.settings
  assert (s.strict, s.warmup_epochs, s.warmup_loss, s.pseudo_label_start_epoch) == (True, 5, "sce", 1)
  for lr in det.schedules.values():  # every trained group (prompts, VPT)
    assert [float(lr(step)) for step in range(0, 30, 2)] == [pytest.approx(0.03)] * 15
  synthetic = _detector(tiny_config(detect=dict(epochs=10)), mesh1, spe=3)
  s = synthetic.settings
  assert (s.strict, s.warmup_epochs, s.warmup_loss, s.pseudo_label_start_epoch) == (False, 1, "ce", 1)
  assert all(float(lr(29)) < 0.01 for lr in synthetic.schedules.values())  # the synthetic recipe keeps the cosine


def test_labels_said_to_be_human_get_real_noise_and_set_fields_override_the_recipe():
  """Was: no field named the recipe; a config whose noise is human ran the synthetic recipe unless it called
  real_world(), and the CIFAR-10N stand-in config ran it without saying so."""
  c = tiny_config()
  assert config_lib.phase1_recipe(c)["recipe"] == "synthetic"
  c.data.noise.type = "human"  # a user's own human-labelled data
  r = config_lib.phase1_recipe(c)
  assert (r["recipe"], r["strict_selection"], r["schedule_decay"], r["overrides"]) == ("real_noise", True,
                                                                                     "constant", {})
  c.detect.recipe = "synthetic"  # an explicit recipe wins over the data's kind
  assert config_lib.phase1_recipe(c)["recipe"] == "synthetic"
  c.detect.recipe = "real_noise"
  c.detect.warmup_epochs = 1  # a field set against the recipe overrides that field only, and is listed
  r = config_lib.phase1_recipe(c)
  assert (r["warmup_epochs"], r["warmup_loss"], r["overrides"]) == (1, "sce", {"warmup_epochs": 1})
  for name in ("cifar100n", "clothing1m", "webvision"):
    assert config_lib.recipe_name(config_lib.from_file(REPO / "configs" / f"{name}.py")) == "real_noise", name
  strong = config_lib.from_file(REPO / "configs" / "cifar10n_strong_vlm.py")
  assert strong.detect.recipe == "synthetic"  # explicit until a measurement decides
  c.detect.recipe = "cosine"
  with pytest.raises(ConfigError, match="detect.recipe"):
    config_lib.phase1_recipe(c)
  assert any("detect.recipe" in f for f in config_check.failures(c))
  assert config_check.RECIPES[1:] == tuple(config_lib.RECIPES)


class _Writer:
  def __getattr__(self, name):
    return lambda *a, **k: None


def test_report_and_summary_json_name_the_phase1_recipe(tmp_path):
  """Was: neither report/summary.json, summary.txt nor the run's summary said which phase-1 recipe ran."""
  c = config_lib.real_world(tiny_config())
  c.report.write_images = c.report.export_arrays = c.report.review = False
  n = 6
  labels = np.array([0, 1, 0, 1, 0, 1], np.int32)
  train = types.SimpleNamespace(labels=labels, clean_labels=labels, num_examples=n, num_classes=2,
                                class_names=["a", "b"], ids=None, corrections=None, noise_report=None)
  margin = np.linspace(-1, 1, n).astype(np.float32)
  detection = {"p_clean": (margin > 0).astype(np.float32), "is_clean": margin > 0, "suggested": labels,
               "margin": margin, "label_score": (margin + 1) / 2, "score": margin}
  out = run.write_report(c, tmp_path, train, detection, {}, _Writer())
  assert out["phase1_recipe"]["recipe"] == "real_noise"
  summary = json.loads((tmp_path / "report" / "summary.json").read_text())
  assert summary["phase1_recipe"]["recipe"] == "real_noise"
  assert summary["phase1_recipe"]["schedule_decay"] == "constant"
  text = (tmp_path / "report" / "summary.txt").read_text()
  assert "phase-1 recipe: real_noise (strict rule, 5 SCE warm-up epochs, pseudo-labels from epoch 2, constant lr)" \
      in text

