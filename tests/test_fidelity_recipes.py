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
  for name in ("cifar10n_strong_vlm", "demo"):  # human labels, offline stand-ins: synthetic, chosen by measurement
    assert config_lib.recipe_name(config_lib.from_file(REPO / "configs" / f"{name}.py")) == "synthetic", name
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
  # and which ranking the score (the CSV's order, the AUROC) is: the config's, in words
  assert summary["ranking"] == c.detect.ranking == "label_probability"
  assert "ranked by: p(given label) under the positive prompts, scoring pass (detect.ranking=label_probability)" \
      in text


# ------------------------------------------------------------------------------------------------ rankings

def _scored(monkeypatch, s_pos, s_neg, labels, strict=True):
  """The scoring pass's per-batch outputs (step.score_images) for given logits (the model is bypassed)."""
  import jax.numpy as jnp

  from deft_jax.detect import step as detect_step
  s_pos, s_neg = jnp.asarray(s_pos, jnp.float32), jnp.asarray(s_neg, jnp.float32)
  monkeypatch.setattr(detect_step, "image_logits", lambda *a, **k: (s_pos, s_neg, None))
  batch = {"image": None, "label": jnp.asarray(labels, jnp.int32), "index": jnp.arange(len(labels)),
           "mask": jnp.ones(len(labels), bool)}
  return jax.device_get(detect_step.score_images(None, None, None, batch, strict=strict))


def test_label_probability_is_a_log_softmax_that_does_not_round_to_zero_at_logit_scale_100(monkeypatch):
  """Was: the label_probability ranking took log of the float32 softmax, which is exactly 1 (log p = 0) for every
  example whose label wins by more than ~17 logits: at a real CLIP's scale (100) the confident examples tied."""
  from deft_jax.detect import train as detect_train
  rng = np.random.default_rng(0)
  cos = rng.uniform(0.15, 0.35, (6, 4))
  labels = np.array([0, 1, 2, 3, 0, 1])
  cos[np.arange(6), labels] += np.array([0.2, 0.25, 0.3, 0.35, 0.4, -0.1])  # gaps of 20 to 40 logits, one wrong
  s_pos = 100.0 * cos
  out = _scored(monkeypatch, s_pos, s_pos - 1.0, labels)
  old = np.log(np.asarray(jax.nn.softmax(np.float32(s_pos), axis=-1))[np.arange(6), labels])
  assert (old[:4] == 0).any()  # what the float32 softmax gave
  z = s_pos.astype(np.float32).astype(np.float64)
  rel = z - z[np.arange(6), labels][:, None]
  rel[np.arange(6), labels] = -np.inf
  want = -np.log1p(np.exp(rel).sum(-1))  # log p(label) in float64, free of rounding
  np.testing.assert_allclose(out["log_p_label"], want, rtol=1e-4)
  assert (out["log_p_label"] < 0).all() and len(set(out["log_p_label"].tolist())) == 6
  result = {"pass_" + k: v for k, v in out.items()}
  detect_train.apply_ranking(result, "label_probability", 100.0)
  assert (result["score"] < 0).all() and np.array_equal(np.argsort(result["score"]), np.argsort(want))


def test_strict_margin_ranking_is_positive_exactly_where_the_strict_rule_selects(monkeypatch):
  """Was: only "margin" (s+_y - s-_y) and "label_probability" could rank; neither agrees with the strict rule of
  the real_noise recipe (a label with a positive margin that another class beats is not selected)."""
  from deft_jax.detect import train as detect_train
  rng = np.random.default_rng(1)
  s_pos, s_neg = rng.normal(0, 3, (64, 5)), rng.normal(0, 3, (64, 5))
  labels = rng.integers(0, 5, 64)
  out = _scored(monkeypatch, s_pos, s_neg, labels, strict=True)
  np.testing.assert_array_equal(out["strict_margin"] > 0, out["is_clean"])
  m = s_pos - s_neg
  m_y = m[np.arange(64), labels]
  m[np.arange(64), labels] = -np.inf
  np.testing.assert_allclose(out["strict_margin"], np.minimum(m_y, m_y - m.max(-1)), rtol=1e-5, atol=1e-5)
  loose = (out["margin"] > 0) & ~out["is_clean"]
  assert loose.any()  # the margin ranks these as clean; the strict rule does not select them
  result = {"pass_" + k: v for k, v in out.items()}
  detect_train.apply_ranking(result, "strict_margin", 100.0)
  np.testing.assert_array_equal(result["label_score"] > 0.5, out["is_clean"])
  assert "strict_margin" in detect_train.RANKINGS and "strict_margin" in config_check.RANKINGS


# ------------------------------------------------------------------------------------------------ test transforms

def _gradient(h, w):
  """uint8 [h, w, 3]: red = column, green = row (so a pixel says where it came from)."""
  y, x = np.mgrid[0:h, 0:w]
  return np.stack([x, y, np.zeros_like(x)], -1).astype(np.uint8)


@pytest.mark.parametrize("resize,big_hw,offset", [
    ("squash_center_crop", (64, 64), (4, 4)),  # Resize((64, 64)), CenterCrop(56): 56 = 224 * 1/4
    ("resize_center_crop", (64, 128), (4, 36)),  # Resize(64) of the short side: 112x224 -> 64x128
])
def test_webvision_and_clothing1m_test_on_resize_256_then_centre_crop_224(resize, big_hw, offset):
  """Was: WebVision tested on a plain 224x224 squash and Clothing1M on CLIP's short side to 224 + centre crop;
  the reference tests WebVision (and ImageNet val) on Resize((256, 256)) + CenterCrop(224)
  (dataloader_webvision.py) and Clothing1M on Resize(256) + CenterCrop(224) (dataloader_clothing1M.py)."""
  import tensorflow as tf

  from deft_jax.data import preprocess
  h, w, size = 112, 224, 56
  out = preprocess.eval_transform(tf.constant(_gradient(h, w)), size, resize).numpy().astype(float)
  assert out.shape == (size, size, 3)
  (bh, bw), (top, left) = big_hw, offset
  j = np.arange(size)
  want_x = (j + left + 0.5) * w / bw - 0.5  # bilinear, half-pixel centres
  want_y = (j + top + 0.5) * h / bh - 0.5
  np.testing.assert_allclose(out[size // 2, :, 0], want_x, atol=1.5)
  np.testing.assert_allclose(out[:, size // 2, 1], want_y, atol=1.5)
  name = {"squash_center_crop": "webvision", "resize_center_crop": "clothing1m"}[resize]
  assert config_lib.from_file(REPO / "configs" / f"{name}.py").data.eval_resize == resize


# ------------------------------------------------------------------------------------------------ PEFT layers

def _tiny_clip_params(peft):
  from deft_jax.models import clip as clip_lib
  from deft_jax.models import presets
  model = clip_lib.CLIP(presets.get_preset("tiny"), peft)
  return model, clip_lib.init_params(model, jax.random.key(3))


def test_adapter_replaces_the_mlp_output_with_up_relu_down_layernorm_as_the_reference():
  """Was: the adapter was h + up(relu(down(h))): no LayerNorm, its own residual. The reference's
  (peft_modelus.py Adapter, CLIP.py) is up(relu(down(LN(h)))) and takes the MLP output's place in the residual
  stream: with up = 0 at init, every adapted block's MLP contributes nothing."""
  import jax.numpy as jnp

  from deft_jax.models import clip as clip_lib
  from deft_jax.models import peft as peft_lib
  from deft_jax.models.peft_layers import Adapter
  from deft_jax.tree import flatten, unflatten
  d, r = 64, 8
  h = jax.random.normal(jax.random.key(0), (3, 5, d))
  params = Adapter(r).init(jax.random.key(1), h)["params"]
  assert set(params) == {"ln", "down", "up"}
  down = np.asarray(params["down"]["kernel"])
  assert abs(down.std() - (1 / (3 * d)) ** 0.5) < 0.01 and not np.asarray(params["up"]["kernel"]).any()
  params = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(2), x.shape), params)
  p = jax.tree.map(np.asarray, params)
  x = np.asarray(h, np.float64)
  ln = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * p["ln"]["scale"] + p["ln"]["bias"]
  y = np.maximum(ln @ p["down"]["kernel"] + p["down"]["bias"], 0) @ p["up"]["kernel"] + p["up"]["bias"]
  np.testing.assert_allclose(Adapter(r).apply({"params": params}, h), y, atol=1e-4)  # no residual of its own
  np.testing.assert_allclose(Adapter(r, residual=True).apply({"params": params}, h), x + y, atol=1e-4)
  # In the tower: at init the adapted model is the plain one with every MLP's output zeroed.
  model, merged = _tiny_clip_params(peft_lib.PEFTConfig(adapter_dim=4))
  plain_model, plain = _tiny_clip_params(peft_lib.PEFTConfig())
  flat = {k: v for k, v in flatten(merged).items() if "/adapter/" not in k}
  assert flat.keys() == flatten(plain).keys()
  merged = unflatten({**flatten(merged), **flat})
  zeroed = unflatten({k: (jnp.zeros_like(v) if k.startswith("vision_model/") and "/mlp/fc2/" in k else v)
                      for k, v in flat.items()})
  images = jax.random.normal(jax.random.key(4), (2, 32, 32, 3))
  enc = lambda m, prm: m.apply({"params": prm}, images, method=clip_lib.CLIP.encode_image)  # noqa: E731
  np.testing.assert_allclose(enc(model, merged), enc(plain_model, zeroed), atol=1e-5)


def test_ssf_starts_at_normal_scale_and_shift_and_scales_before_lora_adds():
  """Was: SSF started at scale = 1, shift = 0 and scaled the projection after LoRA had been added; the reference
  (peft_modelus.py SSF) draws scale ~ N(1, 0.02), shift ~ N(0, 0.02), and CLIP.py scales qkv, then adds LoRA."""
  from deft_jax.models import peft as peft_lib
  from deft_jax.models.peft_layers import SSF
  params = SSF().init(jax.random.key(0), np.zeros((1, 20000), np.float32))["params"]
  scale, shift = np.asarray(params["scale"]), np.asarray(params["shift"])
  assert abs(scale.mean() - 1) < 1e-3 and abs(scale.std() - 0.02) < 1e-3
  assert abs(shift.mean()) < 1e-3 and abs(shift.std() - 0.02) < 1e-3
  from deft_jax.tree import flatten
  model, params = _tiny_clip_params(peft_lib.PEFTConfig(ssf=True, lora_rank=2, lora_targets=("q",)))
  flat = flatten(params)
  q = "vision_model/encoder/layers_0/self_attn/q_proj"
  names = sorted(k[len(q):] for k in flat if k.startswith(q))
  assert names == ["/bias", "/kernel"]  # LoRA and SSF sit beside the projection, not inside it
  attn = {k: v for k, v in flat.items() if k.startswith("vision_model/encoder/layers_0/self_attn/")}
  assert any("ssf_q/scale" in k for k in attn) and any("q_lora/lora_a" in k for k in attn)
  import flax.linen as nn

  from deft_jax.models.peft_layers import peft_dense
  block = peft_lib.PEFTConfig(ssf=True, lora_rank=2, lora_targets=("q",)).block(0, 1)

  class Dense(nn.Module):
    @nn.compact
    def __call__(self, x):
      return peft_dense(x, 6, "q_proj", "q", block, np.float32)

  x = np.asarray(jax.random.normal(jax.random.key(1), (2, 6)))
  p = Dense().init(jax.random.key(2), x)["params"]
  p = jax.tree.map(lambda v: np.asarray(v) + 0.3, p)  # B != 0
  lin = x @ p["q_proj"]["kernel"] + p["q_proj"]["bias"]
  lora = x @ p["q_lora"]["lora_a"] @ p["q_lora"]["lora_b"] * block.lora_scale
  want = lin * p["ssf_q"]["scale"] + p["ssf_q"]["shift"] + lora
  np.testing.assert_allclose(Dense().apply({"params": p}, x), want, rtol=1e-5, atol=1e-5)


def test_bitfit_trains_every_bias_of_the_image_tower_ln_pre_and_ln_post_included():
  """Was: BitFit trained the biases inside the transformer blocks only; the reference (CLIP.py ViT_Tuner) trains
  every parameter of clip_model.visual whose name ends in "bias", ln_pre's and ln_post's included."""
  from deft_jax import optim
  from deft_jax.detect.detector import default_rules
  from deft_jax.models import peft as peft_lib
  from deft_jax.tree import flatten
  peft = peft_lib.PEFTConfig(bitfit=True)
  _, params = _tiny_clip_params(peft)
  params = {"clip": params, "prompts": {"pos_ctx": np.zeros(1), "neg_ctx": np.zeros(1)}}
  mask = flatten(optim.trainable_mask(params, default_rules(peft)))
  visual = {k: m for k, m in mask.items() if k.startswith("clip/vision_model/")}
  assert mask["clip/vision_model/pre_layrnorm/bias"] and mask["clip/vision_model/post_layernorm/bias"]
  assert {k for k, m in visual.items() if m} == {k for k in visual if k.endswith("/bias")}
  assert not any(m for k, m in mask.items() if k.startswith("clip/text_model/"))


# ------------------------------------------------------------------------------------------------ baselines

def test_real_world_gmm_baseline_warms_up_5_of_10_epochs_at_a_constant_lr():
  """Was: the real-world GMM baseline warmed up 1 epoch (baselines.warmup_epochs) over phase 2's 5 epochs; the
  reference (main_real_baseline.py, config/FFT/cifar100N.yaml and webvision.yaml) trains 10 epochs at a never
  stepped, constant lr and fits the first GMM after 5 warm-up epochs (Clothing1M's yaml: 1); and its synthetic
  Tiny-ImageNet GMM (main_baseline.py, config/FFT/tiny_imagenet.yaml) warms up 5 epochs, not 1."""
  from deft_jax.baselines import gmm
  for name, warmup in (("cifar100n", 5), ("webvision", 5), ("clothing1m", 1)):
    c = config_lib.from_file(REPO / "configs" / f"{name}.py")
    assert gmm.epochs_and_warmup(c) == (10, warmup), name
    assert c.baselines.gmm.model == "phase2" and c.adapt.schedule.decay == "constant", name
    config_check.check(c)
  for name, warmup in (("cifar100", 1), ("cub200", 1), ("stanford_cars", 1), ("tiny_imagenet", 5)):
    c = config_lib.from_file(REPO / "configs" / f"{name}.py")  # synthetic: config/FFT/<name>.yaml's warm-up
    assert gmm.epochs_and_warmup(c) == (None, warmup), name
  assert gmm.epochs_and_warmup(tiny_config()) == (None, 1)  # phase 2's epochs, baselines.warmup_epochs


# ------------------------------------------------------------------------------------------------ prompts

def test_ctx_init_can_keep_16_context_vectors_by_padding_the_words():
  """Was: ctx_init="a photo of a" always shrank the contexts from 16 vectors to the 4 words' tokens, so a
  comparison with the random init changed the init and the context length at once; ctx_init_pad keeps n_ctx."""
  from deft_jax.models import prompts as prompts_lib
  from deft_jax.models.tokenizer import Tokenizer
  tok, width = Tokenizer(), 8
  table = np.asarray(jax.random.normal(jax.random.key(0), (tok.vocab_size, width)))
  words = tok.encode("a photo of a")
  short = prompts_lib.build_template(["cat", "dog"], tok, n_ctx=16, ctx_init="a photo of a")
  assert short.n_ctx == len(words) == 4  # the documented shrink (CoOp's)
  padded = prompts_lib.build_template(["cat", "dog"], tok, n_ctx=16, ctx_init="a photo of a", ctx_init_pad=True)
  assert padded.n_ctx == 16 and (padded.ctx_index.max(-1) == 15).all()
  ctx = prompts_lib.init_prompts(jax.random.key(1), padded, width, token_embedding=table)
  for name in ("pos_ctx", "neg_ctx"):
    c = np.asarray(ctx[name])
    assert c.shape == (16, width)
    np.testing.assert_array_equal(c[12:], table[words])  # the words last, next to the class name
    assert 0.01 < c[:12].std() < 0.03
  assert not np.array_equal(ctx["pos_ctx"][:12], ctx["neg_ctx"][:12])
  with pytest.raises(ConfigError, match="more than n_ctx"):
    prompts_lib.build_template(["cat"], tok, n_ctx=2, ctx_init="a photo of a", ctx_init_pad=True)
