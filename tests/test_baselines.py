"""The comparison detectors of deft_jax/baselines/: the registry, the output contract, and cleanlab's routes."""

import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_config
from deft_jax import baselines
from deft_jax.baselines import _cleanlab, _common, cleanlab_cl
from deft_jax.classify.run_clip import RunCLIP
from deft_jax.data import cifar_offline
from deft_jax.errors import ConfigError

N = 300


@pytest.fixture(scope="module")
def split():
  """300 real CIFAR-10 images with CIFAR-10N's aggre_label (about 9 % wrong)."""
  return cifar_offline.load_demo(label_set="aggre_label", train_indices=f"0:{N}")["train"]


def test_registry_lists_every_baseline_module_with_its_name_and_stream():
  names = baselines.available()
  assert {"label_match", "small_loss", "gmm", "turn", "vlpt", "cleanlab_cl", "cleanlab_datalab"} <= set(names)
  assert not any(n.startswith("_") for n in names)
  streams = [baselines.get(n).STREAM for n in names]
  assert len(set(streams)) == len(streams)  # independent seeds
  assert baselines.display_name("small_loss") == "small-loss"
  with pytest.raises(ConfigError, match="unknown baseline 'nope'.*label_match"):
    baselines.get("nope")


def test_every_baseline_module_is_in_the_registry():
  """A module added to deft_jax/baselines/ without its line in BASELINES would never run: the table and the files
  agree."""
  files = sorted(p.stem for p in Path(baselines.__file__).parent.glob("*.py") if not p.stem.startswith("_"))
  assert files == baselines.available()
  assert all(target == f"deft_jax.baselines.{name}" for name, target in baselines.BASELINES.items())


def _separable(split, dim=16, seed=0):
  """Features that the true labels separate cleanly (one direction per class, little noise)."""
  rng = np.random.default_rng(seed)
  centres = np.eye(split.num_classes, dim) * 4.0
  x = centres[split.clean_labels] + rng.normal(0, 0.3, (split.num_examples, dim))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("name", ["cleanlab_cl", "cleanlab_datalab"])
def test_cleanlab_routes_find_the_flipped_labels_of_a_separable_case(name, split, mesh1, monkeypatch):
  """On features that the true labels separate, both of cleanlab's routes flag the wrong given labels."""
  monkeypatch.setattr(_common, "clip_image_embeddings", lambda *a, **k: _separable(split))
  c = tiny_config()
  c.baselines.cleanlab.knn = 5
  out = baselines.run(name, c, split, mesh=mesh1, clip=RunCLIP(c, None))
  assert set(out) >= set(_common.CONTRACT)
  assert out["is_clean"].dtype == bool and out["suggested"].dtype == np.int32 and out["p_clean"].dtype == np.float32
  truly_clean = split.labels == split.clean_labels
  assert 0.04 < (~truly_clean).mean() < 0.2
  agree = np.mean(out["is_clean"] == truly_clean)
  assert agree >= 0.9, agree
  np.testing.assert_array_equal(out["suggested"][~truly_clean], split.clean_labels[~truly_clean])
  assert ((out["label_score"] >= 0) & (out["label_score"] <= 1)).all()


def test_cleanlab_cl_probabilities_are_out_of_sample(split):
  """Each row of pred_probs comes from a probe that did not see that example: on random features the probe
  cannot memorise, so the given label's probability stays near chance."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(split.num_examples, 64)).astype(np.float32)
  probs = cleanlab_cl.out_of_sample_probs(x, split.labels, folds=5, C=100.0, seed=0)
  assert probs.shape == (split.num_examples, split.num_classes)
  np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
  p_given = probs[np.arange(split.num_examples), split.labels]
  assert p_given.mean() < 0.3  # an in-sample probe with C=100 would give ~1.0


def test_a_missing_cleanlab_extra_names_the_pip_command(monkeypatch):
  monkeypatch.setitem(sys.modules, "cleanlab", None)
  with pytest.raises(_cleanlab.MissingExtraError, match=r'pip install "deft_jax\[cleanlab\]"'):
    _cleanlab.require("cleanlab_cl")


def test_baselines_on_real_images_with_a_real_clip_return_the_contract(split, mesh1, tiny_clip):
  """Through the real embedding path (tiny random CLIP, real demo JPEGs): every baseline's output has the shape
  and types of the detector contract."""
  c = tiny_config(tiny_clip)
  for name in ("cleanlab_cl", "cleanlab_datalab", "label_match"):
    out = baselines.run(name, c, split, mesh=mesh1, clip=RunCLIP(c, tiny_clip))
    _common.check_contract(out, N, name)
    assert np.isfinite(out["score"]).all()
