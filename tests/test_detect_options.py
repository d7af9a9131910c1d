"""Phase 1's options beyond the method (detect.negatives, detect.class_specific_negatives, detect.logit_scale):
what each changes, and that their defaults are the method."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from deft_jax import config_check, parallel
from deft_jax.detect import losses
from deft_jax.detect.detector import Detector
from deft_jax.models import clip_weights
from deft_jax.models import prompts as prompts_lib

C = 5
N = 40


def test_uniform_negatives_are_the_methods_draw_and_hard_ones_follow_the_positive_softmax():
  labels = jnp.zeros(30000, jnp.int32)
  rng = jax.random.key(3)
  uniform = np.asarray(losses.complementary_labels(rng, labels, C))
  # the method's draw, from the key itself (the default run's random stream is unchanged)
  np.testing.assert_array_equal(uniform, np.asarray((labels + jax.random.randint(rng, labels.shape, 1, C)) % C))
  s_pos = jnp.tile(jnp.asarray([[9.0, 0.0, np.log(3.0), 0.0, 0.0]]), (30000, 1))  # class 2 three times as likely
  hard = np.asarray(losses.complementary_labels(rng, labels, C, s_pos=s_pos, negatives="hard"))
  assert (hard != 0).all()
  np.testing.assert_allclose(np.bincount(hard, minlength=C)[1:] / 30000, [1 / 6, 3 / 6, 1 / 6, 1 / 6], atol=0.015)
  mixed = np.asarray(losses.complementary_labels(rng, labels, C, s_pos=s_pos, negatives="mixed"))
  assert (mixed != 0).all()
  np.testing.assert_allclose(np.bincount(mixed, minlength=C)[1:] / 30000,
                             0.5 * np.array([1 / 6, 3 / 6, 1 / 6, 1 / 6]) + 0.5 / 4, atol=0.015)
  with pytest.raises(ValueError, match="negatives must be one of"):
    losses.complementary_labels(rng, labels, C, s_pos=s_pos, negatives="nearest")


def _detector(mesh, checkpoint=None, **detect):
  c = tiny_config(detect=dict(epochs=2, warmup_epochs=1, batch_size=8, n_ctx=4, **detect))
  c.detect.peft.update({"vpt": "deep", "vpt_tokens": 2})
  if checkpoint:
    c.model.checkpoint = checkpoint
  return Detector(c, class_names=[f"class {i}" for i in range(C)], num_examples=N, mesh=mesh,
                  checkpoint=checkpoint, steps_per_epoch=2)


def _batch(i, b=8):
  rng = np.random.default_rng(i)
  return {"image": rng.normal(size=(b, 32, 32, 3)).astype(np.float32),
          "index": (np.arange(b) + i * b).astype(np.int32) % N, "label": rng.integers(0, C, b).astype(np.int32),
          "clean_label": rng.integers(0, C, b).astype(np.int32), "mask": np.ones(b, bool)}


def test_class_specific_negatives_give_each_class_its_own_negative_context_and_share_the_positive(mesh1):
  det = _detector(mesh1, class_specific_negatives=True, negatives="hard")
  state = det.init_state(jax.random.key(0))
  p = state["params"]["prompts"]
  assert p["pos_ctx"].shape == (4, 32) and p["neg_ctx"].shape == (C, 4, 32)
  model, clip = det.model, state["params"]["clip"]
  pos, neg = prompts_lib.text_features(model, clip, p, det.template)
  (ref_pos,) = prompts_lib.context_features(model, clip, [p["pos_ctx"]], det.template)
  # class k's negative prompt is built with neg_ctx[k]: the same as a unified context equal to it, at row k
  for k in (0, 3):
    (ref_k,) = prompts_lib.context_features(model, clip, [p["neg_ctx"][k]], det.template)
    np.testing.assert_allclose(neg[k], ref_k[k], atol=1e-5)
  np.testing.assert_allclose(pos, ref_pos, atol=1e-6)
  step = det.jit_train_step(state)
  before = np.asarray(p["neg_ctx"])
  for i in range(3):
    state, metrics = step(state, parallel.shard_batch(_batch(i), mesh1))
  moved = np.abs(np.asarray(state["params"]["prompts"]["neg_ctx"]) - before).sum(axis=(1, 2))
  assert np.isfinite(metrics["loss"]) and (moved > 0).sum() >= 2 and len(set(np.round(moved, 6))) >= 2


def test_logit_scale_replaces_the_checkpoints_for_phase_1_only_when_given(mesh1, tiny_clip):
  stored = float(clip_weights.read_safetensors(Path(tiny_clip))["logit_scale"])
  det = _detector(mesh1, tiny_clip)
  own = det.init_state(jax.random.key(0))["params"]
  assert float(own["clip"]["logit_scale"]) == pytest.approx(stored, rel=1e-6)
  hundred = _detector(mesh1, tiny_clip, logit_scale=100.0).init_state(jax.random.key(0))["params"]
  assert float(hundred["clip"]["logit_scale"]) == pytest.approx(np.log(100.0), rel=1e-6)
  # the same prompts and weights otherwise: the margins scale by 100 / the checkpoint's scale
  batch = parallel.shard_batch(_batch(0), mesh1)
  m_own, m_100 = (jax.device_get(det.jit_score(p)(p, batch))["margin"] for p in (own, hundred))
  np.testing.assert_allclose(m_100, m_own * 100.0 / np.exp(stored), rtol=1e-4, atol=1e-6)


def test_the_defaults_are_the_methods_and_bad_values_are_named():
  c = tiny_config()
  assert (c.detect.negatives, c.detect.class_specific_negatives, c.detect.logit_scale) == ("uniform", False, 0.0)
  c.detect.negatives = "nearest"
  c.detect.logit_scale = -1.0
  errors = "\n".join(config_check.failures(c))
  assert "detect.negatives" in errors and "detect.logit_scale" in errors
