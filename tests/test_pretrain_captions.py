"""Pretraining's captions (pretrain/captions.py), its logit scale and its warm start (pretrain/train.py)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from deft_jax import config_lib
from deft_jax.errors import ConfigError
from deft_jax.models import clip as clip_lib
from deft_jax.models import clip_weights, presets, zeroshot
from deft_jax.models import prompts as prompts_lib
from deft_jax.models.tokenizer import Tokenizer
from deft_jax.pretrain import captions as captions_lib
from deft_jax.pretrain import train as pretrain_train

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def tok():
  return Tokenizer(context_length=32)


@pytest.fixture(scope="module")
def bank(tok):
  return captions_lib.varied_bank(NAMES, tok, size=512, seed=3)


def _body(bank, t, k):
  return [int(i) for i in bank.ids[t, k, 1:bank.eot[t, k]]]


def _contains(seq, sub):
  return any(seq[i:i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


def test_every_caption_names_its_class_and_no_filler_names_another(bank, tok):
  names = [tok.encode(n) for n in NAMES]
  for t in range(bank.ids.shape[0]):
    for k in range(len(NAMES)):
      body = _body(bank, t, k)
      assert _contains(body, names[k]), (t, k, body)
      for j, other in enumerate(names):
        if j != k:
          assert not _contains(body, other), (t, k, j)
      assert bank.ids[t, k, 0] == tok.bos_id and bank.ids[t, k, bank.eot[t, k]] == tok.eos_id


def test_captions_reach_the_positions_of_phase_1s_prompts_with_the_name_anywhere(bank, tok):
  # phase 1's end-of-text position with 16 context vectors, as prompts_lib.build_template lays it out
  phase1 = prompts_lib.build_template(NAMES, tok, n_ctx=16).eot.max()
  assert (bank.eot >= phase1).mean() > 0.2 and bank.eot.max() == tok.context_length - 1
  starts = []  # where the class name starts, as a fraction of the caption
  for t in range(bank.ids.shape[0]):
    body, name = _body(bank, t, 3), tok.encode("cat")
    i = next(i for i in range(len(body)) if body[i:i + len(name)] == name)
    starts.append(i / max(len(body) - 1, 1))
  starts = np.asarray(starts)
  assert (starts == 0).mean() > 0.1 and ((starts > 0.2) & (starts < 0.8)).mean() > 0.1 and (starts > 0.8).mean() > 0.3


def test_soft_positions_are_the_placeholders_of_a_filler_and_the_bank_is_reproducible(bank, tok):
  assert 0.15 < bank.soft.any(axis=(1, 2)).mean() < 0.35  # soft_prob = 0.25 of the non-template layouts' draws
  placeholder = tok.encode("X")[0]
  assert (bank.ids[bank.soft] == placeholder).all()
  assert not bank.soft[:, :, 0].any() and not bank.soft[np.arange(512)[:, None], np.arange(10), bank.eot].any()
  again = captions_lib.varied_bank(NAMES, tok, size=512, seed=3)
  np.testing.assert_array_equal(again.ids, bank.ids)
  assert not np.array_equal(captions_lib.varied_bank(NAMES, tok, size=512, seed=4).ids[:, :, :12], bank.ids[:, :, :12])


def test_templates_kind_is_the_twelve_zero_shot_captions(tok):
  c = config_lib.base_config().pretrain.captions
  assert c.kind == "templates"
  b = captions_lib.bank(NAMES, tok, c)
  expected = tok.trim_padding(np.stack([tok([t.format(n) for n in NAMES]) for t in zeroshot.TEMPLATES]))
  np.testing.assert_array_equal(b.ids, expected)
  assert b.soft is None and b.per_step == 0
  with pytest.raises(ConfigError, match="pretrain.captions.kind"):
    captions_lib.bank(NAMES, tok, ml_collections.ConfigDict(dict(c, kind="random")))


def _state(model, tx, logit_scale, seed=1):
  params = clip_lib.init_params(model, jax.random.key(0))
  params = {**params, "logit_scale": jnp.float32(logit_scale)}
  return {"step": jnp.int32(0), "rng": jax.random.key_data(jax.random.key(seed)), "params": params,
          "opt_state": tx.init(params)}


@pytest.fixture(scope="module")
def steps(tok):
  """(model, tx, batch, {name: jitted step}): "soft" (one layout, its filler soft vectors, the scale fixed at
  100) and "one" (the same layout with its placeholder tokens as words, the scale learned)."""
  model, tx = clip_lib.CLIP(presets.get_preset("tiny")), optax.adam(1e-3)
  soft = captions_lib.varied_bank(NAMES, tok, size=1, per_step=4, template_prob=0.0, soft_prob=1.0, seed=1)
  assert soft.soft.any()
  one = captions_lib.CaptionBank(soft.ids, soft.eot, np.zeros_like(soft.soft), per_step=4)
  make = lambda bank, fixed: jax.jit(pretrain_train.make_step(  # noqa: E731
      model, bank, tx, multi_positive=True, lr_fn=lambda s: 1e-3, fixed_logit_scale=fixed))
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.normal(size=(8, 32, 32, 3)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 10, 8), jnp.int32), "mask": jnp.ones(8, bool)}
  return model, tx, batch, {"soft": make(soft, 100.0), "one": make(one, 0.0)}


def test_a_fixed_logit_scale_stays_fixed_and_a_learned_one_is_clamped_at_100(steps):
  model, tx, batch, fn = steps
  new, m = fn["soft"](_state(model, tx, np.log(8.0)), batch)
  assert float(m["logit_scale"]) == pytest.approx(100.0, rel=1e-5)
  assert float(new["params"]["logit_scale"]) == pytest.approx(np.log(100.0), rel=1e-6)
  new, _ = fn["one"](_state(model, tx, np.log(8.0)), batch)
  assert float(new["params"]["logit_scale"]) != pytest.approx(np.log(8.0), rel=1e-7)  # trained
  new, _ = fn["one"](_state(model, tx, np.log(400.0)), batch)
  assert float(new["params"]["logit_scale"]) == pytest.approx(np.log(100.0), rel=1e-6)


def test_soft_vectors_are_drawn_afresh_at_every_step(steps):
  """Two steps from the same state with different rng keys give different losses with soft vectors in the
  caption, and the same loss with the placeholder words in their place (nothing else is random there)."""
  model, tx, batch, fn = steps
  a, b = _state(model, tx, np.log(8.0), seed=1), _state(model, tx, np.log(8.0), seed=2)
  assert float(fn["soft"](a, batch)[1]["loss"]) != pytest.approx(float(fn["soft"](b, batch)[1]["loss"]), rel=1e-6)
  assert float(fn["one"](a, batch)[1]["loss"]) == pytest.approx(float(fn["one"](b, batch)[1]["loss"]), rel=1e-6)


def test_warm_start_loads_the_checkpoint_and_refuses_another_architecture(tiny_clip):
  cfg = presets.get_preset("tiny")
  model = clip_lib.CLIP(cfg)
  abstract = jax.eval_shape(lambda k: clip_lib.init_params(model, k), jax.random.key(0))
  p = ml_collections.ConfigDict(dict(init=tiny_clip, preset="tiny"))
  warm = pretrain_train._warm_start(p, model, abstract, cfg)
  expected = clip_weights.load_pretrained(tiny_clip, abstract)
  for a, b in zip(jax.tree.leaves(warm), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(a, b)
  no_init = ml_collections.ConfigDict(dict(init="", preset="tiny"))
  assert pretrain_train._warm_start(no_init, model, abstract, cfg) is None
  big = presets.get_preset("tiny_32px")
  with pytest.raises(ConfigError, match="is not a 'tiny_32px' CLIP"):
    pretrain_train._warm_start(ml_collections.ConfigDict(dict(init=tiny_clip, preset="tiny_32px")), clip_lib.CLIP(big),
                      abstract, big)
